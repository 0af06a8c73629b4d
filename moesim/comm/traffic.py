"""All-to-all traffic: who sends how many bytes to whom, with per-rank and per-node deduplication.

Legend: T tokens, K top-k, E experts, R ranks, N nodes (scale-up domains), D hidden.

A ``Traffic`` holds *expected* bytes of one dispatch:

- ``bytes_RR[s, d]``: bytes rank ``s`` delivers to rank ``d`` (diagonal = the rank's own share,
  which never crosses a link). With ``dedup`` ``rank`` or ``node`` a token is counted once per
  destination rank it has an expert on; with ``none`` once per (token, expert) copy.
- ``node_bytes_RN[s, n]``: bytes rank ``s`` sends to node ``n`` when each token crosses the
  scale-out network once per destination node (``dedup="node"``), own node included (that share
  stays inside the node); ``None`` otherwise.
- ``peers_R[s]``: expected number of other ranks that receive at least one token from ``s``
  (what per-peer overheads are counted over).

Expert placement is contiguous: rank ``r`` holds experts ``[r E/R, (r+1) E/R)``; nodes hold
``ranks_per_node`` consecutive ranks. This module is the independent closed-form check that the
routing engine's traffic matrices are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Literal

import numpy as np

from moesim.errors import SpecError

Dedup = Literal["none", "rank", "node"]
Routing = Literal["uniform", "balanced"]
DEDUPS: tuple[str, ...] = ("none", "rank", "node")


@dataclass(frozen=True)
class Traffic:
    """Expected bytes of one all-to-all dispatch (see the module docstring for each field)."""

    bytes_RR: np.ndarray
    ranks_per_node: int
    node_bytes_RN: np.ndarray | None = None
    peers_R: np.ndarray | None = None

    def __post_init__(self):
        b = np.asarray(self.bytes_RR, dtype=float)
        if b.ndim != 2 or b.shape[0] != b.shape[1]:
            raise SpecError("traffic.bytes_RR", b.shape, "must be a square rank x rank matrix")
        if not np.all(np.isfinite(b)) or np.any(b < 0):
            raise SpecError("traffic.bytes_RR", "negative or non-finite entries", "bytes must be >= 0")
        r = b.shape[0]
        if self.ranks_per_node <= 0 or r % self.ranks_per_node:
            raise SpecError("ranks_per_node", self.ranks_per_node, f"must be positive and divide ranks = {r}")
        object.__setattr__(self, "bytes_RR", b)
        if self.node_bytes_RN is not None:
            nb = np.asarray(self.node_bytes_RN, dtype=float)
            if nb.shape != (r, r // self.ranks_per_node) or np.any(nb < 0):
                raise SpecError("traffic.node_bytes_RN", nb.shape,
                                f"must be ranks x nodes = ({r}, {r // self.ranks_per_node}) and >= 0")
            object.__setattr__(self, "node_bytes_RN", nb)
        if self.peers_R is None:
            off = b > 0
            np.fill_diagonal(off, False)
            object.__setattr__(self, "peers_R", off.sum(axis=1).astype(float))
        else:
            object.__setattr__(self, "peers_R", np.asarray(self.peers_R, dtype=float))

    @property
    def ranks(self) -> int:
        return self.bytes_RR.shape[0]

    @property
    def nodes(self) -> int:
        return self.ranks // self.ranks_per_node

    def reversed(self) -> "Traffic":
        """The combine of this dispatch: the same bytes flowing back (every load transposed).

        Node-deduplicated combine reduces inside the destination node first and sends one
        partial sum per (token, source node) back, so ``node_bytes_RN`` keeps its meaning
        (bytes between rank ``s`` and node ``n``), only the direction changes.
        """
        return Traffic(self.bytes_RR.T.copy(), self.ranks_per_node, self.node_bytes_RN, self.peers_R)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise SpecError(name, value, "must be a positive integer")


def miss_probability(num_experts: int, top_k: int, set_size: int, set_groups: int = 1,
                     groups: int = 1, topk_groups: int = 1) -> float:
    """P(a token has none of its top-k experts in a set of ``set_size`` experts), uniform routing.

    Without group limits: C(E - m, k) / C(E, k) (k distinct experts drawn uniformly from E).
    With group-limited routing (E experts in ``groups`` equal groups; a token first picks
    ``topk_groups`` groups uniformly, then k experts uniformly among their M = G' E / G experts),
    for a set spread evenly over ``set_groups`` groups (m / h experts in each):
    sum_j Hyp(j; G, h, G') C(M - j m / h, k) / C(M, k), j = how many of its groups were picked.
    """
    if groups == 1:
        return comb(num_experts - set_size, top_k) / comb(num_experts, top_k)
    per_group = num_experts // groups
    pool = topk_groups * per_group
    m_each = set_size // set_groups
    total = 0.0
    for j in range(0, min(set_groups, topk_groups) + 1):
        hyp = comb(set_groups, j) * comb(groups - set_groups, topk_groups - j) / comb(groups, topk_groups)
        total += hyp * comb(pool - j * m_each, top_k) / comb(pool, top_k)
    return total


def _groups_spanned(set_size: int, num_experts: int, groups: int) -> int:
    """Groups a contiguous, aligned block of ``set_size`` experts spans; SpecError when misaligned."""
    per_group = num_experts // groups
    if set_size >= per_group:
        if set_size % per_group:
            raise SpecError("num_groups", groups, f"expert groups of {per_group} must tile blocks of {set_size}")
        return set_size // per_group
    if per_group % set_size:
        raise SpecError("num_groups", groups, f"blocks of {set_size} experts must tile groups of {per_group}")
    return 1


def hit_probabilities(ranks: int, ranks_per_node: int, num_experts: int, top_k: int,
                      routing: Routing = "uniform", groups: int = 1,
                      topk_groups: int = 1) -> tuple[float, float, float]:
    """Per token: P(a given rank is hit), P(a given node is hit), expected copies per rank.

    ``uniform``: 1 - miss_probability(...) for the rank's E/R and the node's E/N experts;
    copies per rank (no dedup) = K (E/R) / E = K / R.
    ``balanced`` (a perfect router, as TensorRT-LLM's ``--perfect_router``): each token reaches
    q = min(K, R) distinct ranks spread evenly, so P(rank) = q / R and P(node) = 1 - C(R - R/N, q)/C(R, q)
    (the q ranks as a uniformly random subset).
    """
    nodes = ranks // ranks_per_node
    copies = top_k / ranks
    if routing == "balanced":
        q = min(top_k, ranks)
        return q / ranks, 1.0 - comb(ranks - ranks_per_node, q) / comb(ranks, q), copies
    if routing != "uniform":
        raise SpecError("routing", routing, "expected traffic is closed-form for uniform or balanced")
    per_rank, per_node = num_experts // ranks, num_experts // nodes
    kw = dict(groups=groups, topk_groups=topk_groups)
    p_rank = 1.0 - miss_probability(num_experts, top_k, per_rank,
                                    _groups_spanned(per_rank, num_experts, groups), **kw)
    p_node = 1.0 - miss_probability(num_experts, top_k, per_node,
                                    _groups_spanned(per_node, num_experts, groups), **kw)
    return p_rank, p_node, copies


def check_sizes(ranks: int, ranks_per_node: int, tokens_per_rank: int, num_experts: int,
                top_k: int, bytes_per_token: float, groups: int = 1, topk_groups: int = 1) -> None:
    """SpecError naming the first size that is not positive or not consistent."""
    _check_positive(ranks=ranks, ranks_per_node=ranks_per_node, tokens_per_rank=tokens_per_rank,
                    num_experts=num_experts, top_k=top_k, num_groups=groups, topk_groups=topk_groups)
    if not bytes_per_token > 0:
        raise SpecError("bytes_per_token", bytes_per_token, "must be > 0")
    if ranks % ranks_per_node and ranks > ranks_per_node:
        raise SpecError("ranks", ranks, f"must be a multiple of ranks_per_node = {ranks_per_node}")
    if top_k > num_experts:
        raise SpecError("top_k", top_k, f"must be at most num_experts = {num_experts}")
    if num_experts % ranks:
        raise SpecError("num_experts", num_experts, f"must be a multiple of ranks = {ranks}")
    if num_experts % groups or topk_groups > groups:
        raise SpecError("topk_groups", topk_groups, f"need num_groups ({groups}) dividing experts and >= topk_groups")
    if groups > 1 and top_k > topk_groups * (num_experts // groups):
        raise SpecError("top_k", top_k, "exceeds the experts in the selected groups")


def uniform_traffic(ranks: int, ranks_per_node: int, tokens_per_rank: int, num_experts: int,
                    top_k: int, bytes_per_token: float, dedup: Dedup = "node",
                    routing: Routing = "uniform", groups: int = 1, topk_groups: int = 1) -> Traffic:
    """Expected traffic of one dispatch under uniform (or perfectly balanced) top-k routing.

    bytes_RR[s, d] = T x P(rank d hit) x bytes_per_token (dedup rank/node) or T x K/R x bytes (none);
    node_bytes_RN[s, n] = T x P(node n hit) x bytes_per_token (dedup node only);
    peers_R[s] = sum over d != s of 1 - (1 - P(rank hit))^T (tokens route independently;
    for ``balanced``: min(R - 1, T q (R - 1) / R)).
    """
    ranks_per_node = min(ranks_per_node, ranks)
    check_sizes(ranks, ranks_per_node, tokens_per_rank, num_experts, top_k, bytes_per_token,
                groups, topk_groups)
    if dedup not in DEDUPS:
        raise SpecError("dedup", dedup, f"one of {', '.join(DEDUPS)}")
    p_rank, p_node, copies = hit_probabilities(ranks, ranks_per_node, num_experts, top_k, routing,
                                               groups, topk_groups)
    per_pair = tokens_per_rank * bytes_per_token * (copies if dedup == "none" else p_rank)
    bytes_RR = np.full((ranks, ranks), per_pair)
    nodes = ranks // ranks_per_node
    node_bytes_RN = None
    if dedup == "node":
        node_bytes_RN = np.full((ranks, nodes), tokens_per_rank * p_node * bytes_per_token)
    if routing == "balanced":
        q = min(top_k, ranks)
        peers = min(ranks - 1.0, tokens_per_rank * q * (ranks - 1) / ranks)
    else:
        peers = (ranks - 1) * (1.0 - (1.0 - p_rank) ** tokens_per_rank)
    return Traffic(bytes_RR, ranks_per_node, node_bytes_RN, np.full(ranks, peers))


def expected_distinct_nodes(num_experts: int, top_k: int, nodes: int) -> float:
    """E[distinct nodes per token] = N (1 - C(E - E/N, k) / C(E, k)), uniform top-k, no group limit."""
    return nodes * (1.0 - comb(num_experts - num_experts // nodes, top_k) / comb(num_experts, top_k))
