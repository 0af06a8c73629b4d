"""Fit a profile's efficiency parameters to measured cases (``moesim calibrate``).

Only parameters with physical meaning are fitted (achievable fractions of peak, overheads),
named by their path under ``[efficiency]`` (``"compute.gemm_compute_fraction"``), within the
bounds their spec declares. The objective is the log error of each case, log(predicted / measured),
each kind weighted equally (1 / n_kind) so a large set of one kind does not drown another,
under a soft-L1 loss with a 10% scale by default: a case the model cannot represent (one
outlier of a published table) pulls the fit like a 10% error, not like its square. Tile sizes
and other integers are never fitted.
A profile fitted on one case file must be judged on another (``moesim validate``).

Training and serving rows fit no profile parameter: they fit the host parameters of the software
stacks they ran (moesim/data/stacks.toml, ``fit_stacks`` below), over every hardware.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from statistics import median

import numpy as np
from scipy.optimize import least_squares

from moesim.cases import Case
from moesim.errors import MoesimError
from moesim.specs import HardwareProfile
from moesim.specs.hardware import CommEfficiency, ComputeEfficiency, Efficiency
from moesim.validate import UnsupportedCase, case_inputs, predictor_for

_SECTIONS = {"compute": ComputeEfficiency, "comm": CommEfficiency}
_UNBOUNDED_HI = 1e4


@dataclass(frozen=True)
class CalibrationResult:
    """Fitted profile, the parameter values, and the errors before and after on the fit set."""

    profile: HardwareProfile
    params: dict[str, float]
    n_cases: int
    kinds: tuple[str, ...]
    median_abs_rel_error_before: float
    max_abs_rel_error_before: float
    median_abs_rel_error_after: float
    max_abs_rel_error_after: float
    skipped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "hardware": self.profile.name,
            "params": self.params,
            "n_cases": self.n_cases,
            "kinds": list(self.kinds),
            "median_abs_rel_error_before": self.median_abs_rel_error_before,
            "max_abs_rel_error_before": self.max_abs_rel_error_before,
            "median_abs_rel_error_after": self.median_abs_rel_error_after,
            "max_abs_rel_error_after": self.max_abs_rel_error_after,
            "skipped_cases": list(self.skipped),
            "origin": self.profile.efficiency.origin,
        }


def param_bounds(path: str) -> tuple[float, float]:
    """(low, high) of an efficiency parameter from its spec's declared constraints."""
    section, name = _split(path)
    info = _SECTIONS[section].model_fields[name]
    if info.annotation is not float:
        raise MoesimError(f"efficiency.{path} is not a real-valued parameter; it cannot be fitted")
    lo, hi = 0.0, _UNBOUNDED_HI
    for meta in info.metadata:
        lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
        if getattr(meta, "gt", None) is not None:
            lo = meta.gt + 1e-6
        hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
    return lo, hi


def _split(path: str) -> tuple[str, str]:
    section, _, name = path.partition(".")
    if section not in _SECTIONS or name not in _SECTIONS[section].model_fields:
        known = [f"{s}.{n}" for s, cls in _SECTIONS.items() for n in cls.model_fields]
        raise MoesimError(f"unknown efficiency parameter {path!r}; known: {', '.join(known)}")
    return section, name


def get_param(profile: HardwareProfile, path: str) -> float:
    section, name = _split(path)
    return float(getattr(getattr(profile.efficiency, section), name))


def with_params(profile: HardwareProfile, values: dict[str, float], origin: str | None = None) -> HardwareProfile:
    """A copy of ``profile`` with efficiency parameters set (validated by the spec)."""
    eff = profile.efficiency
    updates: dict[str, dict] = {}
    for path, value in values.items():
        section, name = _split(path)
        updates.setdefault(section, {})[name] = float(value)
    new = {s: getattr(eff, s).model_copy(update=u) for s, u in updates.items()}
    merged = Efficiency.model_validate(
        {**eff.model_dump(), **{s: m.model_dump() for s, m in new.items()},
         "origin": origin if origin is not None else eff.origin}
    )
    return profile.with_efficiency(merged)


def _robust(r: np.ndarray, loss: str, scale: float) -> np.ndarray:
    """Residuals whose squares are the loss: soft-L1 = 2 c^2 (sqrt(1 + (r/c)^2) - 1) (scipy's
    definition); applied per case before the kind weights so ``scale`` stays a log error."""
    if loss == "linear":
        return r
    if loss == "soft_l1":
        return np.sign(r) * np.sqrt(2.0 * scale**2 * (np.sqrt(1.0 + (r / scale) ** 2) - 1.0))
    raise MoesimError(f"loss {loss!r} unknown; use linear or soft_l1")


