"""Monte Carlo engine: sample steps of routing with the Numba kernels and average them.

Legend: T tokens, E experts, G groups, P physical slots, R EP ranks, N nodes, L slots per rank.

:class:`StepSampler` is also the per-step entry point for the layer DES: build it once from a
:class:`~moesim.routing.problem.RoutingProblem`, then call ``sampler.sample(rng)`` every
simulated step for that step's per-rank expert counts (``R x L``) and traffic (``R x R``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from moesim.progress import bar
from moesim.routing import kernels, tables
from moesim.routing.popularity import drift_steps
from moesim.routing.problem import RoutingProblem
from moesim.routing.stats import RoutingStats

_POLICY = {"drop": kernels.DROP, "reroute": kernels.REROUTE, "shared": kernels.SHARED}
# NOTE: below this many tokens the parallel launch costs more than it saves.
PARALLEL_MIN_TOKENS = 65536


_NO_CHOICES = np.zeros((0, 1), dtype=np.int64)


@dataclass(frozen=True)
class StepSample:
    """One sampled step. Arrays int64."""

    load_P: np.ndarray  # copies each slot processed
    traffic_RR: np.ndarray  # copies source rank -> destination rank
    dedup_RN: np.ndarray  # distinct tokens source rank -> node
    counters_C: np.ndarray  # dropped, rerouted, shared, overflowed copies (kernels.C_*)
    slot_rank_P: np.ndarray

    @property
    def rank_expert_counts_RL(self) -> np.ndarray:
        """Copies per slot, one row per rank (slots in index order within the rank)."""
        R = int(self.traffic_RR.shape[0])
        order = np.argsort(self.slot_rank_P, kind="stable")
        return self.load_P[order].reshape(R, -1)

    @property
    def rank_tokens_R(self) -> np.ndarray:
        return np.bincount(self.slot_rank_P, weights=self.load_P, minlength=self.traffic_RR.shape[0])


def _tables(p_E: np.ndarray, G: int) -> tuple[np.ndarray, ...]:
    """:func:`tables.sampling_tables` as read-only arrays (one compiled kernel signature)."""
    out = tables.sampling_tables(p_E, G)
    for a in out:
        a.setflags(write=False)
    return out


@functools.lru_cache(maxsize=256)
def _tables_by_value(p_bytes: bytes, G: int) -> tuple[np.ndarray, ...]:
    return _tables(np.frombuffer(p_bytes), G)


def cached_tables(p_E: np.ndarray, G: int) -> tuple[np.ndarray, ...]:
    """:func:`tables.sampling_tables`, cached by value (read-only arrays)."""
    return _tables_by_value(np.ascontiguousarray(p_E, dtype=np.float64).tobytes(), int(G))


class StepSampler:
    """Samples single steps of a routing problem (fast: Numba, one call per step)."""

    def __init__(self, problem: RoutingProblem, threads: int | None = None):
        self.problem = problem
        self._tables = {}
        self._chunks = 4 * (threads or numba.get_num_threads())
        pl = problem.placement
        self._placement = (pl.slot_for_RE, pl.slot_rank_P, pl.slot_node_P, pl.num_nodes)

    def _tables_for(self, p_E: np.ndarray, key):
        if key is not None and key in self._tables:
            return self._tables[key]
        G = self.problem.n_groups
        t = cached_tables(p_E, G) if key is not None else _tables(p_E, G)
        if key is not None:
            self._tables[key] = t
        return t

    def _popularity(self, rng: np.random.Generator, step: int | None):
        pb = self.problem
        s = int(rng.integers(pb.p_SE.shape[0])) if step is None else step % pb.p_SE.shape[0]
        if pb.drift == 0:
            return self._tables_for(pb.p_SE[s], s)
        return self._tables_for(drift_steps(pb.p_SE[s], pb.drift, 1, rng)[0], None)

    def sample(self, rng: np.random.Generator, step: int | None = None) -> StepSample:
        """Route one step. ``step`` picks the trace step (default: a random one)."""
        pb, pl = self.problem, self.problem.placement
        seed = int(rng.integers(0, 2**63 - 1))
        if pb.routing == "expert_choice":
            out = kernels.expert_choice_step(pb.tokens, pl.ep, pb.num_experts, pb.capacity, *self._placement,
                                             seed)
            return StepSample(*out, pl.slot_rank_P)
        common = (pb.tokens, pb.top_k, pl.ep, *self._popularity(rng, step), pb.topk_groups, *self._placement)
        mode = kernels.MODE_BALANCED if pb.kind == "balanced" else kernels.MODE_SAMPLED
        if pb.capacity is None and pb.tokens >= PARALLEL_MIN_TOKENS:
            out = kernels.route_parallel(*common, mode, seed, self._chunks)
        else:
            cap = -1 if pb.capacity is None else pb.capacity
            out = kernels.route_serial(*common, cap, _POLICY[pb.overflow], mode, seed, _NO_CHOICES)
        return StepSample(*out, pl.slot_rank_P)


def route_choices(problem: RoutingProblem, prefs_TX: np.ndarray) -> StepSample:
    """Route given preference lists (tokens x X int, -1 padded; the first k entries are the
    token's choices, the rest its reroute order) with the problem's capacity, overflow and
    placement: deterministic, for hand-worked cases and per-token traces."""
    pb, pl = problem, problem.placement
    prefs_TX = np.ascontiguousarray(prefs_TX, dtype=np.int64)
    cap = -1 if pb.capacity is None else pb.capacity
    out = kernels.route_serial(prefs_TX.shape[0], pb.top_k, pl.ep, *_tables(pb.p_SE[0], pb.n_groups),
                               pb.topk_groups, pl.slot_for_RE, pl.slot_rank_P, pl.slot_node_P,
                               pl.num_nodes, cap, _POLICY[pb.overflow], kernels.MODE_GIVEN, 0, prefs_TX)
    return StepSample(*out, pl.slot_rank_P)


def sample_step(problem: RoutingProblem, rng: np.random.Generator) -> StepSample:
    """One step of routing (convenience; reuse a :class:`StepSampler` in loops)."""
    return StepSampler(problem).sample(rng)


def _empirical(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(x.astype(np.float64))
    return v, np.arange(1, v.size + 1) / v.size


def run_montecarlo(problem: RoutingProblem, samples: int = 64, seed: int = 0,
                   progress: bool = False) -> RoutingStats:
    """Average ``samples`` sampled steps into a :class:`RoutingStats` (trace steps in turn);
    ``progress``: a bar on stderr over the samples (an observer: no number changes)."""
    pb, pl = problem, problem.placement
    rng = np.random.default_rng(seed)
    sampler = StepSampler(pb)
    R, L = pl.ep, pl.slots_per_rank
    acc = {k: 0.0 for k in ("load_P", "traffic", "dedup", "counters", "active", "straggler")}
    rank_max, expert_max = np.empty(samples), np.empty(samples)
    for i in bar(range(samples), total=samples, desc="Monte Carlo routing samples", enabled=progress):
        st = sampler.sample(rng, step=i)
        rank_R = np.bincount(pl.slot_rank_P, weights=st.load_P, minlength=R)
        expert_E = np.bincount(pl.slot_expert_P, weights=st.load_P, minlength=pb.num_experts)
        r_max = int(np.argmax(rank_R))
        rank_max[i], expert_max[i] = rank_R[r_max], expert_E.max()
        acc["load_P"] = acc["load_P"] + st.load_P
        acc["traffic"] = acc["traffic"] + st.traffic_RR
        acc["dedup"] = acc["dedup"] + st.dedup_RN
        acc["counters"] = acc["counters"] + st.counters_C
        acc["active"] = acc["active"] + np.bincount(pl.slot_rank_P, weights=st.load_P > 0, minlength=R)
        acc["straggler"] = acc["straggler"] + np.sort(st.load_P[pl.slot_rank_P == r_max])[::-1][:L]
    mean = {k: np.asarray(v, dtype=np.float64) / samples for k, v in acc.items()}
    load_P = mean["load_P"]
    copies = pb.tokens * pb.top_k
    dropped_share = mean["counters"][kernels.C_DROPPED] / (pb.tokens if pb.routing == "expert_choice" else copies)
    rv, rc = _empirical(rank_max)
    ev, ec = _empirical(expert_max)
    return RoutingStats(
        engine="montecarlo", routing=pb.routing, skew=pb.skew, num_experts=pb.num_experts,
        top_k=pb.top_k, tokens=pb.tokens, ep=R, ranks_per_node=pl.ranks_per_node,
        capacity=pb.capacity, overflow=pb.overflow, placement=pl.policy, samples=samples,
        expert_tokens_E=np.bincount(pl.slot_expert_P, weights=load_P, minlength=pb.num_experts),
        slot_tokens_P=load_P, slot_rank_P=pl.slot_rank_P, rank_node_R=pl.rank_node_R,
        rank_tokens_R=np.bincount(pl.slot_rank_P, weights=load_P, minlength=R),
        rank_tokens_max=float(rank_max.mean()), expert_tokens_max=float(expert_max.mean()),
        straggler_tokens_L=mean["straggler"], active_experts_R=mean["active"],
        traffic_RR=mean["traffic"], dedup_tokens_RN=mean["dedup"],
        drop_fraction=float(dropped_share),
        reroute_fraction=float(mean["counters"][kernels.C_REROUTED] / copies),
        shared_fraction=float(mean["counters"][kernels.C_SHARED] / copies),
        overflow_fraction=float(mean["counters"][kernels.C_OVERFLOW] / copies),
        rank_max_values_X=rv, rank_max_cdf_X=rc, expert_max_values_X=ev, expert_max_cdf_X=ec,
    )
