"""Numba kernels that route one step of tokens: choices, capacity, overflow, traffic.

Legend: T tokens, K top-k, E experts, G expert groups, P physical slots, R EP ranks, N nodes.

Conventions shared with the analytic engine (and documented in ``moesim.routing.api``):

* token ``i`` lives on source rank ``i mod R`` and is processed in index order (first come,
  first served; interleaving the sources spreads drops evenly over them);
* a token first picks ``TG`` of ``G`` groups by successive sampling from the group masses,
  then its ``K`` experts by successive sampling from ``p_E`` restricted to those groups
  (``G = 1``: no group limit). The draw order is its preference order;
* every copy goes to slot ``slot_for_RE[source, expert]``; a slot holding ``cap`` copies is
  full (``cap < 0``: dropless). Overflow: 0 drop, 1 reroute (to the token's next preferred
  expert in its groups whose slot has room; dropped if none), 2 shared (served by the shared
  experts on the source rank: no traffic);
* ``balanced``: token ``i`` prefers experts ``(i*K + j) mod E``, j = 0, 1, ... (exactly equal loads).

Random numbers: splitmix64 from an explicit 64-bit seed (no global state), so a run is
reproducible and chunks run in parallel with independent streams.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

DROP, REROUTE, SHARED = 0, 1, 2
# counters_C: index of each count
C_DROPPED, C_REROUTED, C_SHARED, C_OVERFLOW = 0, 1, 2, 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _uniform(state):
    """Next U[0, 1) double from the splitmix64 state ``state[0]`` (uint64)."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _alias_draw(state, prob, alias):
    u = _uniform(state) * prob.size
    i = min(int(u), prob.size - 1)
    return i if (u - i) < prob[i] else alias[i]


@njit(cache=True, inline="always")
def _scan_draw(state, p_E, group_E, gsel, taken_E, stamp, rem):
    """Draw one eligible expert (group selected, not taken by this token) proportionally to
    ``p_E`` by a linear scan; -1 if none."""
    u = _uniform(state) * rem
    last = -1
    for e in range(p_E.size):
        if gsel[group_E[e]] and taken_E[e] != stamp:
            last = e
            u -= p_E[e]
            if u < 0:
                return e
    return last


@njit(cache=True, inline="always")
def _next_expert(state, p_E, prob_E, alias_E, group_E, gsel, taken_E, stamp, rem):
    """Next expert of the token's preference: proportional to ``p_E`` among the experts of the
    selected groups that the token has not taken (``taken_E[e] == stamp``).

    ``rem`` is the eligible mass; rejection from the alias table while it is large, a scan
    when it is small (so the expected work per draw stays bounded)."""
    if rem <= 1e-15:
        return -1
    if rem > 0.25:
        for _ in range(64):
            e = _alias_draw(state, prob_E, alias_E)
            if gsel[group_E[e]] and taken_E[e] != stamp:
                return e
    return _scan_draw(state, p_E, group_E, gsel, taken_E, stamp, rem)


@njit(cache=True)
def _scan_groups(state, gmass_G, gsel, rem):
    u = _uniform(state) * rem
    last = -1
    for g in range(gmass_G.size):
        if not gsel[g]:
            last = g
            u -= gmass_G[g]
            if u < 0:
                return g
    return last


@njit(cache=True)
def _pick_groups(state, gmass_G, gprob_G, galias_G, TG, gsel):
    gsel[:] = False
    if gmass_G.size == 1:
        gsel[0] = True
        return 1.0
    mass = 0.0
    n = 0
    while n < TG:
        if mass < 0.75:
            g = _alias_draw(state, gprob_G, galias_G)
        else:
            g = _scan_groups(state, gmass_G, gsel, 1.0 - mass)
        if not gsel[g]:
            gsel[g] = True
            mass += gmass_G[g]
            n += 1
    return mass


