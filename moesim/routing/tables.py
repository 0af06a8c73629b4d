"""Sampling tables for the Numba kernels (built in Python once per popularity vector).

Legend: E experts, G groups, S experts per group, M subsets of the hot experts (bit masks).

* :func:`alias_table`: Walker/Vose alias table, an O(1) draw from a discrete law;
* :func:`group_tables`: the group masses and one alias table per group (group-limited routing);
* :func:`sampling_tables`: everything :func:`moesim.routing.kernels.route_serial` and
  :func:`~moesim.routing.kernels.route_parallel` take, including the hot-expert tables (see
  the kernels' docstring for why they exist).
"""
from __future__ import annotations

import numpy as np


def alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of ``p`` (any positive scale): ``(thr, alias)``, where column
    ``i`` keeps ``i`` with probability ``thr[i] / 2^32`` (uint64) and else gives ``alias[i]``
    (int64). Exact to 2^-32 per column."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    scaled = p * (n / p.sum())
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    thr = np.minimum(np.floor(prob * 4294967296.0), 4294967296.0).astype(np.uint64)
    return thr, alias


def group_tables(p_E: np.ndarray, G: int) -> tuple[np.ndarray, ...]:
    """Tables of successive sampling over ``G`` contiguous groups of ``p_E``:
    ``(gmass_G, gthr_G, galias_G, thr_GS, alias_GS)`` (group masses and their alias table, and
    one alias table per group over its own experts, local indices)."""
    p_GS = np.asarray(p_E, dtype=np.float64).reshape(G, -1)
    gmass_G = p_GS.sum(axis=1)
    gthr_G, galias_G = alias_table(gmass_G)
    rows = [alias_table(row) for row in p_GS]
    thr_GS = np.stack([r[0] for r in rows])
    alias_GS = np.stack([r[1] for r in rows])
    return gmass_G, gthr_G, galias_G, thr_GS, alias_GS


# NOTE: up to HOT hot experts (popularity >= HOT_P) get their own removal bit: 2^H alias
# tables of E entries, 8 bytes each (32 KiB for E = 256 and H = 4, still cache resident).
HOT = 4
HOT_P = 0.02


def sampling_tables(p_E: np.ndarray, G: int) -> tuple[np.ndarray, ...]:
    """Every table :func:`_route_range` samples from, for popularity ``p_E`` in ``G`` groups:
    ``(p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G, galias_G, thr_GS, alias_GS)``.

    ``hot_H`` are the ``H <= min(HOT, E - 1)`` most popular experts with popularity of at least
    HOT_P (a token proposes a held expert again with that probability), ``hotbit_E`` their bit
    (0 for the others). Row ``m`` of ``tab_ME`` (uint64) is the alias table of ``p_E`` with the
    hot experts of bit mask ``m`` removed, packed as keep threshold (bits 0-31, times 2^32),
    alias (bits 32-51), and the hot bits of the column's expert (52-55) and of its alias
    (56-59), so a draw needs no second load; ``prop_M[m]`` is that row's mass. A token that holds the hot
    experts of ``m`` draws from row ``m``, so it never proposes them again: only the cold
    experts it holds are rejected. The group tables are :func:`group_tables`."""
    p_E = np.ascontiguousarray(p_E, dtype=np.float64)
    E = p_E.size
    if E >= 1 << 20:
        raise ValueError(f"sampling tables hold at most 2^20 - 1 experts, got {E}")
    top_H = np.argsort(-p_E, kind="stable")[:min(HOT, E - 1)].astype(np.int64)
    hot_H = top_H[p_E[top_H] >= HOT_P * p_E.sum()]
    H = hot_H.size
    hotbit_E = np.zeros(E, dtype=np.int64)
    hotbit_E[hot_H] = 1 << np.arange(H)
    tab_ME = np.empty((1 << H, E), dtype=np.uint64)
    prop_M = np.empty(1 << H)
    for m in range(1 << H):
        q_E = p_E.copy()
        q_E[hot_H[((m >> np.arange(H)) & 1) == 1]] = 0.0
        thr_E, alias_E = alias_table(q_E)
        # NOTE: a keep probability of 1 becomes 2^32 - 1; such columns alias to themselves.
        tab_ME[m] = (np.minimum(thr_E, np.uint64(0xFFFFFFFF)) | (alias_E.astype(np.uint64) << np.uint64(32))
                     | (hotbit_E.astype(np.uint64) << np.uint64(52))
                     | (hotbit_E[alias_E].astype(np.uint64) << np.uint64(56)))
        prop_M[m] = q_E.sum()
    return (p_E, tab_ME, hot_H, hotbit_E, prop_M, *group_tables(p_E, G))
