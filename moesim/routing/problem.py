"""``RoutingProblem``: the validated, resolved inputs both engines work from.

Legend: E experts, G groups, S popularity steps.

Capacity per physical slot (GShard/Switch): ``C = ceil(capacity_factor * T * k / E)`` copies,
T tokens in the step over the whole EP group, k top-k, E routed experts; ``None`` = dropless.
Expert-choice routing uses the same C (capacity_factor defaults to 1 there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.errors import SpecError
from moesim.routing.placement import Placement, place
from moesim.routing.popularity import base_popularity, normalise
from moesim.routing.trace import load_trace
from moesim.specs.workload import parse_skew

OVERFLOWS = ("drop", "reroute", "shared")
ROUTINGS = ("token_choice", "expert_choice")


@dataclass(frozen=True)
class RoutingProblem:
    """Everything an engine needs; build with :func:`build_problem`."""

    num_experts: int
    top_k: int
    tokens: int
    skew: str
    kind: str  # uniform, balanced, zipf, dirichlet, explicit, trace
    p_SE: np.ndarray  # popularity per step (one row unless a trace has several)
    drift: float  # log-normal per-step drift sigma (0 = static)
    capacity: int | None
    capacity_factor: float | None
    overflow: str
    routing: str
    n_groups: int
    topk_groups: int
    placement: Placement

    @property
    def ep(self) -> int:
        return self.placement.ep

    @property
    def group_E(self) -> np.ndarray:
        """Group of each expert: contiguous blocks of E / n_groups (DeepSeek-V3 layout)."""
        return np.arange(self.num_experts) // (self.num_experts // self.n_groups)

    @property
    def p_E(self) -> np.ndarray:
        """Mean popularity over steps."""
        return self.p_SE.mean(axis=0)

    @property
    def static(self) -> bool:
        """One popularity for every step (no trace steps, no drift)."""
        return self.p_SE.shape[0] == 1 and self.drift == 0


MAX_CAPACITY_FACTOR = 1e6  # any cf >= E/k is already dropless; this bound keeps C an exact integer


def _check_ints(num_experts, top_k, tokens, n_groups, topk_groups):
    if num_experts < 1:
        raise SpecError("num_experts", num_experts, "must be >= 1")
    if not 1 <= top_k <= num_experts:
        raise SpecError("top_k", top_k, f"must lie in [1, num_experts={num_experts}]")
    if tokens < 1:
        raise SpecError("tokens", tokens, "must be >= 1")
    if n_groups < 1 or num_experts % n_groups:
        raise SpecError("n_groups", n_groups, f"must be >= 1 and divide num_experts={num_experts}")
    if not 1 <= topk_groups <= n_groups:
        raise SpecError("topk_groups", topk_groups, f"must lie in [1, n_groups={n_groups}]")
    if top_k > topk_groups * (num_experts // n_groups):
        raise SpecError("top_k", top_k, f"must be <= the {topk_groups * (num_experts // n_groups)} "
                        f"experts in topk_groups={topk_groups} groups")


def _popularity(skew: str, num_experts: int, top_k: int, seed: int) -> tuple[str, np.ndarray]:
    try:
        kind, arg = parse_skew(skew)
    except ValueError as err:
        raise SpecError("skew", skew, str(err)) from None
    if kind == "trace":
        trace = load_trace(arg, num_experts=num_experts, top_k=top_k)
        p_SE = np.stack([normalise(row, field=f"trace {arg}") for row in trace.popularity_SE()])
        return kind, p_SE
    kind, p_E = base_popularity(skew, num_experts, seed)
    return kind, p_E[None, :]


def build_problem(num_experts: int, top_k: int, tokens: int, *, ep: int = 1, ranks_per_node: int = 8,
                  skew: str = "uniform", capacity_factor: float | None = None, overflow: str = "drop",
                  placement: str = "contiguous", redundant_experts: int = 0, n_groups: int = 1,
                  topk_groups: int = 1, routing: str = "token_choice", drift: float = 0.0,
                  seed: int = 0) -> RoutingProblem:
    """Validate and resolve the arguments of :func:`moesim.routing.route` (SpecError on bad input)."""
    _check_ints(num_experts, top_k, tokens, n_groups, topk_groups)
    if capacity_factor is not None and not (0 < capacity_factor <= MAX_CAPACITY_FACTOR):
        # NOTE: from cf = E/k on, a slot holds every token (C >= T): larger values are dropless too,
        # and absurd ones (1e308) overflow the integer capacity
        raise SpecError("capacity_factor", capacity_factor,
                        f"must lie in (0, {MAX_CAPACITY_FACTOR:g}] (None = dropless)")
    if ep > ranks_per_node > 0 and ep % ranks_per_node:
        raise SpecError("ranks_per_node", ranks_per_node, f"must divide ep={ep} (whole nodes of EP ranks)")
    if overflow not in OVERFLOWS:
        raise SpecError("overflow", overflow, f"allowed: {', '.join(OVERFLOWS)}")
    if routing not in ROUTINGS:
        raise SpecError("routing", routing, f"allowed: {', '.join(ROUTINGS)}")
    if not drift >= 0:
        raise SpecError("drift", drift, "must be >= 0")
    kind, p_SE = _popularity(skew, num_experts, top_k, seed)
    if routing == "expert_choice" and capacity_factor is None:
        capacity_factor = 1.0
    capacity = None if capacity_factor is None else math.ceil(capacity_factor * tokens * top_k / num_experts - 1e-9)
    layout = place(num_experts, ep, ranks_per_node, placement, redundant_experts, p_SE.mean(axis=0))
    return RoutingProblem(num_experts, top_k, tokens, skew, kind, p_SE, float(drift), capacity,
                          capacity_factor, overflow, routing, n_groups, topk_groups, layout)
