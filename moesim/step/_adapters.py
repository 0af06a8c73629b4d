"""THE ONE PLACE where the step model meets routing (issue 3), compute (issue 4) and comm (issue 5).

Every function here either forwards to the owning module's real API or, while that API is not
delivered yet, is a clearly marked *temporary* stand-in (``# ADAPTER(issue N)``) to be deleted
when it arrives. The step model (layer.py, inference.py, training.py, vectorized.py, the DES)
calls only these functions, so switching to the real APIs touches this file alone.

Legend: T tokens, E experts (or expert slots), G groups (local experts of one rank), R ranks,
N nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.comm.alltoall import all_to_all_time
from moesim.comm.collectives import collective_time
from moesim.comm.topology import Topology, build_topology
from moesim.comm.traffic import Traffic, uniform_traffic
from moesim.compute.gemm import gemm_time_arrays
from moesim.compute.grouped import grouped_gemm_time
from moesim.specs import HardwareProfile, ModelSpec


# ---- compute (issue 4) -------------------------------------------------------------------------
def gemm_s(hw: HardwareProfile, m, n, k, dtype: str):
    """GEMM time (s), scalars or broadcast arrays: moesim.compute.gemm (real API)."""
    m, n, k = (np.maximum(np.round(np.asarray(x, dtype=float)), 1.0) for x in (m, n, k))
    t, _, _ = gemm_time_arrays(hw, m, n, k, dtype)
    return float(t) if np.ndim(t) == 0 else t


def grouped_gemm_s(hw: HardwareProfile, m_per_group_G, n: int, k: int, dtype: str,
                   layout: str = "contiguous") -> float:
    """Grouped GEMM time (s) over per-group rows ``m_per_group_G`` (empty groups skipped)."""
    m_G = np.asarray(m_per_group_G, dtype=float)
    m_G = np.round(m_G[m_G > 0])  # NOTE: expected counts are fractional; kernels see whole rows
    if m_G.size == 0:
        return 0.0
    return float(grouped_gemm_time(hw, m_G, n, k, dtype, layout).time_s)


def expert_ffn_s(hw: HardwareProfile, model: ModelSpec, counts_G, dtype: str, ffn: int | None = None,
                 layout: str = "contiguous") -> float:
    """SwiGLU (or ReLU) expert FFN on one rank from per-local-expert token counts ``counts_G``:
    gate+up GEMM (n = 2F or F, k = D), then down (n = D, k = F), as grouped GEMMs."""
    f = ffn or model.moe.expert_ffn
    up_n = (model.ffn_matrices - 1) * f
    return (grouped_gemm_s(hw, counts_G, up_n, model.hidden, dtype, layout)
            + grouped_gemm_s(hw, counts_G, model.hidden, f, dtype, layout))


def dense_ffn_s(hw: HardwareProfile, model: ModelSpec, tokens: float, width: int, dtype: str) -> float:
    """A dense FFN of intermediate ``width`` (already divided by TP) over ``tokens`` tokens."""
    if tokens <= 0 or width <= 0:
        return 0.0
    up_n = (model.ffn_matrices - 1) * width
    return gemm_s(hw, tokens, up_n, model.hidden, dtype) + gemm_s(hw, tokens, model.hidden, width, dtype)


# ---- comm (issue 5) ----------------------------------------------------------------------------
def topology(hw: HardwareProfile, ranks: int, ranks_per_node: int) -> Topology:
    return build_topology(hw, ranks, min(ranks_per_node, ranks))


def a2a_s(topo: Topology, traffic: Traffic, mode: str, op: str) -> float:
    """All-to-all time (s) of one dispatch or combine: moesim.comm.alltoall (real API)."""
    if traffic.ranks <= 1:
        return 0.0
    return all_to_all_time(topo, traffic, mode, op).time_s


def expected_traffic(ranks: int, ranks_per_node: int, tokens_per_rank: float, slots: int, top_k: int,
                     bytes_per_token: float, routing: str, groups: int = 1, topk_groups: int = 1) -> Traffic:
    """Expected dispatch traffic, node-deduplicated: moesim.comm.traffic (real API)."""
    return uniform_traffic(ranks, ranks_per_node, max(int(round(tokens_per_rank)), 1), slots, top_k,
                           bytes_per_token, dedup="node", routing=routing, groups=groups,
                           topk_groups=topk_groups)


def collective_s(topo: Topology, kind: str, nbytes: float, ranks: int) -> float:
    """Ring all-reduce / all-gather / reduce-scatter of a ``nbytes`` buffer over ``ranks``
    consecutive ranks (hierarchical across domains): moesim.comm.collectives (real API)."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return float(collective_time(topo, kind, nbytes, ranks).time_s)