def _residuals(cases, profile, loss: str = "linear", scale: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """Loss-shaped log(pred/measured) per usable case, weighted 1/sqrt(n_kind); ids skipped."""
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    logs, weights, skipped = [], [], []
    for c in cases:
        predict, _ = predictor_for(c.kind)
        try:
            value = float(predict(case_inputs(c), profile))
        except UnsupportedCase:
            skipped.append(c.id)
            continue
        logs.append(math.log(max(value, 1e-30) / c.measured))
        weights.append(1.0 / math.sqrt(counts[c.kind]))
    return _robust(np.asarray(logs), loss, scale) * np.asarray(weights), skipped


def _errors(cases, profile) -> list[float]:
    out = []
    for c in cases:
        predict, _ = predictor_for(c.kind)
        try:
            out.append(abs(float(predict(case_inputs(c), profile)) - c.measured) / c.measured)
        except UnsupportedCase:
            pass
    return out


def default_params(cases: list[Case], profile: HardwareProfile) -> tuple[str, ...]:
    """The fit parameters the kinds present declare (a kind may declare a function of the
    cases and profile that returns only the parameters those cases can identify)."""
    names: list[str] = []
    for kind in sorted({c.kind for c in cases}):
        declared = predictor_for(kind)[1]
        if callable(declared):
            declared = declared([c for c in cases if c.kind == kind], profile)
        names += [p for p in declared if p not in names]
    return tuple(names)


def calibrate(cases: tuple[Case, ...] | list[Case], profile: HardwareProfile,
              params: tuple[str, ...] | None = None, source: str = "",
              loss: str = "soft_l1", loss_scale: float = 0.1, starts: int = 6,
              progress: bool = False) -> CalibrationResult:
    """Fit ``params`` (default: ``default_params``) of ``profile`` to the ``cases`` on it
    (``progress``: a bar over the starting points on stderr).

    ``loss`` is scipy's least_squares loss (``linear`` = plain squared log error);
    ``loss_scale`` the log error at which a robust loss starts to flatten; ``starts`` the
    number of extra (seeded, reproducible) starting points.
    """
    cases = [c for c in cases if c.hardware == profile.name]
    if params is None:
        # NOTE: only kinds that declare parameters take part; training or serving rows are
        # predicted from what gemm and all_to_all fitted, never fitted on themselves.
        cases = [c for c in cases if predictor_for(c.kind)[1]]
        params = default_params(cases, profile)
    if not cases:
        raise MoesimError(f"no cases on hardware {profile.name!r} of a kind that can be calibrated")
    kinds = tuple(sorted({c.kind for c in cases}))
    if not params:
        raise MoesimError(f"the case kinds {', '.join(kinds)} declare no parameters to fit")
    bounds = [param_bounds(p) for p in params]
    x0 = np.array([min(max(get_param(profile, p), lo), hi) for p, (lo, hi) in zip(params, bounds)])
    before = _errors(cases, profile)
    _, skipped = _residuals(cases, profile)

    def fun(x):
        return _residuals(cases, with_params(profile, dict(zip(params, x))), loss, loss_scale)[0]

    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    best = None
    # NOTE: the models are piecewise (max of roofline terms, wave ceilings), so the objective has
    # flat pieces and local minima: start from the current values and from `starts` seeded
    # log-uniform perturbations of them (x 1/4 .. x 4), keep the best.
    rng = np.random.default_rng(starts)
    candidates = [x0] + [x0 * np.exp(rng.uniform(-np.log(4), np.log(4), x0.size)) for _ in range(starts)]
    from moesim.progress import bar

    for start in bar(candidates, total=len(candidates), desc="calibrate starts", enabled=progress):
        start = np.clip(start, lo, np.minimum(hi, _UNBOUNDED_HI))
        fit = least_squares(fun, start, bounds=(lo, hi), diff_step=1e-3, x_scale="jac")
        if best is None or fit.cost < best.cost:
            best = fit
    values = {p: float(v) for p, v in zip(params, best.x)}
    fitted = with_params(profile, values)
    after = _errors(cases, fitted)
    date = _dt.date.today().isoformat()
    origin = (
        f"calibrated {date} on {len(after)} cases ({', '.join(kinds)}) of {source or 'a case set'}: "
        f"median |rel err| {median(after):.3f}, max {max(after):.3f} (in-sample); "
        f"fitted {', '.join(params)}"
    )
    fitted = with_params(fitted, {}, origin=origin)
    calibrated_parts = {f"{_split(p)[0]}_origin": "calibrated" for p in params}
    fitted = fitted.with_efficiency(fitted.efficiency.model_copy(update=calibrated_parts))
    return CalibrationResult(
        profile=fitted,
        params=values,
        n_cases=len(after),
        kinds=kinds,
        median_abs_rel_error_before=median(before) if before else float("nan"),
        max_abs_rel_error_before=max(before) if before else float("nan"),
        median_abs_rel_error_after=median(after),
        max_abs_rel_error_after=max(after),
        skipped=tuple(skipped),
    )


# ---- software-stack parameters (moesim/step/stacks.py) ----------------------------------------
# NOTE: a fitted host time per operator at the top of its range (the entry's ``fit_max``,
# moesim/data/stacks.toml) means the rows want more time than host issue can give: the device
# model misses it. Such a fit is reported as not identified and the parameter keeps its prior.


@dataclass(frozen=True)
class StackParamFit:
    """One fitted stack parameter: its value, the rows it was fitted on, whether they identify it."""

    param: str
    value: float
    rows: tuple[str, ...]
    identified: bool
    note: str

    def to_dict(self) -> dict:
        return {"param": self.param, "value": self.value, "rows": list(self.rows), "identified": self.identified,
                "note": self.note}


def case_stack_param(case: Case, table) -> str | None:
    """The fitted parameter (``"<stack>.<phase>.host_op_us"``) a training / prefill / decode row
    depends on, or None (a graph-captured phase, an unfitted prior, an end-to-end row)."""
    from moesim.case_inputs import case_stack
    from moesim.step.stacks import fit_params

    if case.kind not in ("training", "serving"):
        return None
    phase = "train" if case.kind == "training" else case.inputs.get("phase")
    if phase not in ("train", "prefill", "decode"):
        return None
    entry = table.entry_of(case_stack(dict(case.inputs), case.hardware, phase), phase)
    param = f"{entry}.host_op_us" if entry else None
    return param if param in fit_params(table) else None


def stack_log_errors(cases, profiles: dict, table) -> np.ndarray:
    """log(predicted / measured) of training / serving ``cases`` priced with stack ``table``."""
    out = []
    for c in cases:
        try:
            value = float(predictor_for(c.kind)[0](case_inputs(c), profiles[c.hardware], stacks=table))
        except UnsupportedCase:  # refused whatever the host value: not a row of the fit
            continue
        out.append(math.log(max(value, 1e-30) / c.measured))
    return np.asarray(out)


def _soft_l1(r: np.ndarray, scale: float = 0.1) -> float:
    return float(np.sum(2.0 * scale**2 * (np.sqrt(1.0 + (r / scale) ** 2) - 1.0)))


def fit_stack_param(param: str, rows, profiles: dict, table, prior: float, hi: float) -> StackParamFit:
    """Fit one stack parameter on ``rows`` (soft-L1 on log errors, scale 0.1, as ``calibrate``):
    a log grid over [0, ``hi``] us (the objective is flat where the rows are device-bound),
    refined by a bounded scalar search; at ``hi`` or flat: not identified, ``prior`` kept."""
    from scipy.optimize import minimize_scalar

    lo = 0.0

    def cost(x: float) -> float:
        return _soft_l1(stack_log_errors(rows, profiles, table.with_values({param: x})))

    grid = [lo] + list(np.geomspace(min(1.0, hi / 2), hi, 13))
    costs = [cost(x) for x in grid]
    i = int(np.argmin(costs))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best, best_cost = grid[i], costs[i]
    if b > a:
        res = minimize_scalar(cost, bounds=(a, b), method="bounded", options={"xatol": 0.05})
        if res.fun < best_cost:
            best, best_cost = float(res.x), float(res.fun)
    ids = tuple(c.id for c in rows)
    if best >= 0.99 * hi:
        return StackParamFit(param, prior, ids, False, f"the rows want host time at the range's top ({hi:g} us/op): "
                                                        f"not identified, prior {prior:g} kept")
    flat = max(costs) - min(costs) < 1e-6 * max(1.0, min(costs))
    if flat:
        return StackParamFit(param, prior, ids, False, f"the rows do not depend on it (device-bound): prior {prior:g} kept")
    return StackParamFit(param, float(best), ids, True, f"fitted on {len(ids)} rows")


def fit_stacks(cases, profiles: dict, table=None, priors: dict[str, float] | None = None) -> dict[str, StackParamFit]:
    """Each fitted stack parameter (moesim/step/stacks.py ``fit_params``) fitted on the training /
    serving rows of ``cases`` that run it (``case_stack_param``), over every hardware, within
    [0, its ``fit_max``]; a parameter no row runs or identifies keeps its prior (``priors``,
    default the entry's ``prior_us``)."""
    from moesim.step.stacks import fit_params, split_param, stack_table

    table = table or stack_table()
    out = {}
    for param in fit_params(table):  # in table order: a fit_max naming an earlier entry sees its fit
        name, phase = split_param(param)
        entry = table.get(name).phase(phase)
        prior = (priors or {}).get(param, entry.prior_us)
        hi = entry.fit_max if not isinstance(entry.fit_max, str) else table.value(f"{entry.fit_max}.host_op_us")
        rows = [c for c in cases if case_stack_param(c, table) == param]
        if not rows:
            fit = StackParamFit(param, prior, (), False, f"no row runs it: prior {prior:g} kept")
        else:
            fit = fit_stack_param(param, rows, profiles, table, prior, float(hi))
        out[param] = fit
        table = table.with_values({param: fit.value})
    return out
