"""Accuracy by sample class: in-sample, leave-one-group-out (by source, by hardware) and
out-of-sample, per case kind (``moesim validate --logo``).

- in-sample: the calibration cases (``"role": "calibration"``, of the file or of the case: the
  TensorRT-LLM v0.17 rows of published-e2e-serving-2.json, on which the trtllm stack is fitted),
  predicted with the shipped profiles and stacks, which were fitted on them.
- out-of-sample: the cases of evaluation files, predicted with the shipped profiles (never
  fitted on them).
- leave-one-source-out / leave-one-hardware-out: for each group G (a case's source group,
  ``Case.group``, or its hardware), the parameters of the kinds G contains are refitted on the
  calibration cases outside G and every case of G (calibration and evaluation) is predicted
  with them. Kernel kinds refit their profile's parameters from the generic prior
  (``moesim.calibrate.calibrate``; with no case left on that profile the prior values are used:
  what a new user gets); training and serving refit the software-stack parameters
  (moesim/data/stacks.toml ``fit = true``: host_op_us, ``fit_fraction = true``: device_fraction,
  ``fit_expert = true``: expert_fraction, ``fit_seq = true``: host_seq_us),
  each stack's jointly, on the remaining calibration rows that run it
  (``moesim.calibrate.fit_stacks``, the same fitter as the shipped table; none left or not
  identified: the entry's prior; identical refits are computed once).
  Parameters of other kinds keep their shipped values (the transfers of
  validation/calibrate_published.py are not replayed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Iterable, Sequence

from moesim.cases import Case
from moesim.catalog import load_profile
from moesim.specs.hardware import Efficiency
from moesim.validate import CasePrediction, PredictorError, UnsupportedCase, predict_case, predictor_for

CLASSES: tuple[str, ...] = ("in_sample", "leave_one_source_out", "leave_one_hardware_out", "out_of_sample")
JOINT_KINDS: tuple[str, ...] = ("training", "serving")


@dataclass(frozen=True)
class ClassSummary:
    """Errors of one kind in one sample class."""

    n: int
    median_abs_rel_error: float | None
    max_abs_rel_error: float | None
    signed_median_rel_error: float | None
    unpriced: int = 0  # cases of the kind this class could not price (``GroupFolds.unpriced``)

    @staticmethod
    def of(errors: Sequence[float], unpriced: int = 0) -> "ClassSummary":
        if not errors:
            return ClassSummary(0, None, None, None, unpriced)
        return ClassSummary(len(errors), median(abs(e) for e in errors), max(abs(e) for e in errors),
                            median(errors), unpriced)

    def to_dict(self) -> dict:
        return {"n": self.n, "median_abs_rel_error": self.median_abs_rel_error,
                "max_abs_rel_error": self.max_abs_rel_error,
                "signed_median_rel_error": self.signed_median_rel_error, "unpriced": self.unpriced}


@dataclass(frozen=True)
class GroupFolds:
    """Leave-one-group-out over every group: each priced case's rel error, and each case that
    was not priced with why (its fold's refit refused, or its prediction was not ok), so a
    count that falls says which cases left it."""

    errors: dict[str, float]
    unpriced: dict[str, str]


@dataclass(frozen=True)
class AccuracyTable:
    """kind -> class -> ClassSummary, and each case's rel error per class."""

    summary: dict[str, dict[str, ClassSummary]]
    case_errors: dict[str, dict[str, float]]
    unpriced: dict[str, dict[str, str]] = field(default_factory=dict)  # class -> case id -> why not priced

    def to_dict(self) -> dict:
        return {"summary": {k: {c: s.to_dict() for c, s in v.items()} for k, v in self.summary.items()},
                "cases": self.case_errors, "unpriced": self.unpriced}


def _prior_values(params: Iterable[str]) -> dict[str, float]:
    prior = Efficiency()
    return {p: float(getattr(getattr(prior, p.split(".")[0]), p.split(".")[1])) for p in params}


def _refit_profiles(fit_set: Sequence[Case], held: Sequence[Case]) -> tuple[dict, object]:
    """Profiles and a software-stack table for predicting ``held`` with the kinds' parameters
    fitted on ``fit_set`` only (the table None when ``held`` has no training/serving row)."""
    from moesim.calibrate import calibrate, default_params, fit_stacks, with_params
    from moesim.step.stacks import stack_table

    profiles = {h: load_profile(h) for h in {c.hardware for c in held} | {c.hardware for c in fit_set}}
    for hw in sorted({c.hardware for c in held}):
        kinds = {c.kind for c in held if c.hardware == hw and c.kind not in JOINT_KINDS and predictor_for(c.kind)[1]}
        if not kinds:
            continue
        shipped = profiles[hw]
        params = default_params([c for c in held if c.hardware == hw and c.kind in kinds], shipped)
        train = [c for c in fit_set if c.hardware == hw and c.kind in kinds]
        values = _prior_values(params)
        if train:
            values = calibrate(train, shipped.with_efficiency(Efficiency()), params).params
        profiles[hw] = with_params(shipped, values)
    table = None
    if any(c.kind in JOINT_KINDS for c in held):
        rows = [c for c in fit_set if c.kind in JOINT_KINDS]
        fits = fit_stacks(rows, profiles)
        table = stack_table().with_values({p: f.value for p, f in fits.items()})
    return profiles, table


def _errors(preds: Iterable[CasePrediction]) -> dict[str, float]:
    return {p.id: p.rel_error for p in preds if p.status == "ok"}


def _unpriced(preds: Iterable[CasePrediction]) -> dict[str, str]:
    return {p.id: f"{p.status}: {p.reason}" for p in preds if p.status != "ok"}


def _predict(cases: Sequence[Case], profiles: dict, stacks=None) -> list[CasePrediction]:
    out = []
    for c in cases:
        prof = profiles.get(c.hardware) or load_profile(c.hardware)
        out.append(predict_case(c, prof, stacks if c.kind in JOINT_KINDS else None))
    return out


def group_folds(calibration: Sequence[Case], cases: Sequence[Case], by: str) -> GroupFolds:
    """Each case's rel error when its group (``by`` = "source" or "hardware") is left out of
    every fit; a fold whose refit is refused leaves each of its cases unpriced with the reason."""
    key = (lambda c: c.group) if by == "source" else (lambda c: c.hardware)
    errors: dict[str, float] = {}
    unpriced: dict[str, str] = {}
    for group in sorted({key(c) for c in cases}):
        held = [c for c in cases if key(c) == group]
        fit_set = [c for c in calibration if key(c) != group]
        try:
            profiles, stacks = _refit_profiles(fit_set, held)
        except (UnsupportedCase, PredictorError) as exc:
            unpriced.update({c.id: f"the refit without {by} {group!r} was refused: {exc}" for c in held})
            continue
        preds = _predict(held, profiles, stacks)
        errors.update(_errors(preds))
        unpriced.update(_unpriced(preds))
    return GroupFolds(errors, unpriced)


def leave_one_group_out(calibration: Sequence[Case], cases: Sequence[Case], by: str) -> dict[str, float]:
    """case id -> rel error when its group is left out of every fit (``group_folds``' errors)."""
    return group_folds(calibration, cases, by).errors


def accuracy_table(cases: Sequence[Case], logo: bool = True) -> AccuracyTable:
    """The per-kind table over ``cases`` (calibration and evaluation together)."""
    calibration = [c for c in cases if c.role == "calibration"]
    evaluation = [c for c in cases if c.role != "calibration"]
    shipped = {h: load_profile(h) for h in {c.hardware for c in cases}}
    folds = {}
    for cls, sample in (("in_sample", calibration), ("out_of_sample", evaluation)):
        preds = _predict(sample, shipped)
        folds[cls] = GroupFolds(_errors(preds), _unpriced(preds))
    if logo:
        folds["leave_one_source_out"] = group_folds(calibration, cases, "source")
        folds["leave_one_hardware_out"] = group_folds(calibration, cases, "hardware")
    kind_of = {c.id: c.kind for c in cases}
    summary = {}
    for kind in sorted({c.kind for c in cases}):
        summary[kind] = {cls: ClassSummary.of([e for i, e in folds[cls].errors.items() if kind_of[i] == kind],
                                              sum(kind_of[i] == kind for i in folds[cls].unpriced))
                         for cls in CLASSES if cls in folds}
    per_case = {c.id: {cls: folds[cls].errors[c.id] for cls in folds if c.id in folds[cls].errors} for c in cases}
    return AccuracyTable(summary, per_case, {cls: f.unpriced for cls, f in folds.items()})


# ``moesim validate --by KEY``: the shipped model's errors per group of cases
GROUP_KEYS: tuple[str, ...] = ("file", "source", "hardware", "stack", "model")
WITHIN = 0.15  # the issue-14 goal: |error| at most 15%


@dataclass(frozen=True)
class GroupSummary:
    """Errors of one kind, in one sample (in-sample: calibration rows; out-of-sample: every other
    row, predicted with the shipped profiles and stacks), in one group of ``by``."""

    kind: str
    sample: str
    by: str
    group: str
    n: int
    median_abs_rel_error: float
    signed_median_rel_error: float
    max_abs_rel_error: float
    within_15: int  # cases with |error| <= WITHIN

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sample": self.sample, "by": self.by, "group": self.group, "n": self.n,
                "median_abs_rel_error": self.median_abs_rel_error,
                "signed_median_rel_error": self.signed_median_rel_error,
                "max_abs_rel_error": self.max_abs_rel_error, "within_15": self.within_15}


