"""Predict every case of a measurement file and report the error of each (``moesim validate``).

``rel_error = (predicted - measured) / measured``. Three outcomes per case (docs/cases.md):

- ``ok``: predicted, with ``ignored_inputs``: every input the case states that the predictor
  did not use (never read, or read and flagged as not modelled), with the reason;
- ``unsupported``: the predictor says why it cannot predict the case (a kind or metric
  without a model, an input the source did not state and the predictor has no default for);
- ``error``: the predictor raised anything else, or returned a non-positive or non-finite
  value. That is a bug, reported with the case id and the exception, never hidden as
  unsupported; ``moesim validate`` then exits 1.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass
from statistics import median
from typing import Callable

from moesim.cases import Case, CaseFile
from moesim.catalog import load_profile
from moesim.errors import MoesimError
from moesim.specs import HardwareProfile

# A predictor takes a case's inputs (plus "metric": the measured metric) and a profile and
# returns the predicted value in that metric's unit.
Predictor = Callable[[dict, HardwareProfile], float]


class UnsupportedCase(MoesimError):
    """A predictor cannot predict this case (inputs missing, metric not modelled); says why."""


# Input keys that describe a case (provenance, how a figure was derived), never what was run:
# they are not expected to be read and are never listed as ignored (docs/cases.md).
DESCRIPTIVE_INPUTS = frozenset({"not_stated", "not_applicable", "assumed", "bandwidth_definition",
                                "notes", "metric"})


class CaseInputs(dict):
    """A case's inputs as its predictor sees them, recording which keys the predictor read.

    ``inputs[key]`` of a null (not stated) value raises UnsupportedCase naming the key: the
    predictor needs it and has no documented default; a missing key raises KeyError (a
    predictor bug: required keys are checked when the file is read). ``inputs.get`` is the way
    to read an optional key. ``ignore(key, why)`` marks a key the predictor read but does not
    model (e.g. a value other than the one it can honour), so it is reported as ignored.
    """

    def __init__(self, data, kind: str = ""):
        super().__init__(data)
        self.kind = kind
        self.read: set[str] = set()
        self.flagged: dict[str, str] = {}
        self.assumed: dict[str, str] = {}

    def __getitem__(self, key):
        self.read.add(key)
        value = super().__getitem__(key)
        if value is None:
            raise UnsupportedCase(f"input {key!r} is not stated by the source and the {self.kind or 'case'} "
                                  "predictor has no default for it")
        return value

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def ignore(self, key: str, why: str) -> None:
        """Flag ``key`` as stated but not modelled (it then appears in ``ignored_inputs``)."""
        if dict.get(self, key) is not None:
            self.flagged[key] = why

    def assume(self, key: str, what: str) -> None:
        """Record how the predictor interpreted ``key`` when it is not priced exactly as stated."""
        self.assumed[key] = what

    def ignored(self) -> dict[str, str]:
        """Stated, non-descriptive inputs the predictor did not use -> why."""
        out = {}
        for key, value in dict.items(self):
            if key in DESCRIPTIVE_INPUTS or value is None:
                continue
            if key in self.flagged:
                out[key] = self.flagged[key]
            elif key not in self.read and value is not False:  # a feature stated off is what is priced
                out[key] = f"not used by the {self.kind or 'case'} predictor"
        return dict(sorted(out.items()))


# kind -> (module, predictor function, the efficiency parameters that kind can fit: a tuple, or a
# function (cases, profile) -> tuple naming only those the given cases can identify).
# Resolved lazily so that ``moesim validate`` works while a layer is being built.
PREDICTORS: dict[str, tuple[str, str, str]] = {
    "gemm": ("moesim.compute.cases", "predict_gemm_case", "gemm_fit_params"),
    "grouped_gemm": ("moesim.compute.cases", "predict_grouped_gemm_case", "GROUPED_GEMM_FIT_PARAMS"),
    "all_to_all": ("moesim.comm.cases", "predict_all_to_all_case", "a2a_fit_params"),
    "moe_layer": ("moesim.step_cases", "predict_moe_layer_case", "MOE_LAYER_FIT_PARAMS"),
    "training": ("moesim.step_cases", "predict_training_case", "TRAINING_FIT_PARAMS"),
    "serving": ("moesim.step_cases", "predict_serving_case", "SERVING_FIT_PARAMS"),
}


def predictor_for(kind: str) -> tuple[Predictor, tuple[str, ...] | Callable]:
    """The predictor of ``kind`` and its fit parameters; UnsupportedCase when there is none."""
    if kind not in PREDICTORS:
        raise UnsupportedCase(f"no predictor for kind {kind!r}")
    module_name, func, params = PREDICTORS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise UnsupportedCase(f"no predictor for kind {kind!r} yet") from None
    declared = getattr(module, params, ())
    return getattr(module, func), declared if callable(declared) else tuple(declared)


@dataclass(frozen=True)
class CasePrediction:
    """One case's prediction and error; ``status`` is ok, unsupported or error."""

    id: str
    kind: str
    hardware: str
    metric: str
    measured: float
    predicted: float | None
    rel_error: float | None
    status: str = "ok"
    reason: str = ""
    ignored_inputs: tuple[tuple[str, str], ...] = ()  # (input key, why it was not used)
    assumptions: tuple[tuple[str, str], ...] = ()  # (input key, how it was interpreted)
    group: str = ""  # the case's source group (leave-one-group-out)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ignored_inputs"] = dict(self.ignored_inputs)
        out["assumptions"] = dict(self.assumptions)
        return out


