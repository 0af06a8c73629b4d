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
from typing import Sequence

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


def _residuals(cases, profiles: dict, loss: str = "linear", scale: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """Loss-shaped log(pred/measured) per usable case (each on ``profiles[case.hardware]``),
    weighted 1/sqrt(n_kind); ids skipped."""
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    logs, weights, skipped = [], [], []
    for c in cases:
        predict, _ = predictor_for(c.kind)
        try:
            value = float(predict(case_inputs(c), profiles[c.hardware]))
        except UnsupportedCase:
            skipped.append(c.id)
            continue
        logs.append(math.log(max(value, 1e-30) / c.measured))
        weights.append(1.0 / math.sqrt(counts[c.kind]))
    return _robust(np.asarray(logs), loss, scale) * np.asarray(weights), skipped


def _errors(cases, profiles: dict) -> list[float]:
    out = []
    for c in cases:
        predict, _ = predictor_for(c.kind)
        try:
            out.append(abs(float(predict(case_inputs(c), profiles[c.hardware])) - c.measured) / c.measured)
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


def _with_fraction_dtypes(profile: HardwareProfile, cases, params) -> HardwareProfile:
    """``profile`` whose GEMM compute fraction holds for the math dtypes of the GEMM ``cases``
    fitting it (``gemm_fraction_dtypes``), so the fitted value is not applied to kernels it never
    saw; unchanged when ``params`` does not fit the fraction or no case names a dtype."""
    if "compute.gemm_compute_fraction" not in params:
        return profile
    dtypes = {case_inputs(c).get("dtype") for c in cases if c.kind in ("gemm", "grouped_gemm")} - {None}
    if not dtypes:
        return profile
    compute = ComputeEfficiency.model_validate(
        {**profile.efficiency.compute.model_dump(), "gemm_fraction_dtypes": sorted(dtypes)})
    return profile.with_efficiency(profile.efficiency.model_copy(update={"compute": compute}))


def calibrate(cases: tuple[Case, ...] | list[Case], profile: HardwareProfile,
              params: tuple[str, ...] | None = None, source: str = "",
              loss: str = "soft_l1", loss_scale: float = 0.1, starts: int = 6,
              progress: bool = False, siblings: tuple[HardwareProfile, ...] = ()) -> CalibrationResult:
    """Fit ``params`` (default: ``default_params``) of ``profile`` to the ``cases`` on it
    (``progress``: a bar over the starting points on stderr).

    ``siblings``: profiles of the same silicon (the same SMs, kernels and dense peaks, another
    fabric or memory: H100 beside H800) whose ``cases`` join the fit, each predicted on its own
    profile with the compute section being fitted (a sibling keeps its own communication and
    memory-capacity terms, so only kinds whose parameters are all ``compute.*`` may come from a
    sibling: another kind there is refused, naming the case); the result is ``profile``'s.

    ``loss`` is scipy's least_squares loss (``linear`` = plain squared log error);
    ``loss_scale`` the log error at which a robust loss starts to flatten; ``starts`` the
    number of extra (seeded, reproducible) starting points.
    """
    on = {profile.name: profile, **{s.name: s for s in siblings}}
    cases = [c for c in cases if c.hardware in on]
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
    for c in cases:
        if c.hardware != profile.name and any(_split(p)[0] != "compute" for p in default_params([c], on[c.hardware])):
            raise MoesimError(f"case {c.id!r} ({c.kind}) is on sibling {c.hardware!r}, which shares only the compute "
                              f"section with {profile.name!r}: fit it on its own profile")
    profile = _with_fraction_dtypes(profile, cases, params)

    def fitted_on(values: dict) -> dict:
        fitted = with_params(profile, values)
        compute = {"compute": fitted.efficiency.compute}
        return {name: fitted if name == profile.name else
                sib.with_efficiency(sib.efficiency.model_copy(update=compute)) for name, sib in on.items()}

    bounds = [param_bounds(p) for p in params]
    x0 = np.array([min(max(get_param(profile, p), lo), hi) for p, (lo, hi) in zip(params, bounds)])
    before = _errors(cases, fitted_on({}))
    _, skipped = _residuals(cases, fitted_on({}))

    def fun(x):
        return _residuals(cases, fitted_on(dict(zip(params, x))), loss, loss_scale)[0]

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
    after = _errors(cases, fitted_on(values))
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
# Each stack's fitted parameters (host_op_us: host time per eager operator; device_fraction: the
# achievable fraction of the kernel models' device throughput in the stack's full step) are fitted
# JOINTLY on the whole-source rows that run the stack: host time and missing device time trade off
# on the same rows, so fitting one alone lets it absorb the other.
# NOTE: a fitted host time per operator at the top of its range (the entry's ``fit_max``,
# moesim/data/stacks.toml) means the rows want more time than host issue can give; a fraction at
# FRACTION_MIN that they want more device time than a sustained-throughput loss explains. Such a
# parameter is reported as not identified, keeps its prior, and the others are refitted with it
# there. A fraction at 1 is its prior (the kernel models as calibrated).


@dataclass(frozen=True)
class StackParamFit:
    """One fitted stack parameter: its value, the rows it was fitted on, whether they identify it."""

    param: str
    value: float
    rows: tuple[str, ...]
    identified: bool
    note: str
    pooled: bool = False  # set from other stacks' fits (``pool_fractions``), not fitted on ``rows``

    def to_dict(self) -> dict:
        return {"param": self.param, "value": self.value, "rows": list(self.rows), "identified": self.identified,
                "note": self.note, "pooled": self.pooled}


def case_stack_params(case: Case, table) -> tuple[str, ...]:
    """The fitted stack parameters (``"<stack>.<phase>.<host_op_us|device_fraction>"``) a
    training / serving row depends on: those of its phase (training: train; a prefill or decode
    row: that phase; an end-to-end row through the planner: prefill and decode) under the case's
    stack (``case_stack``; an end-to-end row: the one stack the planner's scenario runs)."""
    from moesim.case_inputs import case_stack
    from moesim.step.stacks import PARAM_FIELDS, fit_params

    if case.kind not in ("training", "serving"):
        return ()
    phase = "train" if case.kind == "training" else case.inputs.get("phase")
    if phase == "end_to_end":
        phases, stack_phase = ("prefill", "decode"), "decode"
    elif phase in ("train", "prefill", "decode"):
        phases, stack_phase = (phase,), phase
    else:
        return ()
    fitted, out = set(fit_params(table)), []
    stack = case_stack(dict(case.inputs), case.hardware, stack_phase)
    for ph in phases:
        for fld in PARAM_FIELDS:
            entry = table.entry_of(stack, ph, fld)
            param = f"{entry}.{fld}" if entry else None
            if param in fitted and param not in out:
                out.append(param)
    return tuple(out)


def case_stack_param(case: Case, table) -> str | None:
    """The fitted ``host_op_us`` parameter a training / prefill / decode row depends on, or None
    (a graph-captured phase, an unfitted prior, an end-to-end row)."""
    if case.kind == "serving" and case.inputs.get("phase") == "end_to_end":
        return None
    return next((p for p in case_stack_params(case, table) if p.endswith(".host_op_us")), None)


def stack_log_errors(cases, profiles: dict, table) -> np.ndarray:
    """log(predicted / measured) of training / serving ``cases`` priced with stack ``table``."""
    out = []
    for c in cases:
        try:
            value = float(predictor_for(c.kind)[0](case_inputs(c), profiles[c.hardware], stacks=table))
        except UnsupportedCase:  # refused whatever the parameter values: not a row of the fit
            continue
        out.append(math.log(max(value, 1e-30) / c.measured))
    return np.asarray(out)


def _soft_l1(r: np.ndarray, scale: float = 0.1) -> float:
    return float(np.sum(2.0 * scale**2 * (np.sqrt(1.0 + (r / scale) ** 2) - 1.0)))


def _is_e2e(case: Case) -> bool:
    return case.kind == "serving" and case.inputs.get("phase") == "end_to_end"


def _grid(param: str, lo: float, hi: float, coarse: bool) -> list[float]:
    """Coarse grid of one parameter: host time on a log grid from 0 (the objective is flat where
    the rows are device-bound), a fraction evenly over [lo, hi]."""
    if param.endswith((".host_op_us", ".host_seq_us")):
        return [lo] + list(np.geomspace(hi / 64, hi, 3 if coarse else 7)) if hi > 0 else [lo]
    return list(np.linspace(lo, hi, 5 if coarse else 9))


def fit_stack_group(params: Sequence[str], rows, profiles: dict, table, priors: dict[str, float],
                    bounds: dict[str, tuple[float, float]]) -> dict[str, StackParamFit]:
    """Fit ``params`` (one stack's parameters) jointly on ``rows``: soft-L1 (scale 0.1, as
    ``calibrate``) on log errors, each within ``bounds``; a coarse grid (coarser when the rows run
    end to end through the planner, ~0.1-0.5 s a row), refined by a bounded Nelder-Mead from its
    best point (up to 120 evaluations on step rows, where one costs ~0.05 s: converged to 1e-4 of
    the range; 14 on end-to-end rows). A parameter at a bound, or one the objective does not depend on (flat along its
    grid line), is not identified: it keeps its prior and the rest are refitted with it there.
    With fewer rows than parameters the host times keep their priors and the fractions are fitted
    (one row cannot separate host from device time)."""
    from scipy.optimize import minimize

    from moesim.step.stacks import FRACTION_FIELDS, param_field

    params = list(params)
    ids = tuple(c.id for c in rows)
    hosts = [p for p in params if p.endswith((".host_op_us", ".host_seq_us"))]
    if len(rows) < len(params) and len(hosts) < len(params):  # one equation per row: the fraction
        out = {p: StackParamFit(p, priors[p], ids, False, f"fewer rows ({len(rows)}) than parameters: not "
                                                          f"identified, prior {priors[p]:g} kept") for p in hosts}
        fixed = table.with_values({p: priors[p] for p in hosts})
        rest = [p for p in params if p not in hosts]
        return {**out, **fit_stack_group(rest, rows, profiles, fixed, priors, bounds)}
    coarse = any(_is_e2e(c) for c in rows)
    memo: dict[tuple, float] = {}

    def cost(x) -> float:
        key = tuple(round(float(v), 6) for v in x)
        if key not in memo:
            memo[key] = _soft_l1(stack_log_errors(rows, profiles, table.with_values(dict(zip(params, key)))))
        return memo[key]

    grids = [_grid(p, *bounds[p], coarse) for p in params]
    pts = np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(params), -1).T
    costs = np.array([cost(x) for x in pts])
    best = pts[int(np.argmin(costs))]
    flat = {}
    for k, p in enumerate(params):  # the grid line through the best point along parameter k
        line = [cost(np.where(np.arange(len(params)) == k, g, best)) for g in grids[k]]
        flat[p] = max(line) - min(line) < 1e-6 * max(1.0, min(line))
    lo = np.array([bounds[p][0] for p in params])
    span = np.array([bounds[p][1] - bounds[p][0] for p in params])
    span = np.where(span > 0, span, 1.0)
    u0 = (best - lo) / span
    simplex = [u0] + [np.clip(u0 + np.where(np.arange(len(params)) == k, 0.15 if u0[k] < 0.5 else -0.15, 0.0), 0, 1)
                      for k in range(len(params))]
    res = minimize(lambda u: cost(lo + np.clip(u, 0, 1) * span), u0, method="Nelder-Mead",
                   bounds=[(0.0, 1.0)] * len(params),
                   options={"initial_simplex": np.array(simplex), "maxfev": 14 if coarse else 120,
                            "xatol": 1e-4, "fatol": 1e-7})
    x = lo + np.clip(res.x, 0, 1) * span if res.fun < cost(best) else best
    out, stuck = {}, []
    for k, p in enumerate(params):
        v, (a, b), prior = float(x[k]), bounds[p], priors[p]
        at_top, at_bottom = v >= b - 0.01 * (b - a), v <= a + 0.01 * (b - a)
        if flat[p]:
            out[p] = StackParamFit(p, prior, ids, False, f"the rows do not depend on it: prior {prior:g} kept")
        elif p.endswith((".host_op_us", ".host_seq_us")) and at_top:
            unit = "us/op" if p.endswith(".host_op_us") else "us per sequence per iteration"
            out[p] = StackParamFit(p, prior, ids, False, f"the rows want host time at the range's top ({b:g} {unit}): "
                                                         f"not identified, prior {prior:g} kept")
        elif param_field(p) in FRACTION_FIELDS and at_bottom:
            what = "an expert fraction" if p.endswith(".expert_fraction") else "a device fraction"
            out[p] = StackParamFit(p, prior, ids, False, f"the rows want {what} at the range's bottom "
                                                         f"({a:g}): not identified, prior {prior:g} kept")
        elif param_field(p) in FRACTION_FIELDS and at_top:
            out[p] = StackParamFit(p, prior, ids, False, f"the rows want the full kernel-model throughput (fraction "
                                                         f"{b:g}, the range's top): prior {prior:g} kept")
        else:
            out[p] = StackParamFit(p, v, ids, True, f"fitted on {len(ids)} rows")
        if not out[p].identified:
            stuck.append(p)
    free = [p for p in params if p not in stuck]
    if stuck and free:  # refit the identified ones with the rest at their priors
        fixed = table.with_values({p: out[p].value for p in stuck})
        out.update(fit_stack_group(free, rows, profiles, fixed, priors, bounds))
    return out


