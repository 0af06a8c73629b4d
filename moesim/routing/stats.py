"""``RoutingStats``: what a routing engine predicts for one step (expectations over steps).

Legend: E logical experts, P physical slots, R EP ranks, N nodes, L slots per rank,
X points of a tabulated distribution.

Loads count token *copies* (one per (token, expert) pair) that an expert slot processes.
"Max" quantities are the straggler of one step (max over ranks, or over experts) and their
distribution over steps is kept as a CDF, so percentiles are methods:
``stats.rank_max_percentile(99)`` is the p99 over steps of the most-loaded rank's copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _percentile(values_X: np.ndarray, cdf_X: np.ndarray, q: float) -> float:
    """Smallest tabulated value whose CDF reaches ``q`` percent."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    i = int(np.searchsorted(cdf_X, q / 100.0 - 1e-12, side="left"))
    return float(values_X[min(i, values_X.size - 1)])


@dataclass(frozen=True)
class RoutingStats:
    """Expected routing of one step. Arrays are float64 means over steps."""

    engine: str  # "analytic" or "montecarlo"
    routing: str  # "token_choice" or "expert_choice"
    skew: str
    num_experts: int
    top_k: int
    tokens: int
    ep: int
    ranks_per_node: int
    capacity: int | None  # copies per slot; None = dropless
    overflow: str
    placement: str
    samples: int  # Monte Carlo steps sampled (0 for analytic)
    expert_tokens_E: np.ndarray  # accepted copies per logical expert
    slot_tokens_P: np.ndarray  # accepted copies per physical slot
    slot_rank_P: np.ndarray  # rank of each slot (int)
    rank_node_R: np.ndarray  # node of each rank (int)
    rank_tokens_R: np.ndarray  # copies each rank's experts process
    rank_tokens_max: float  # E[max over ranks of the rank load]
    expert_tokens_max: float  # E[max over logical experts of the expert load]
    straggler_tokens_L: np.ndarray  # per-slot copies on the step's most-loaded rank, sorted descending
    active_experts_R: np.ndarray  # expected non-empty slots per rank
    traffic_RR: np.ndarray  # copies sent from source rank (row) to destination rank (column)
    dedup_tokens_RN: np.ndarray  # distinct tokens a source rank sends to each node
    drop_fraction: float  # share of the T*k copies no expert processes (expert_choice: tokens no expert took)
    reroute_fraction: float  # share of copies served by a backup (next-preferred) expert
    shared_fraction: float  # share of copies left to the shared experts (overflow='shared')
    overflow_fraction: float  # share of copies whose first-choice slot was full
    rank_max_values_X: np.ndarray = field(repr=False)
    rank_max_cdf_X: np.ndarray = field(repr=False)
    expert_max_values_X: np.ndarray = field(repr=False)
    expert_max_cdf_X: np.ndarray = field(repr=False)

    def __post_init__(self):
        # NOTE: results are cached by argument (routing.api) and shared: their arrays are read-only
        for value in self.__dict__.values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    # ---- derived --------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return int(self.rank_node_R.max()) + 1

    @property
    def routed_copies(self) -> float:
        """Copies processed by routed experts (including rerouted ones)."""
        return float(self.slot_tokens_P.sum())

    @property
    def rank_tokens_mean(self) -> float:
        return float(self.rank_tokens_R.mean())

    @property
    def rank_imbalance(self) -> float:
        """E[max rank load] / mean rank load (1 = perfectly balanced)."""
        mean = self.rank_tokens_mean
        return self.rank_tokens_max / mean if mean > 0 else 1.0

    @property
    def expert_imbalance(self) -> float:
        """E[max expert load] / mean expert load."""
        mean = float(self.expert_tokens_E.mean())
        return self.expert_tokens_max / mean if mean > 0 else 1.0

    @property
    def active_experts_per_rank(self) -> float:
        """Expected non-empty expert slots per rank, averaged over ranks."""
        return float(self.active_experts_R.mean())

    @property
    def internode_fraction(self) -> float:
        """Share of dispatched copies whose destination rank is on another node."""
        total = self.traffic_RR.sum()
        if total <= 0:
            return 0.0
        cross_RR = self.rank_node_R[:, None] != self.rank_node_R[None, :]
        return float(self.traffic_RR[cross_RR].sum() / total)

    def rank_max_percentile(self, q: float) -> float:
        """``q``-th percentile (0-100) over steps of the most-loaded rank's copies."""
        return _percentile(self.rank_max_values_X, self.rank_max_cdf_X, q)

    def expert_max_percentile(self, q: float) -> float:
        """``q``-th percentile (0-100) over steps of the most-loaded expert's copies."""
        return _percentile(self.expert_max_values_X, self.expert_max_cdf_X, q)

    def traffic_bytes_RR(self, bytes_per_token: float) -> np.ndarray:
        """Dispatch bytes source -> destination: copies x ``bytes_per_token`` (B)."""
        return self.traffic_RR * float(bytes_per_token)

    def dedup_bytes_RN(self, bytes_per_token: float) -> np.ndarray:
        """Node-deduplicated dispatch bytes source rank -> node (B)."""
        return self.dedup_tokens_RN * float(bytes_per_token)

    def summary(self) -> dict:
        """The scalar figures (what the CLI prints)."""
        return {
            "engine": self.engine, "routing": self.routing, "skew": self.skew,
            "num_experts": self.num_experts, "top_k": self.top_k, "tokens": self.tokens,
            "ep": self.ep, "ranks_per_node": self.ranks_per_node, "num_nodes": self.num_nodes,
            "capacity": self.capacity, "overflow": self.overflow, "placement": self.placement,
            "samples": self.samples,
            "drop_fraction": self.drop_fraction, "reroute_fraction": self.reroute_fraction,
            "shared_fraction": self.shared_fraction, "overflow_fraction": self.overflow_fraction,
            "rank_imbalance": self.rank_imbalance, "expert_imbalance": self.expert_imbalance,
            "rank_tokens_mean": self.rank_tokens_mean, "rank_tokens_max": self.rank_tokens_max,
            "rank_tokens_p50": self.rank_max_percentile(50),
            "rank_tokens_p99": self.rank_max_percentile(99),
            "expert_tokens_mean": float(self.expert_tokens_E.mean()),
            "expert_tokens_max": self.expert_tokens_max,
            "expert_tokens_p50": self.expert_max_percentile(50),
            "expert_tokens_p99": self.expert_max_percentile(99),
            "active_experts_per_rank": self.active_experts_per_rank,
            "internode_fraction": self.internode_fraction,
        }

    def to_dict(self) -> dict:
        """Plain-JSON form: the summary plus the vectors and matrices as lists."""
        d = self.summary()
        d.update({
            "expert_tokens": self.expert_tokens_E.tolist(),
            "rank_tokens": self.rank_tokens_R.tolist(),
            "straggler_tokens": self.straggler_tokens_L.tolist(),
            "active_experts": self.active_experts_R.tolist(),
            "traffic": self.traffic_RR.tolist(),
            "dedup_tokens": self.dedup_tokens_RN.tolist(),
        })
        return d