@njit(cache=True)
def _route_range(i0, i1, K, R, p_E, prob_E, alias_E, group_E, gmass_G, gprob_G, galias_G, TG,
                 slot_for_RE, slot_rank_P, rank_node_R, cap, policy, balanced, state,
                 load_P, traffic_RR, dedup_RN, counters_C, given_TX):
    """Route tokens ``i0 .. i1-1`` into the accumulators (see the module docstring).

    ``given_TX`` (tokens x X, -1 padded): when it has rows, token i's preference list is
    ``given_TX[i]`` (its first K entries are its choices, later ones the reroute order)."""
    X = given_TX.shape[1]
    given = given_TX.shape[0] > 0
    E = p_E.size
    taken_E = np.full(E, -1, dtype=np.int64)
    gsel = np.zeros(gmass_G.size, dtype=np.bool_)
    prefs = np.empty(E, dtype=np.int64)
    nodes = np.empty(K + 1, dtype=np.int64)
    for i in range(i0, i1):
        s = i % R
        if given:
            for j in range(K):
                prefs[j] = given_TX[i, j]
            rem = 0.0
        elif balanced:
            for j in range(K):
                prefs[j] = (i * K + j) % E
            rem = 0.0
        else:
            rem = _pick_groups(state, gmass_G, gprob_G, galias_G, TG, gsel)
            for j in range(K):
                e = _next_expert(state, p_E, prob_E, alias_E, group_E, gsel, taken_E, i, rem)
                prefs[j] = e
                taken_E[e] = i
                rem -= p_E[e]
        n_pref = K
        n_nodes = 0
        for j in range(K):
            e = prefs[j]
            slot = slot_for_RE[s, e]
            if cap >= 0 and load_P[slot] >= cap:
                counters_C[C_OVERFLOW] += 1
                if policy == DROP:
                    counters_C[C_DROPPED] += 1
                    continue
                if policy == SHARED:
                    counters_C[C_SHARED] += 1
                    continue
                slot = -1
                while slot < 0:
                    if given:
                        if n_pref >= X or given_TX[i, n_pref] < 0:
                            break
                        e = given_TX[i, n_pref]
                    elif balanced:
                        if n_pref >= E:
                            break
                        e = (i * K + n_pref) % E
                    else:
                        e = _next_expert(state, p_E, prob_E, alias_E, group_E, gsel, taken_E, i, rem)
                        if e < 0:
                            break
                        taken_E[e] = i
                        rem -= p_E[e]
                    n_pref += 1
                    cand = slot_for_RE[s, e]
                    if load_P[cand] < cap:
                        slot = cand
                if slot < 0:
                    counters_C[C_DROPPED] += 1
                    continue
                counters_C[C_REROUTED] += 1
            load_P[slot] += 1
            r = slot_rank_P[slot]
            traffic_RR[s, r] += 1
            node = rank_node_R[r]
            seen = False
            for m in range(n_nodes):
                if nodes[m] == node:
                    seen = True
            if not seen:
                nodes[n_nodes] = node
                n_nodes += 1
                dedup_RN[s, node] += 1


@njit(cache=True)
def route_serial(T, K, R, p_E, prob_E, alias_E, group_E, gmass_G, gprob_G, galias_G, TG,
                 slot_for_RE, slot_rank_P, rank_node_R, n_nodes, cap, policy, balanced, seed, given_TX):
    """One step, tokens in order (needed when capacity makes order matter).

    Returns ``load_P`` (copies per slot), ``traffic_RR`` (copies source -> destination rank),
    ``dedup_RN`` (distinct tokens source -> node), ``counters_C``."""
    load_P = np.zeros(slot_rank_P.size, dtype=np.int64)
    traffic_RR = np.zeros((R, R), dtype=np.int64)
    dedup_RN = np.zeros((R, n_nodes), dtype=np.int64)
    counters_C = np.zeros(4, dtype=np.int64)
    state = np.array([np.uint64(seed)], dtype=np.uint64)
    _route_range(0, T, K, R, p_E, prob_E, alias_E, group_E, gmass_G, gprob_G, galias_G, TG,
                 slot_for_RE, slot_rank_P, rank_node_R, cap, policy, balanced, state,
                 load_P, traffic_RR, dedup_RN, counters_C, given_TX)
    return load_P, traffic_RR, dedup_RN, counters_C