_GROUP_FITS: dict = {}  # (params, rows, profiles, bounds, priors, other values) -> fits: LOGO repeats fits


def _fingerprint(rows, profiles: dict, table, params, bounds, priors) -> tuple:
    """What a stack group's fit depends on: its rows, their hardware's profiles, the bounds and
    priors, and the values of the other fitted parameters those rows run (``case_stack_params``;
    a parameter no row runs cannot change the fit, so a refit elsewhere reuses this one)."""
    hws = sorted({c.hardware for c in rows})
    used = sorted({p for c in rows for p in case_stack_params(c, table)} - set(params))
    return (tuple(params), tuple((c.id, c.measured, c.hardware) for c in rows),
            tuple((h, profiles[h].model_dump_json()) for h in hws),
            tuple(sorted(bounds.items())), tuple(sorted(priors.items())),
            tuple((p, table.value(p)) for p in used))


def fit_stacks(cases, profiles: dict, table=None, priors: dict[str, float] | None = None) -> dict[str, StackParamFit]:
    """Every fitted stack parameter (moesim/step/stacks.py ``fit_params``), each stack's jointly
    (``fit_stack_group``), on the training / serving rows of ``cases`` that depend on any of them
    (``case_stack_params``), over every hardware: ``host_op_us`` within [0, its ``fit_max``],
    ``host_seq_us`` within [0, its ``seq_fit_max``] (prior ``seq_prior_us``),
    ``device_fraction`` and ``expert_fraction`` within [the entry's ``fraction_min``, 1] (FRACTION_MIN unless the entry
    states one). A parameter no row runs or identifies keeps its
    prior (``priors``, default the entry's ``prior_us``, 1.0 for a fraction). Stacks are fitted in
    table order (a ``fit_max`` naming an earlier entry sees its fit); identical fits (the same
    rows, profiles and fixed values) are reused within the process."""
    from moesim.step.stacks import fit_params, param_field, split_param, stack_table

    table = table or stack_table()
    groups: dict[str, list[str]] = {}
    for param in fit_params(table):
        groups.setdefault(split_param(param)[0], []).append(param)
    row_params = {c.id: case_stack_params(c, table) for c in cases}
    out: dict[str, StackParamFit] = {}
    for name, params in groups.items():
        prior, bounds = {}, {}
        for p in params:
            entry = table.get(name).phase(split_param(p)[1])
            if param_field(p) == "host_op_us":
                hi = entry.fit_max if not isinstance(entry.fit_max, str) else table.value(f"{entry.fit_max}.host_op_us")
                prior[p], bounds[p] = (priors or {}).get(p, entry.prior_us), (0.0, float(hi))
            elif param_field(p) == "host_seq_us":
                prior[p], bounds[p] = (priors or {}).get(p, entry.seq_prior_us), (0.0, float(entry.seq_fit_max))
            else:
                prior[p], bounds[p] = (priors or {}).get(p, 1.0), (entry.fraction_min, 1.0)
        rows = [c for c in cases if set(row_params[c.id]) & set(params)]
        if not rows:
            fits = {p: StackParamFit(p, prior[p], (), False, f"no row runs it: prior {prior[p]:g} kept") for p in params}
        else:
            key = _fingerprint(rows, profiles, table, params, bounds, prior)
            if key not in _GROUP_FITS:
                _GROUP_FITS[key] = fit_stack_group(params, rows, profiles, table, prior, bounds)
            fits = _GROUP_FITS[key]
        out.update(fits)
        table = table.with_values({p: f.value for p, f in fits.items()})
    out.update(pool_fractions(out, table))
    return out


