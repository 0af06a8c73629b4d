"""Where the step model meets the compute, comm and routing models: thin forwards to their APIs.

Every function prices one operation with the owning module's model (moesim.compute.gemm and
grouped, moesim.comm.alltoall / collectives / traffic, moesim.routing, moesim.compute.memory), so
the layer model (moesim/step/layer.py) and the layer DES never re-derive a time or a byte count.

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


# ---- compute -------------------------------------------------------------------------
def gemm_s(hw: HardwareProfile, m, n, k, dtype: str):
    """GEMM time (s), scalars or broadcast arrays: moesim.compute.gemm."""
    m, n, k = (np.maximum(np.round(np.asarray(x, dtype=float)), 1.0) for x in (m, n, k))
    t, _, _ = gemm_time_arrays(hw, m, n, k, dtype)
    return float(t) if np.ndim(t) == 0 else t


def grouped_gemm_s(hw: HardwareProfile, m_per_group_G, n: int, k: int, dtype: str,
                   layout: str = "contiguous", weight_dtype: str | None = None) -> float:
    """Grouped GEMM time (s) over per-group rows ``m_per_group_G`` (empty groups skipped);
    ``weight_dtype``: weights stored in another format than the math ``dtype``."""
    m_G = np.asarray(m_per_group_G, dtype=float)
    m_G = np.round(m_G[m_G > 0])  # NOTE: expected counts are fractional; kernels see whole rows
    if m_G.size == 0:
        return 0.0
    return float(grouped_gemm_time(hw, m_G, n, k, dtype, layout, weight_dtype=weight_dtype).time_s)


def expert_ffn_s(hw: HardwareProfile, model: ModelSpec, counts_G, dtype: str, ffn: int | None = None,
                 layout: str = "contiguous", weight_dtype: str | None = None) -> float:
    """SwiGLU (or ReLU) expert FFN on one rank from per-local-expert token counts ``counts_G``:
    gate+up GEMM (n = 2F or F, k = D), then down (n = D, k = F), as grouped GEMMs; math at
    ``dtype``, weights at ``weight_dtype`` when given (moesim/step/setup.py ``expert_gemm_dtypes``)."""
    f = ffn or model.moe.expert_ffn
    up_n = (model.ffn_matrices - 1) * f
    return (grouped_gemm_s(hw, counts_G, up_n, model.hidden, dtype, layout, weight_dtype)
            + grouped_gemm_s(hw, counts_G, model.hidden, f, dtype, layout, weight_dtype))


def dense_ffn_s(hw: HardwareProfile, model: ModelSpec, tokens: float, width: int, dtype: str) -> float:
    """A dense FFN of intermediate ``width`` (already divided by TP) over ``tokens`` tokens."""
    if tokens <= 0 or width <= 0:
        return 0.0
    up_n = (model.ffn_matrices - 1) * width
    return gemm_s(hw, tokens, up_n, model.hidden, dtype) + gemm_s(hw, tokens, model.hidden, width, dtype)


# ---- comm ----------------------------------------------------------------------------
def topology(hw: HardwareProfile, ranks: int, ranks_per_node: int) -> Topology:
    return build_topology(hw, ranks, min(ranks_per_node, ranks))


def a2a_s(topo: Topology, traffic: Traffic, mode: str, op: str) -> float:
    """All-to-all time (s) of one dispatch or combine: moesim.comm.alltoall."""
    if traffic.ranks <= 1:
        return 0.0
    return all_to_all_time(topo, traffic, mode, op).time_s


def expected_traffic(ranks: int, ranks_per_node: int, tokens_per_rank: float, slots: int, top_k: int,
                     bytes_per_token: float, routing: str, groups: int = 1, topk_groups: int = 1) -> Traffic:
    """Expected dispatch traffic, node-deduplicated: moesim.comm.traffic."""
    return uniform_traffic(ranks, ranks_per_node, max(int(round(tokens_per_rank)), 1), slots, top_k,
                           bytes_per_token, dedup="node", routing=routing, groups=groups,
                           topk_groups=topk_groups)


def collective_s(topo: Topology, kind: str, nbytes: float, ranks: int) -> float:
    """All-reduce / all-gather / reduce-scatter of a ``nbytes`` buffer over ``ranks`` consecutive
    ranks (hierarchical across domains), at the fastest of ring and direct per stage
    (moesim.comm.collectives ``auto``: the libraries' tuners)."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return float(collective_time(topo, kind, nbytes, ranks, algorithm="auto").time_s)


# ---- routing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankLoad:
    """Expected routed copies on the most loaded EP rank and its per-local-expert counts, after the
    capacity limit: ``busiest_counts_G`` are the rows that rank's experts process (dropped copies
    are not there; rerouted ones are, where they land). The fractions are shares of the T x k
    copies: dropped, served by a next-preferred expert, and left to the shared-expert backup."""

    max_rank_copies: float
    mean_rank_copies: float
    busiest_counts_G: np.ndarray
    drop_fraction: float = 0.0
    reroute_fraction: float = 0.0
    backup_fraction: float = 0.0


def _route_args(model: ModelSpec, deployment, skew: str, tokens: float) -> dict:
    """Arguments of moesim.routing.route / step_sampler for ``tokens`` over the EP group."""
    m = model.moe
    return dict(num_experts=m.num_experts, top_k=m.top_k, tokens=max(int(round(tokens)), 1), ep=deployment.ep,
                ranks_per_node=min(deployment.domain_size, deployment.ep), skew=skew,
                capacity_factor=deployment.capacity_factor, overflow=deployment.overflow,
                placement=deployment.expert_placement, redundant_experts=deployment.redundant_experts,
                n_groups=m.n_groups, topk_groups=m.topk_groups)


def rank_load(model: ModelSpec, deployment, skew: str, tokens: float, seed: int = 0) -> RankLoad:
    """``RankLoad`` of one MoE layer with ``tokens`` tokens over the whole EP group, from the
    routing engine (moesim.routing). Dropless ``balanced`` routing (or uniform on one rank):
    exactly T k / ep copies per rank, spread evenly over its slots."""
    m = model.moe
    slots = m.num_experts + deployment.redundant_experts
    per_rank = slots // deployment.ep
    mean = tokens * m.top_k / deployment.ep
    if deployment.capacity_factor is None and (skew == "balanced" or (deployment.ep == 1 and skew == "uniform")):
        return RankLoad(mean, mean, np.full(per_rank, mean / per_rank))
    stats = routing_stats(model, deployment, skew, tokens, seed=seed)
    return RankLoad(float(stats.rank_tokens_max), float(stats.rank_tokens_mean),
                    np.asarray(stats.straggler_tokens_L, dtype=float), float(stats.drop_fraction),
                    float(stats.reroute_fraction), float(stats.shared_fraction))


def routing_stats(model: ModelSpec, deployment, skew: str, tokens: float, seed: int = 0):
    """RoutingStats of one step: moesim.routing.route (cached there by argument).

    NOTE: the analytic engine for uniform/balanced popularity (milliseconds); the Monte Carlo
    engine (64 steps) for other skews, or where the analytic engine cannot integrate the case.
    """
    from moesim.errors import MoesimError
    from moesim.routing.api import route

    kw = _route_args(model, deployment, skew, tokens)
    if skew in ("uniform", "balanced"):
        try:
            return route(**kw, engine="analytic", samples=64, seed=seed)
        except (NotImplementedError, MoesimError):
            pass
    return route(**kw, engine="montecarlo", samples=64, seed=seed)


def step_sampler(model: ModelSpec, deployment, skew: str, tokens: float, seed: int = 0):
    """The routing engine's per-step sampler (``.sample(rng)`` -> StepSample) for the DES."""
    from moesim.routing.api import step_sampler as make

    kw = _route_args(model, deployment, skew, tokens)
    return make(**kw, seed=seed)


def memory(model: ModelSpec, hw: HardwareProfile, par, **kw):
    """Memory footprint per device: moesim.compute.memory."""
    from moesim.compute.memory import memory_footprint

    return memory_footprint(model, hw, par, **kw)