@njit(cache=True, parallel=True)
def route_parallel(T, K, R, p_E, prob_E, alias_E, group_E, gmass_G, gprob_G, galias_G, TG,
                   slot_for_RE, slot_rank_P, rank_node_R, n_nodes, balanced, seed, chunks):
    """One dropless step split into ``chunks`` token ranges routed in parallel (own streams)."""
    P = slot_rank_P.size
    load_CP = np.zeros((chunks, P), dtype=np.int64)
    traffic_CRR = np.zeros((chunks, R, R), dtype=np.int64)
    dedup_CRN = np.zeros((chunks, R, n_nodes), dtype=np.int64)
    counters_CC = np.zeros((chunks, 4), dtype=np.int64)
    step = (T + chunks - 1) // chunks
    for c in prange(chunks):
        state = np.array([np.uint64(seed) + np.uint64(c) * np.uint64(0x632BE59BD9B4E019)], dtype=np.uint64)
        i0 = min(T, c * step)
        i1 = min(T, i0 + step)
        _route_range(i0, i1, K, R, p_E, prob_E, alias_E, group_E, gmass_G, gprob_G, galias_G, TG,
                     slot_for_RE, slot_rank_P, rank_node_R, -1, DROP, balanced, state,
                     load_CP[c], traffic_CRR[c], dedup_CRN[c], counters_CC[c], np.zeros((0, 1), dtype=np.int64))
    return load_CP.sum(axis=0), traffic_CRR.sum(axis=0), dedup_CRN.sum(axis=0), counters_CC.sum(axis=0)


@njit(cache=True)
def expert_choice_step(T, R, E, cap, slot_for_RE, slot_rank_P, rank_node_R, n_nodes, seed):
    """Expert-choice routing: each expert takes ``cap`` tokens (its top-C scores).

    With scores ``log p_e + Gumbel`` the ``log p_e`` shift is the same for every token, so each
    expert's top-C is a uniformly random C-subset of the tokens (partial Fisher-Yates).
    Returns the same arrays as :func:`route_serial`; counters_C[C_DROPPED] counts tokens that no
    expert took."""
    load_P = np.zeros(slot_rank_P.size, dtype=np.int64)
    traffic_RR = np.zeros((R, R), dtype=np.int64)
    dedup_RN = np.zeros((R, n_nodes), dtype=np.int64)
    counters_C = np.zeros(4, dtype=np.int64)
    served_T = np.zeros(T, dtype=np.bool_)
    hit_TN = np.zeros((T, n_nodes), dtype=np.bool_)
    perm = np.arange(T)
    state = np.array([np.uint64(seed)], dtype=np.uint64)
    c = min(cap, T)
    for e in range(E):
        for j in range(c):
            m = j + min(int(_uniform(state) * (T - j)), T - j - 1)
            perm[j], perm[m] = perm[m], perm[j]
            t = perm[j]
            s = t % R
            slot = slot_for_RE[s, e]
            r = slot_rank_P[slot]
            load_P[slot] += 1
            traffic_RR[s, r] += 1
            served_T[t] = True
            node = rank_node_R[r]
            if not hit_TN[t, node]:
                hit_TN[t, node] = True
                dedup_RN[s, node] += 1
    counters_C[C_DROPPED] = T - served_T.sum()
    return load_P, traffic_RR, dedup_RN, counters_C


def alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of ``p`` (sums to 1): ``(prob, alias)`` for O(1) draws."""
    n = p.size
    scaled = p * n
    prob = np.zeros(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    for i in small + large:
        prob[i] = 1.0
    return prob, alias