@dataclass(frozen=True)
class KindSummary:
    """Per kind: predicted cases, median and max |rel error|, signed median, refusals, errors."""

    n: int
    median_abs_rel_error: float | None
    max_abs_rel_error: float | None
    unsupported: int
    errors: int = 0
    signed_median_rel_error: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    source: str
    cases: tuple[CasePrediction, ...]
    summary: dict[str, KindSummary]
    problems: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "cases": [c.to_dict() for c in self.cases],
            "summary": {k: v.to_dict() for k, v in self.summary.items()},
            "problems": list(self.problems),
        }


def flag_ignored(inputs, key: str, why: str) -> None:
    """Flag ``key`` as stated but not modelled when ``inputs`` tracks reads (a plain dict: no-op)."""
    if isinstance(inputs, CaseInputs):
        inputs.ignore(key, why)


def case_inputs(case: Case) -> CaseInputs:
    """What a predictor receives: the case's inputs and the metric it must predict."""
    return CaseInputs({**case.inputs, "metric": case.metric}, case.kind)


class PredictorError(MoesimError):
    """A predictor failed on a case (a bug, not a refusal): names the case and the exception."""


def run_predictor(case: Case, profile: HardwareProfile, stacks=None) -> tuple[float, CaseInputs]:
    """(predicted value, the inputs as read) of one case; UnsupportedCase for a refusal,
    PredictorError (naming the case) for anything else the predictor raised or returned.
    ``stacks``: a software-stack table (moesim/step/stacks.py) for the kinds that take one."""
    predict, _ = predictor_for(case.kind)
    inputs = case_inputs(case)
    try:
        value = float(predict(inputs, profile) if stacks is None else predict(inputs, profile, stacks=stacks))
    except UnsupportedCase:
        raise
    except Exception as err:  # noqa: BLE001 - every other failure is reported, with the case id
        raise PredictorError(f"case {case.id}: {case.kind} predictor raised {type(err).__name__}: {err}") from err
    if not math.isfinite(value) or value <= 0:
        raise PredictorError(f"case {case.id}: {case.kind} predictor returned {value!r}")
    return value, inputs


def predict_case(case: Case, profile: HardwareProfile, stacks=None) -> CasePrediction:
    """Predict one case on ``profile`` (and stack table ``stacks``, see ``run_predictor``); never
    raises for a bad case (status says what happened)."""
    base = dict(id=case.id, kind=case.kind, hardware=case.hardware, metric=case.metric,
                measured=case.measured)
    try:
        value, inputs = run_predictor(case, profile, stacks)
    except UnsupportedCase as err:
        return CasePrediction(**base, predicted=None, rel_error=None, status="unsupported", reason=str(err))
    except PredictorError as err:
        return CasePrediction(**base, predicted=None, rel_error=None, status="error", reason=str(err))
    return CasePrediction(**base, predicted=value, rel_error=(value - case.measured) / case.measured,
                          ignored_inputs=tuple(inputs.ignored().items()),
                          assumptions=tuple(sorted(inputs.assumed.items())))


def summarize(preds: tuple[CasePrediction, ...]) -> dict[str, KindSummary]:
    """Per-kind n, median and max |rel error|, signed median, unsupported and error counts."""
    out = {}
    for kind in sorted({p.kind for p in preds}):
        signed = [p.rel_error for p in preds if p.kind == kind and p.status == "ok"]
        errs = [abs(e) for e in signed]
        out[kind] = KindSummary(
            n=len(errs),
            median_abs_rel_error=median(errs) if errs else None,
            max_abs_rel_error=max(errs) if errs else None,
            unsupported=sum(1 for p in preds if p.kind == kind and p.status == "unsupported"),
            errors=sum(1 for p in preds if p.kind == kind and p.status == "error"),
            signed_median_rel_error=median(signed) if signed else None,
        )
    return out


def validate(casefile: CaseFile, profiles: dict[str, HardwareProfile] | None = None) -> ValidationReport:
    """Predict every case; ``profiles`` overrides built-in profiles by name (e.g. calibrated ones)."""
    profiles = dict(profiles or {})
    preds = []
    for case in casefile.cases:
        if case.hardware not in profiles:
            try:
                profiles[case.hardware] = load_profile(case.hardware)
            except MoesimError as err:
                preds.append(CasePrediction(case.id, case.kind, case.hardware, case.metric, case.measured,
                                            None, None, "error", str(err)))
                continue
        preds.append(predict_case(case, profiles[case.hardware]))
    preds = tuple(preds)
    return ValidationReport(casefile.source, preds, summarize(preds),
                            tuple(p.to_dict() for p in casefile.problems))
