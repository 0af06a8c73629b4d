"""Predict every case of a measurement file and report the error of each (``moesim validate``).

``rel_error = (predicted - measured) / measured``. A kind or metric without a predictor, or a
case whose inputs the predictor cannot use, is reported ``unsupported`` with the reason: never
guessed, never silently skipped.
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


# kind -> (module, predictor function, the efficiency parameters that kind can fit: a tuple, or a
# function (cases, profile) -> tuple naming only those the given cases can identify).
# Resolved lazily so that ``moesim validate`` works while a layer is being built.
PREDICTORS: dict[str, tuple[str, str, str]] = {
    "gemm": ("moesim.compute.cases", "predict_gemm_case", "GEMM_FIT_PARAMS"),
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KindSummary:
    n: int
    median_abs_rel_error: float | None
    max_abs_rel_error: float | None
    unsupported: int

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


def case_inputs(case: Case) -> dict:
    """What a predictor receives: the case's inputs and the metric it must predict."""
    return {**case.inputs, "metric": case.metric}


def predict_case(case: Case, profile: HardwareProfile) -> CasePrediction:
    """Predict one case on ``profile``; never raises for a bad case (status says what happened)."""
    base = dict(id=case.id, kind=case.kind, hardware=case.hardware, metric=case.metric,
                measured=case.measured)
    try:
        predict, _ = predictor_for(case.kind)
        value = float(predict(case_inputs(case), profile))
        if not math.isfinite(value) or value <= 0:
            raise UnsupportedCase(f"predictor returned {value!r}")
    except UnsupportedCase as err:
        return CasePrediction(**base, predicted=None, rel_error=None, status="unsupported", reason=str(err))
    except (KeyError, TypeError) as err:  # a required input the predictor needs is absent or null
        return CasePrediction(**base, predicted=None, rel_error=None, status="unsupported",
                              reason=f"an input the predictor needs is missing or null ({type(err).__name__}: {err})")
    except MoesimError as err:
        return CasePrediction(**base, predicted=None, rel_error=None, status="error", reason=str(err))
    return CasePrediction(**base, predicted=value, rel_error=(value - case.measured) / case.measured)


def summarize(preds: tuple[CasePrediction, ...]) -> dict[str, KindSummary]:
    """Per-kind n, median and max |rel error| and the unsupported count."""
    out = {}
    for kind in sorted({p.kind for p in preds}):
        errs = [abs(p.rel_error) for p in preds if p.kind == kind and p.status == "ok"]
        bad = sum(1 for p in preds if p.kind == kind and p.status != "ok")
        out[kind] = KindSummary(
            n=len(errs),
            median_abs_rel_error=median(errs) if errs else None,
            max_abs_rel_error=max(errs) if errs else None,
            unsupported=bad,
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
