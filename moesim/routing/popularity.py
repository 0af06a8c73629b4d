"""Expert popularity: the probability vector a token's router draws its experts from.

Legend: E experts, S steps (of a trace or of drift draws).

A popularity is a vector ``p_E`` (non-negative, sums to 1). Tokens pick their ``k`` distinct
experts by *successive sampling* from ``p_E``: the first expert with probability ``p_e``, the
next among the rest proportionally to ``p``, and so on (equivalently: the top-k of
``log p_e + Gumbel`` router scores, or the first k arrivals of independent exponential clocks
with rates ``p_e``). The order of the draws is the token's preference order, which is what
``overflow='reroute'`` follows.

Models (``skew`` strings, parsed by :func:`moesim.specs.workload.parse_skew`):

* ``uniform``: ``p_e = 1/E``; an expert's load is Binomial(T, k/E).
* ``balanced``: every expert gets exactly ``T*k/E`` copies (a perfect router; no randomness).
* ``zipf:S``: ``p_e ∝ (e + 1)^-S`` (expert 0 the hottest; contiguous placement then puts
  the hot experts together on rank 0, the worst case; ``placement='round_robin'`` spreads them).
* ``dirichlet:A``: ``p_E ~ Dirichlet(A, ..., A)`` drawn once from the seed.
* ``explicit:p1,...,pE``: the vector, normalised.
* ``trace:FILE``: per-step popularity read from a trace (see :mod:`moesim.routing.trace`).

Per-step drift (``drift = sigma > 0``): each step's popularity is the base multiplied by
log-normal noise, ``p_e,step ∝ p_e * exp(sigma * Z_e)``, ``Z ~ N(0, 1)``, renormalised.
"""
from __future__ import annotations

import numpy as np

from moesim.errors import SpecError
from moesim.specs.workload import parse_skew

# NOTE: experts with zero popularity are floored at this fraction of the largest probability,
# so successive sampling always has k candidates and the analytic time grid stays finite.
P_FLOOR = 1e-12


def zipf_probs(num_experts: int, s: float) -> np.ndarray:
    """``p_e = (e+1)^-s / H(E, s)``: Zipf popularity with expert 0 the hottest."""
    w_E = np.arange(1, num_experts + 1, dtype=np.float64) ** (-float(s))
    return w_E / w_E.sum()


def normalise(p_E: np.ndarray, field: str = "skew") -> np.ndarray:
    """Floor (``P_FLOOR`` x max) and renormalise a non-negative vector; raises SpecError if it is all zero."""
    p_E = np.asarray(p_E, dtype=np.float64)
    if p_E.ndim != 1 or not np.all(np.isfinite(p_E)) or np.any(p_E < 0) or p_E.sum() <= 0:
        raise SpecError(field, "popularity vector", "needs finite values >= 0 with a positive sum")
    p_E = np.maximum(p_E, P_FLOOR * p_E.max())
    return p_E / p_E.sum()


def base_popularity(skew: str, num_experts: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """Resolve a non-trace skew string to ``(kind, p_E)``. ``balanced`` returns the uniform vector
    (its loads are made exact by the samplers, not by the vector)."""
    try:
        kind, arg = parse_skew(skew)
    except ValueError as err:
        raise SpecError("skew", skew, str(err)) from None
    if kind in ("uniform", "balanced"):
        return kind, np.full(num_experts, 1.0 / num_experts)
    if kind == "zipf":
        return kind, zipf_probs(num_experts, arg)
    if kind == "dirichlet":
        rng = np.random.default_rng(seed)
        return kind, normalise(rng.dirichlet(np.full(num_experts, float(arg))))
    if kind == "explicit":
        if len(arg) != num_experts:
            raise SpecError("skew", skew, f"explicit vector needs {num_experts} entries, got {len(arg)}")
        return kind, normalise(np.array(arg))
    raise SpecError("skew", skew, "trace skews are read with moesim.routing.trace.load_trace")


def drift_steps(p_E: np.ndarray, drift: float, steps: int, rng: np.random.Generator) -> np.ndarray:
    """``steps`` drifted popularities around ``p_E``: ``p_E * exp(drift * Z)`` renormalised.

    Returns ``p_SE`` (float64, steps x E). ``drift = 0`` repeats the base vector.
    """
    if drift < 0:
        raise SpecError("drift", drift, "must be >= 0")
    if drift == 0:
        return np.repeat(p_E[None, :], steps, axis=0)
    w_SE = p_E[None, :] * np.exp(drift * rng.standard_normal((steps, p_E.size)))
    return w_SE / w_SE.sum(axis=1, keepdims=True)