# ---- routing (issue 3) -------------------------------------------------------------------------
@dataclass(frozen=True)
class RankLoad:
    """Expected routed copies on the most loaded EP rank and its per-local-expert counts."""

    max_rank_copies: float
    mean_rank_copies: float
    busiest_counts_G: np.ndarray


def rank_load(*, tokens: float, num_experts: int, top_k: int, ep: int, redundant: int, skew: str,
              ranks_per_node: int = 8, n_groups: int = 1, topk_groups: int = 1, seed: int = 0) -> RankLoad:
    """Expected max over EP ranks of the routed token copies one rank computes (T tokens in all),
    and the per-slot copies on that rank: moesim.routing (real API, analytic engine). ``balanced`` (or one rank): exactly T k / ep each."""
    slots = num_experts + redundant
    per_rank = slots // ep
    mean = tokens * top_k / ep
    if skew == "balanced" or (ep == 1 and skew == "uniform"):
        return RankLoad(mean, mean, np.full(per_rank, mean / per_rank))
    stats = routing_stats(tokens=tokens, num_experts=num_experts, top_k=top_k, ep=ep, redundant=redundant,
                          skew=skew, ranks_per_node=ranks_per_node, n_groups=n_groups,
                          topk_groups=topk_groups, seed=seed)
    return RankLoad(float(stats.rank_tokens_max), float(stats.rank_tokens_mean),
                    np.asarray(stats.straggler_tokens_L, dtype=float))


def _routing_kwargs(*, tokens: float, num_experts: int, top_k: int, ep: int, redundant: int, skew: str,
                    ranks_per_node: int, n_groups: int, topk_groups: int) -> dict:
    """Arguments of moesim.routing.route / step_sampler (hot-expert replicas when redundant > 0)."""
    return dict(num_experts=num_experts, top_k=top_k, tokens=max(int(round(tokens)), 1), ep=ep,
                ranks_per_node=min(ranks_per_node, ep), skew=skew,
                placement="load_aware" if redundant else "contiguous", redundant_experts=redundant,
                n_groups=n_groups, topk_groups=topk_groups)


def routing_stats(*, seed: int = 0, ranks_per_node: int = 8, n_groups: int = 1, topk_groups: int = 1,
                  **kw):
    """RoutingStats of one step: moesim.routing.route (real API, cached by argument).

    NOTE: the analytic engine for uniform/balanced popularity (milliseconds); the Monte Carlo
    engine (64 steps) for other skews, where the analytic engine takes seconds per call today.
    """
    from moesim.routing.api import route

    engine = "analytic" if kw["skew"] in ("uniform", "balanced") else "montecarlo"
    return route(**_routing_kwargs(ranks_per_node=ranks_per_node, n_groups=n_groups,
                                   topk_groups=topk_groups, **kw), engine=engine, samples=64, seed=seed)


def step_sampler(*, seed: int = 0, ranks_per_node: int = 8, n_groups: int = 1, topk_groups: int = 1, **kw):
    """The routing engine's per-step sampler (``.sample(rng)`` -> StepSample) for the DES."""
    from moesim.routing.api import step_sampler as make

    return make(**_routing_kwargs(ranks_per_node=ranks_per_node, n_groups=n_groups,
                                  topk_groups=topk_groups, **kw), seed=seed)


def memory(model: ModelSpec, hw: HardwareProfile, par, **kw):
    """Memory footprint per device: moesim.compute.memory (real API)."""
    from moesim.compute.memory import memory_footprint

    return memory_footprint(model, hw, par, **kw)
