"""Fit moesim's popularity models to a recorded routing trace, and measure what a trace did.

Legend: S steps, E experts, R EP ranks, K top-k, T tokens per step, X cases (cf or EP values).

A trace gives per-step expert counts ``counts_SE`` (copies, each row sums to T*K). The engine's
popularity ``p_E`` is a *sampling weight*: a token draws its K distinct experts by successive
sampling from ``p_E`` (popularity.py), so an expert's inclusion probability ``pi_e`` (its
expected share of the T tokens) is ``K p_e`` only while ``p_e`` is small; a collapsed router
with ``p_e = 0.5`` and K = 2 includes that expert in ~78% of tokens, not 100%. Every fit
therefore starts from the popularity whose engine inclusion probabilities equal the observed
mean inclusion ``mean_s counts_SE / T`` (:func:`popularity_from_inclusion`).

Models (one :class:`FitResult` each):

* ``explicit``: that popularity vector itself (the trivial model: the fit part's mean load);
* ``zipf``: exponent ``s`` by least squares of ``log p`` on ``log rank`` over the experts with
  a non-zero load, ``p_(r) ∝ r^-s`` placed on the experts in their observed rank order
  (``skew = explicit:...``; the engine's ``zipf:S`` string puts expert 0 hottest instead);
* ``dirichlet``: ``alpha`` by maximum likelihood of the fitted popularity as one draw of a
  symmetric Dirichlet(alpha) over E experts (the engine's ``dirichlet:A`` is one static draw,
  so per-step variation is the drift's job, not alpha's);
* ``drift``: the engine's log-normal per-step drift ``sigma`` (``p_step ∝ p_E exp(sigma Z)``)
  such that the engine reproduces the observed pooled step-to-step variance of the counts,
  ``Q = sum_e var_s(c_se) / sum_e mean_s(c_se)^2`` (dimensionless); the multinomial sampling
  part of Q comes with the engine's own sampled steps, so only the excess is attributed to drift.

:func:`measure_counts` computes drop fraction and rank imbalance from counts exactly as the
engine defines them (see :func:`measure_counts`); it is applied both to held-out trace steps
and to steps sampled from the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from moesim.errors import SpecError
from moesim.routing.api import route, step_sampler
from moesim.routing.problem import build_problem
from moesim.routing.popularity import zipf_probs

DRIFT_MAX = 4.0  # largest drift sigma searched (log-normal sd; exp(4) = 55x per step)
DRIFT_FIT_STEPS = 200  # engine steps sampled per candidate sigma
INVERT_ITERS = 60


def skew_string(p_E: np.ndarray) -> str:
    """The engine's ``explicit:`` skew for a popularity vector (full float precision)."""
    return "explicit:" + ",".join(repr(float(x)) for x in p_E)


@dataclass(frozen=True)
class FitResult:
    """One fitted popularity model for one layer of one trace.

    ``param`` is s (zipf), alpha (dirichlet), sigma (drift) or None (explicit); ``skew`` and
    ``drift`` are what to hand to :func:`moesim.routing.route`; ``p_E`` the model's popularity
    (dirichlet: the expected sorted draw, for goodness of fit only); ``tv_sorted`` the total
    variation distance between the model's and the fitted popularity, both sorted descending
    (0 = same shape); ``detail`` model-specific figures (r2, loglik, Q observed / fitted ...).
    """

    model: str
    source: str
    layer: int
    fit_steps: int
    param: float | None
    skew: str
    drift: float
    p_E: np.ndarray = field(repr=False)
    tv_sorted: float
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "source": self.source, "layer": self.layer,
                "fit_steps": self.fit_steps, "param": self.param, "drift": self.drift,
                "tv_sorted": self.tv_sorted, "detail": dict(self.detail),
                "popularity": [round(float(x), 8) for x in self.p_E]}


@dataclass(frozen=True)
class Measured:
    """Drop fraction per capacity factor and rank imbalance per EP size, over some steps."""

    steps: int
    drop_X: dict  # capacity factor -> drop fraction
    imbalance_X: dict  # EP size -> E[max rank load] / mean rank load

    def to_dict(self) -> dict:
        return {"steps": self.steps, "drop": {str(k): v for k, v in self.drop_X.items()},
                "imbalance": {str(k): v for k, v in self.imbalance_X.items()}}


