"""Placement of experts on expert-parallel (EP) ranks, and of ranks on nodes.

Legend: E logical experts, P physical slots (E + redundant), R EP ranks, N nodes.

Every rank holds ``P / R`` slots. With ``redundant_experts > 0`` the extra slots hold replicas
of the hottest experts (greedy: each extra slot goes to the expert with the largest
popularity per replica, as load-balancing placement (EPLB) does). A token on source rank ``s``
sends its copy for expert ``e`` to replica ``s mod n_e`` of ``e`` (``n_e`` replicas), so each
replica serves a fixed share of the source ranks: ``slot_for_RE[s, e]``.

Policies: ``contiguous`` (slot ``i`` on rank ``i // (P/R)``; replicas after the E originals),
``round_robin`` (slot ``i`` on rank ``i mod R``), ``load_aware`` (longest-processing-time
first: slots by expected load, each to the least-loaded rank with room that does not hold the
same expert yet). Rank ``r`` sits on node ``r // ranks_per_node``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from moesim.errors import SpecError

PlacementName = Literal["contiguous", "round_robin", "load_aware"]


@dataclass(frozen=True)
class Placement:
    """Where each physical expert slot lives. Arrays are int64."""

    policy: str
    num_experts: int
    ep: int
    ranks_per_node: int
    slot_expert_P: np.ndarray  # logical expert held by each slot
    slot_rank_P: np.ndarray  # EP rank of each slot
    rank_node_R: np.ndarray  # node of each rank
    slot_for_RE: np.ndarray  # slot a source rank uses for each expert

    @property
    def num_slots(self) -> int:
        return int(self.slot_expert_P.size)

    @property
    def slots_per_rank(self) -> int:
        return self.num_slots // self.ep

    @functools.cached_property
    def num_nodes(self) -> int:
        return int(self.rank_node_R.max()) + 1

    @functools.cached_property
    def replicas_E(self) -> np.ndarray:
        return _frozen(np.bincount(self.slot_expert_P, minlength=self.num_experts))

    @functools.cached_property
    def slot_node_P(self) -> np.ndarray:
        return _frozen(self.rank_node_R[self.slot_rank_P])

    @functools.cached_property
    def source_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows_QE, class_R)``: the distinct rows of ``slot_for_RE`` (source classes: sources
        that use the same replica of every expert) and the class of each source rank."""
        first = self.slot_for_RE[0]
        if np.all(self.slot_for_RE == first):
            return _frozen(first[None, :].copy()), _frozen(np.zeros(self.ep, dtype=np.int64))
        rows_QE, class_R = np.unique(self.slot_for_RE, axis=0, return_inverse=True)
        return _frozen(rows_QE), _frozen(class_R.ravel().astype(np.int64))

    def to_dict(self) -> dict:
        return {"policy": self.policy, "ep": self.ep, "ranks_per_node": self.ranks_per_node,
                "num_slots": self.num_slots, "num_nodes": self.num_nodes,
                "slot_expert": self.slot_expert_P.tolist(), "slot_rank": self.slot_rank_P.tolist()}


def replicate_hottest(p_E: np.ndarray, redundant: int) -> np.ndarray:
    """Replica counts ``n_E``: each of ``redundant`` extra slots to ``argmax p_e / n_e``."""
    n_E = np.ones(p_E.size, dtype=np.int64)
    for _ in range(redundant):
        n_E[np.argmax(p_E / n_E)] += 1
    return n_E


def _slot_ranks(policy: str, slot_expert_P: np.ndarray, load_P: np.ndarray, R: int) -> np.ndarray:
    P = slot_expert_P.size
    per = P // R
    if policy == "contiguous":
        return np.arange(P) // per
    if policy == "round_robin":
        return np.arange(P) % R
    rank_P = np.empty(P, dtype=np.int64)
    load_R = np.zeros(R)
    used_R = np.zeros(R, dtype=np.int64)
    held = [set() for _ in range(R)]
    for i in np.argsort(-load_P, kind="stable"):
        e = int(slot_expert_P[i])
        free = [r for r in range(R) if used_R[r] < per]
        fresh = [r for r in free if e not in held[r]] or free
        r = min(fresh, key=lambda q: (load_R[q], q))
        rank_P[i], load_R[r], used_R[r] = r, load_R[r] + load_P[i], used_R[r] + 1
        held[r].add(e)
    return rank_P


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def place(num_experts: int, ep: int, ranks_per_node: int, policy: str = "contiguous",
          redundant_experts: int = 0, p_E: np.ndarray | None = None) -> Placement:
    """Build a :class:`Placement`; ``p_E`` (popularity) picks the replicas and drives load_aware.

    Cached by value (the planner asks for the same few placements over and over): the
    returned arrays are read-only."""
    p = np.full(num_experts, 1.0 / num_experts) if p_E is None else np.asarray(p_E, dtype=np.float64)
    return _place_cached(int(num_experts), int(ep), int(ranks_per_node), policy, int(redundant_experts),
                         p.tobytes())


@functools.lru_cache(maxsize=1024)
def _place_cached(num_experts: int, ep: int, ranks_per_node: int, policy: str, redundant_experts: int,
                  p_bytes: bytes) -> Placement:
    pl = _place(num_experts, ep, ranks_per_node, policy, redundant_experts, np.frombuffer(p_bytes))
    for a in (pl.slot_expert_P, pl.slot_rank_P, pl.rank_node_R, pl.slot_for_RE):
        a.setflags(write=False)
    return pl


def _place(num_experts: int, ep: int, ranks_per_node: int, policy: str, redundant_experts: int,
           p_E: np.ndarray) -> Placement:
    if policy not in ("contiguous", "round_robin", "load_aware"):
        raise SpecError("placement", policy, "allowed: contiguous, round_robin, load_aware")
    if ep < 1 or ranks_per_node < 1 or redundant_experts < 0:
        raise SpecError("ep/ranks_per_node/redundant_experts", (ep, ranks_per_node, redundant_experts),
                        "ep and ranks_per_node must be >= 1, redundant_experts >= 0")
    P = num_experts + redundant_experts
    if P % ep:
        raise SpecError("ep", ep, f"must divide routed experts + redundant slots = {num_experts} + "
                        f"{redundant_experts} = {P}")
    if p_E.size != num_experts:
        raise SpecError("p_E", p_E.size, f"needs {num_experts} entries")
    n_E = replicate_hottest(p_E, redundant_experts)
    extra = np.repeat(np.arange(num_experts), n_E - 1)
    slot_expert_P = np.concatenate([np.arange(num_experts), extra]).astype(np.int64)
    load_P = p_E[slot_expert_P] / n_E[slot_expert_P]
    slot_rank_P = _slot_ranks(policy, slot_expert_P, load_P, ep).astype(np.int64)
    slot_for_RE = np.empty((ep, num_experts), dtype=np.int64)
    for e in range(num_experts):
        slots = np.flatnonzero(slot_expert_P == e)
        slot_for_RE[:, e] = slots[np.arange(ep) % slots.size]
    rank_node_R = (np.arange(ep) // ranks_per_node).astype(np.int64)
    return Placement(policy, num_experts, ep, ranks_per_node, slot_expert_P, slot_rank_P,
                     rank_node_R, slot_for_RE)