def group_of(case: Case, by: str, file_of: dict[str, str] | None = None) -> str:
    """The group ``case`` falls in for ``by`` (``GROUP_KEYS``): its case file (``file_of``: case
    id -> path), source group, hardware profile, software stack (training / serving rows:
    moesim/case_inputs.py ``case_stack``, the stack the predictor prices; other kinds: ``-``)
    or model preset (``inline`` for dimensions stated in the case)."""
    if by == "file":
        return (file_of or {}).get(case.id, "-")
    if by == "source":
        return case.group or "-"
    if by == "hardware":
        return case.hardware
    if by == "model":
        model = case.inputs.get("model")
        return model if isinstance(model, str) else ("inline" if model is not None else "-")
    if by == "stack":
        if case.kind not in JOINT_KINDS:
            return "-"
        from moesim.case_inputs import case_stack

        phase = "train" if case.kind == "training" else str(case.inputs.get("phase") or "decode")
        return case_stack(dict(case.inputs), case.hardware, "decode" if phase == "end_to_end" else phase)
    from moesim.errors import SpecError

    raise SpecError("--by", by, f"one of {', '.join(GROUP_KEYS)}")


def by_group(cases: Sequence[Case], preds: Sequence[CasePrediction], by: str,
             file_of: dict[str, str] | None = None) -> tuple[GroupSummary, ...]:
    """Per (kind, sample, group of ``by``) the errors of the predicted (``ok``) cases of ``preds``,
    ordered by kind, sample (in-sample first) and group; refused and failed cases are not errors
    and are not counted (the per-kind summary counts them)."""
    case_of = {c.id: c for c in cases}
    buckets: dict[tuple[str, str, str], list[float]] = {}
    for p in preds:
        if p.status != "ok" or p.id not in case_of:
            continue
        c = case_of[p.id]
        sample = "in-sample" if c.role == "calibration" else "out-of-sample"
        buckets.setdefault((c.kind, sample, group_of(c, by, file_of)), []).append(float(p.rel_error))
    out = []
    for (kind, sample, group), errs in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1] != "in-sample",
                                                                              kv[0][2])):
        s = ClassSummary.of(errs)
        out.append(GroupSummary(kind, sample, by, group, s.n, s.median_abs_rel_error, s.signed_median_rel_error,
                                s.max_abs_rel_error, sum(abs(e) <= WITHIN for e in errs)))
    return tuple(out)