def _check_counts(counts_SE: np.ndarray, top_k: int) -> np.ndarray:
    c_SE = np.asarray(counts_SE)
    if c_SE.ndim != 2 or c_SE.shape[0] < 1 or c_SE.shape[1] < top_k:
        raise SpecError("counts_SE", f"shape {c_SE.shape}", f"needs steps x experts (>= top_k={top_k})")
    if np.any(c_SE < 0) or np.any(c_SE.sum(axis=1) <= 0):
        raise SpecError("counts_SE", "values", "counts must be >= 0 with a positive sum per step")
    return c_SE.astype(np.float64)


def tokens_per_step(counts_SE: np.ndarray, top_k: int) -> int:
    """T: copies per step / K (the trace's steps must all route the same T tokens)."""
    copies_S = np.asarray(counts_SE).sum(axis=1)
    if np.any(copies_S != copies_S[0]) or copies_S[0] % top_k:
        raise SpecError("counts_SE", "row sums", f"every step needs the same T*K copies (K={top_k})")
    return int(copies_S[0] // top_k)


def inclusion(p_E: np.ndarray, top_k: int) -> np.ndarray:
    """Engine inclusion probabilities ``pi_E`` (share of tokens that pick each expert) of a
    popularity, from the analytic engine (dropless, EP 1): expert_tokens_E / T."""
    T = 1 << 16
    stats = route(p_E.size, top_k, T, skew=skew_string(p_E))
    return stats.expert_tokens_E / T


def popularity_from_inclusion(pi_E: np.ndarray, top_k: int, tol: float = 1e-5) -> np.ndarray:
    """The popularity whose engine inclusion probabilities are ``pi_E`` (sum K, each in [0, 1]).

    Multiplicative fixed point ``p <- p * pi_target / pi(p)`` (inclusion is increasing in each
    p_e); exact for K = 1 (``p = pi``). Stops when ``max |pi(p) - pi_target| < tol``.
    """
    target_E = np.clip(np.asarray(pi_E, dtype=np.float64), 0.0, 1.0)
    p_E = target_E / target_E.sum()
    if top_k == 1:
        return p_E
    # NOTE: an expert in every token (pi = 1) needs infinite weight; aim just below it.
    target_E = np.minimum(target_E, 1.0 - 1e-4)
    for _ in range(INVERT_ITERS):
        got_E = inclusion(p_E, top_k)
        if np.max(np.abs(got_E - target_E)) < tol:
            break
        p_E = p_E * np.where(got_E > 0, target_E / np.maximum(got_E, 1e-300), 1.0)
        p_E /= p_E.sum()
    return p_E


def _tv_sorted(a_E: np.ndarray, b_E: np.ndarray) -> float:
    return float(0.5 * np.abs(np.sort(a_E)[::-1] - np.sort(b_E)[::-1]).sum())


def fit_explicit(counts_SE, top_k: int, *, source: str = "", layer: int = 0) -> FitResult:
    """The fit part's mean inclusion turned into the engine popularity that reproduces it."""
    c_SE = _check_counts(counts_SE, top_k)
    T = tokens_per_step(counts_SE, top_k)
    p_E = popularity_from_inclusion(c_SE.mean(axis=0) / T, top_k)
    return FitResult("explicit", source, layer, c_SE.shape[0], None, skew_string(p_E), 0.0, p_E, 0.0,
                     {"tokens": T, "max_share": float(c_SE.sum(0).max() / c_SE.sum())})


def fit_zipf(base: FitResult) -> FitResult:
    """Zipf exponent by least squares of ``log p_(r)`` on ``log r`` (r = 1..E by popularity,
    experts with ``p < 1e-9`` left out); the Zipf vector is placed in the observed order."""
    p_E = base.p_E
    order_E = np.argsort(-p_E, kind="stable")
    p_sorted = p_E[order_E]
    keep = p_sorted > 1e-9
    x = np.log(np.arange(1, p_E.size + 1))[keep]
    y = np.log(p_sorted[keep])
    slope, intercept = np.polyfit(x, y, 1)
    s = max(0.0, float(-slope))
    resid = y - (slope * x + intercept)
    r2 = float(1.0 - resid.var() / y.var()) if y.var() > 0 else 1.0
    model_E = np.empty_like(p_E)
    model_E[order_E] = zipf_probs(p_E.size, s)
    return FitResult("zipf", base.source, base.layer, base.fit_steps, s, skew_string(model_E), 0.0,
                     model_E, _tv_sorted(model_E, p_E), {"r2_loglog": r2, "points": int(keep.sum())})


def dirichlet_loglik(alpha: float, logp_sum: float, E: int) -> float:
    """log density of a symmetric Dirichlet(alpha) over E at a point with ``sum_e log p_e``."""
    return float(special.gammaln(E * alpha) - E * special.gammaln(alpha) + (alpha - 1.0) * logp_sum)


def fit_dirichlet(base: FitResult, floor: float | None = None) -> FitResult:
    """Symmetric Dirichlet alpha by maximum likelihood of the fitted popularity as one draw.

    ``p`` is floored at ``floor`` (default: half a copy over the fit part, ``0.5 / (T S)``) and
    renormalised, so an expert never chosen has a finite log. Expected sorted draw (for
    ``tv_sorted``): the mean of 64 sorted draws from a fixed seed."""
    p_E = base.p_E
    E = p_E.size
    lo = floor if floor is not None else 0.5 / (base.detail.get("tokens", 1) * base.fit_steps)
    q_E = np.maximum(p_E, lo)
    q_E /= q_E.sum()
    logp_sum = float(np.log(q_E).sum())
    res = optimize.minimize_scalar(lambda la: -dirichlet_loglik(math.exp(la), logp_sum, E),
                                   bounds=(math.log(1e-4), math.log(1e4)), method="bounded",
                                   options={"xatol": 1e-6})
    alpha = float(math.exp(res.x))
    draws_XE = np.sort(np.random.default_rng(0).dirichlet(np.full(E, alpha), 64), axis=1)[:, ::-1]
    model_E = draws_XE.mean(axis=0)
    return FitResult("dirichlet", base.source, base.layer, base.fit_steps, alpha, f"dirichlet:{alpha:.6g}",
                     0.0, model_E, _tv_sorted(model_E, p_E),
                     {"loglik": -float(res.fun), "loglik_uniform_limit": float(
                         dirichlet_loglik(1e4, logp_sum, E))})


def pooled_q(counts_SE) -> float:
    """``Q = sum_e var_s(c_se) / sum_e mean_s(c_se)^2``: pooled relative step-to-step variance."""
    c_SE = np.asarray(counts_SE, dtype=np.float64)
    return float(c_SE.var(axis=0).sum() / np.maximum((c_SE.mean(axis=0) ** 2).sum(), 1e-300))


def sample_counts(num_experts: int, top_k: int, tokens: int, skew: str, drift: float, steps: int,
                  seed: int, cycle: bool = False) -> np.ndarray:
    """``counts_SE`` of ``steps`` steps sampled by the engine (EP 1, dropless): ``cycle`` walks
    a trace skew's steps in order, otherwise each step picks a random trace step (if any)."""
    sampler = step_sampler(num_experts, top_k, tokens, skew=skew, drift=drift, seed=seed)
    rng = np.random.default_rng(seed)
    out_SE = np.empty((steps, num_experts), dtype=np.int64)
    for i in range(steps):
        out_SE[i] = sampler.sample(rng, step=i if cycle else None).load_P
    return out_SE


def fit_drift(counts_SE, base: FitResult, top_k: int, steps: int = DRIFT_FIT_STEPS, seed: int = 0) -> FitResult:
    """Drift sigma such that engine steps around ``base`` have the observed pooled Q.

    ``Q_model(sigma)`` is estimated from ``steps`` engine steps with common random numbers
    (same seed for every sigma, so it is smooth and increasing in sigma) and solved by
    bisection on [0, DRIFT_MAX]; sigma = 0 when the observed Q is within sampling noise."""
    c_SE = _check_counts(counts_SE, top_k)
    E, k, T = base.p_E.size, top_k, base.detail["tokens"]
    q_obs = pooled_q(c_SE)

    def q_model(sigma: float) -> float:
        return pooled_q(sample_counts(E, k, T, base.skew, sigma, steps, seed))

    q0 = q_model(0.0)
    lo, hi = 0.0, DRIFT_MAX
    if q_obs <= q0:
        hi = 0.0
    elif q_obs >= q_model(hi):
        lo = hi
    while hi - lo > 2e-3:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if q_model(mid) < q_obs else (lo, mid)
    sigma = 0.5 * (lo + hi)
    return FitResult("drift", base.source, base.layer, base.fit_steps, sigma, base.skew, sigma,
                     base.p_E, 0.0, {"q_observed": q_obs, "q_sampling_only": q0,
                                     "q_fitted": q_model(sigma) if sigma > 0 else q0})


def fit_layer(counts_SE, top_k: int, *, source: str = "", layer: int = 0,
              drift_steps: int = DRIFT_FIT_STEPS) -> dict[str, FitResult]:
    """All four fits of one layer's fit-part counts: explicit, zipf, dirichlet, drift."""
    base = fit_explicit(counts_SE, top_k, source=source, layer=layer)
    return {"explicit": base, "zipf": fit_zipf(base), "dirichlet": fit_dirichlet(base),
            "drift": fit_drift(counts_SE, base, top_k, steps=drift_steps)}


def capacity(num_experts: int, top_k: int, tokens: int, capacity_factor: float) -> int:
    """The engine's capacity per expert slot, ``C = ceil(cf * T * K / E)`` (problem.py)."""
    return int(build_problem(num_experts, top_k, tokens, capacity_factor=capacity_factor).capacity)


def measure_counts(counts_SE, top_k: int, capacity_factors=(1.0, 1.25, 1.5, 2.0),
                   eps=(2, 4, 8)) -> Measured:
    """Drop fraction and rank imbalance of recorded (or sampled) steps, as the engine defines them.

    * drop (overflow ``drop``, no redundant slots): an expert with ``c`` copies in a step
      processes ``min(c, C)`` and drops ``(c - C)+`` whatever the token order, so
      ``drop = sum_s sum_e (c_se - C)+ / (S T K)`` (RoutingStats.drop_fraction, share of the
      T*K copies, averaged over steps) -- exact from counts;
    * rank imbalance at EP R (dropless, contiguous placement: expert e on rank e // (E/R)):
      ``mean_s max_r load_sr / (T K / R)`` (RoutingStats.rank_imbalance = E[max] / mean).
    """
    c_SE = _check_counts(counts_SE, top_k)
    S, E = c_SE.shape
    T = tokens_per_step(counts_SE, top_k)
    drop_X = {}
    for cf in capacity_factors:
        C = capacity(E, top_k, T, cf)
        drop_X[cf] = float(np.maximum(c_SE - C, 0.0).sum() / (S * T * top_k))
    imb_X = {}
    for R in eps:
        if E % R:
            raise SpecError("ep", R, f"must divide num_experts={E} (contiguous placement)")
        load_SR = c_SE.reshape(S, R, E // R).sum(axis=2)
        imb_X[R] = float(load_SR.max(axis=1).mean() / (T * top_k / R))
    return Measured(S, drop_X, imb_X)


def predict_static(num_experts: int, top_k: int, tokens: int, skew: str, capacity_factors=(1.0, 1.25, 1.5, 2.0),
                   eps=(2, 4, 8), seeds=(0,)) -> Measured:
    """Drop fraction per cf (EP 1, overflow ``drop``) and dropless rank imbalance per EP
    (contiguous placement) from the analytic engine, averaged over ``seeds`` (which draw the
    Dirichlet popularity; one seed for deterministic skews)."""
    drop_X = {cf: float(np.mean([route(num_experts, top_k, tokens, skew=skew, capacity_factor=cf,
                                       seed=s).drop_fraction for s in seeds])) for cf in capacity_factors}
    imb_X = {R: float(np.mean([route(num_experts, top_k, tokens, skew=skew, ep=R, ranks_per_node=R,
                                     seed=s).rank_imbalance for s in seeds])) for R in eps}
    return Measured(0, drop_X, imb_X)


def predict_sampled(num_experts: int, top_k: int, tokens: int, skew: str, drift: float, steps: int,
                    capacity_factors=(1.0, 1.25, 1.5, 2.0), eps=(2, 4, 8), seeds=(0,),
                    cycle: bool = False) -> Measured:
    """The same quantities from ``steps`` engine steps per seed (Monte Carlo sampler, needed
    with drift or a per-step trace skew), measured by :func:`measure_counts` -- which is the
    engine's own definition, so this equals ``route(engine='montecarlo')`` in expectation."""
    c_SE = np.concatenate([sample_counts(num_experts, top_k, tokens, skew, drift, steps, s, cycle)
                           for s in seeds])
    return measure_counts(c_SE, top_k, capacity_factors, eps)