# the phases whose identified device fractions pool into an unfitted engine's (serving engines)
POOL_PHASES: tuple[str, ...] = ("prefill", "decode")


def orphaned_fractions(fits: dict[str, StackParamFit]) -> tuple[str, ...]:
    """The fitted serving-phase (``POOL_PHASES``) device fractions that no row of the fit runs
    (``fit_stacks``: "no row runs it"), in ``fits`` order. With every source present there are
    none (each fitted fraction has its calibration rows); a leave-one-group-out fold that holds out
    a stack's only source leaves its fraction here."""
    from moesim.step.stacks import split_param

    return tuple(p for p, f in fits.items() if p.endswith(".device_fraction") and not f.rows
                 and not f.pooled and split_param(p)[1] in POOL_PHASES)


def pool_fractions(fits: dict[str, StackParamFit], table) -> dict[str, StackParamFit]:
    """The pooled device fractions: each the median of the serving-phase (``POOL_PHASES``) device
    fractions that ``fits`` identified, on the union of their rows; with none identified the prior
    1.0 is kept. Pooled are the engines without a calibration source (moesim/step/stacks.py
    ``pooled_params``) and every fitted serving-phase fraction that no row of ``fits`` runs
    (``orphaned_fractions``: its whole source left out by a leave-one-group-out fold,
    moesim/accuracy.py), so an engine whose source is held out is predicted as one that never had
    one, not at the kernel models' full rate. A pooled engine's own rows are never among the donors
    (its fraction is not fitted), so they stay out of sample; a left-out source's fraction drops
    out of the pool with its fit."""
    from moesim.step.stacks import pooled_params, split_param

    donors = {p: f for p, f in sorted(fits.items())
              if f.identified and p.endswith(".device_fraction") and split_param(p)[1] in POOL_PHASES}
    rows = tuple(sorted({r for f in donors.values() for r in f.rows}))
    out = {}
    for p in (*pooled_params(table), *orphaned_fractions(fits)):
        if not donors:
            out[p] = StackParamFit(p, 1.0, (), False, "no serving fraction identified to pool: prior 1 kept", pooled=True)
            continue
        value = float(median(f.value for f in donors.values()))
        what = ", ".join(f"{q} {f.value:.4g}" for q, f in donors.items())
        out[p] = StackParamFit(p, value, rows, True, f"pooled: the median of the identified serving fractions ({what})",
                               pooled=True)
    return out
