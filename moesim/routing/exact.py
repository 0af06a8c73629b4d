"""Routing whose step is known exactly: ``balanced`` (a deterministic pattern) and expert choice.

Legend: E experts, P physical slots, R EP ranks, N nodes, Q source classes.

* ``balanced``: token i prefers experts ``(i*k + j) mod E`` (kernels.py), so the step is
  routed by the deterministic kernel; it is periodic in the tokens (see
  :func:`_balanced_counts`), so one period and the remainder are enough;
* expert choice: each expert takes a uniformly random C-subset of the T tokens (closed form).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from moesim.routing import kernels
from moesim.routing.problem import RoutingProblem

# NOTE: balanced steps with drops are routed on at most this many tokens, then scaled to T.
BALANCED_SUB_TOKENS = 1 << 16


def source_tokens(pb: RoutingProblem):
    """Source classes (same slot for every expert) and integer tokens per source / class:
    ``(rows_QE, class_R, tokens_R, tokens_Q)``."""
    pl = pb.placement
    R, T = pl.ep, pb.tokens
    rows_QE, class_R = pl.source_classes
    tokens_R = T // R + (np.arange(R) < T % R)
    tokens_Q = np.bincount(class_R, weights=tokens_R, minlength=rows_QE.shape[0]).astype(np.int64)
    return rows_QE, class_R, tokens_R, tokens_Q


def _balanced_route(pb: RoutingProblem, tokens: int, cap: int):
    """The deterministic balanced kernel on the first ``tokens`` tokens (load, traffic, dedup, counters)."""
    from moesim.routing.montecarlo import _NO_CHOICES, _POLICY, cached_tables

    pl = pb.placement
    return kernels.route_serial(tokens, pb.top_k, pl.ep, *cached_tables(pb.p_SE[0], pb.n_groups),
                                pb.topk_groups, pl.slot_for_RE, pl.slot_rank_P, pl.slot_node_P,
                                pl.num_nodes, cap, _POLICY[pb.overflow], kernels.MODE_BALANCED, 0,
                                _NO_CHOICES)


def _balanced_counts(pb: RoutingProblem):
    """Exact balanced step: token i's copies depend on i only through ``i mod R`` (its source)
    and ``i*k mod E`` (its experts), so the step is periodic with period
    ``lcm(R, E / gcd(k, E))`` tokens; route one period and the remainder and add. With a
    capacity that some slot would exceed (order then matters), route at most
    BALANCED_SUB_TOKENS tokens with the capacity and scale to T."""
    T, E, k, R = pb.tokens, pb.num_experts, pb.top_k, pb.placement.ep
    period = math.lcm(R, E // math.gcd(k, E))
    q, r = divmod(T, period)
    parts = [(q, _balanced_route(pb, period, -1))] if q else []
    if r:
        parts.append((1, _balanced_route(pb, r, -1)))
    out = [sum(n * part[i] for n, part in parts) for i in range(4)]
    if pb.capacity is None or out[0].max() <= pb.capacity:
        return out, 1.0  # no slot ever reaches its capacity: the capacity changes nothing
    sub = min(T, BALANCED_SUB_TOKENS)
    sub_pb = dataclasses.replace(pb, tokens=sub)
    return list(_balanced_route(sub_pb, sub, pb.capacity)), T / sub


def balanced_step(pb: RoutingProblem) -> dict:
    """``balanced``: no randomness, so the step is routed by the deterministic kernel (see
    :func:`_balanced_counts`); expert loads are exactly T*k/E (+-1)."""
    (load, traffic, dedup, counters), scale = _balanced_counts(pb)
    T = pb.tokens
    pl = pb.placement
    load_P = load * scale
    rank_R = np.bincount(pl.slot_rank_P, weights=load_P, minlength=pl.ep)
    r_star = int(np.argmax(rank_R))
    expert_E = np.bincount(pl.slot_expert_P, weights=load_P, minlength=pb.num_experts)
    c = counters * scale / (T * pb.top_k)
    return dict(load_P=load_P, rank_max=rank_R.max(), rank_vals=np.array([rank_R.max()]),
                rank_cdf=np.array([1.0]), exp_max=expert_E.max(), exp_vals=np.array([expert_E.max()]),
                exp_cdf=np.array([1.0]), straggler=np.sort(load_P[pl.slot_rank_P == r_star])[::-1],
                active_R=np.bincount(pl.slot_rank_P, weights=load_P > 0, minlength=pl.ep).astype(float),
                traffic_RR=traffic * scale, dedup_RN=dedup * scale,
                drop=c[0], reroute=c[1], shared=c[2], overflow=c[3])


def expert_choice_stats(pb: RoutingProblem):
    """Expert choice: each expert takes a uniformly random C-subset of the T tokens (see
    kernels.expert_choice_step), so loads are exactly C per expert, split over replicas by
    source, and a token is served by nobody with probability (1 - C/T)^E."""
    from moesim.routing.stats import RoutingStats

    pl = pb.placement
    T, E, R = pb.tokens, pb.num_experts, pl.ep
    C = min(pb.capacity, T)
    rows_QE, class_R, tokens_R, tokens_Q = source_tokens(pb)
    load_P = np.zeros(pl.num_slots)
    traffic_RR = np.zeros((R, R))
    dedup_RN = np.zeros((R, pl.num_nodes))
    for s in range(R):
        slots = rows_QE[class_R[s]]
        share = tokens_R[s] / T
        np.add.at(load_P, slots, C * share)
        np.add.at(traffic_RR[s], pl.slot_rank_P[slots], C * share)
        per_node = np.bincount(pl.slot_node_P[slots], minlength=pl.num_nodes)
        dedup_RN[s] = tokens_R[s] * (1.0 - (1.0 - C / T) ** per_node)
    rank_R = np.bincount(pl.slot_rank_P, weights=load_P, minlength=R)
    expert_E = np.bincount(pl.slot_expert_P, weights=load_P, minlength=E)
    r_star = int(np.argmax(rank_R))
    one = np.array([1.0])
    return RoutingStats(
        engine="analytic", routing=pb.routing, skew=pb.skew, num_experts=E, top_k=pb.top_k,
        tokens=T, ep=R, ranks_per_node=pl.ranks_per_node, capacity=pb.capacity,
        overflow=pb.overflow, placement=pl.policy, samples=0, expert_tokens_E=expert_E,
        slot_tokens_P=load_P, slot_rank_P=pl.slot_rank_P, rank_node_R=pl.rank_node_R,
        rank_tokens_R=rank_R, rank_tokens_max=float(rank_R.max()), expert_tokens_max=float(expert_E.max()),
        straggler_tokens_L=np.sort(load_P[pl.slot_rank_P == r_star])[::-1],
        active_experts_R=np.bincount(pl.slot_rank_P, weights=load_P > 0, minlength=R).astype(float),
        traffic_RR=traffic_RR, dedup_tokens_RN=dedup_RN,
        drop_fraction=float((1.0 - C / T) ** E), reroute_fraction=0.0, shared_fraction=0.0,
        overflow_fraction=0.0, rank_max_values_X=np.array([rank_R.max()]), rank_max_cdf_X=one,
        expert_max_values_X=np.array([expert_E.max()]), expert_max_cdf_X=one,
    )
