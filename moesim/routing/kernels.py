"""Numba kernels that route one step of tokens: choices, capacity, overflow, traffic.

Legend: T tokens, K top-k, E experts, G expert groups, S experts per group (E / G), P physical
slots, R EP ranks, N nodes.

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

Sampling k distinct experts (successive sampling): each draw proposes an expert in O(1) from
a Walker alias table and rejects the experts the token already holds (a per-token stamp: no
clearing, no allocation). Rejecting them leaves exactly the renormalised conditional law
``p_e / rem`` of successive sampling, for any proposal proportional to ``p`` on the experts
the token does not hold. Proposals: without a group limit, the alias table of ``p`` with the
hot experts the token already holds removed (one table per subset of the few most popular
experts, see :func:`moesim.routing.tables.sampling_tables`; under Zipf skew the hot experts
would otherwise be proposed, and rejected, over and over); with one, a selected group by mass
and then an expert by the group's own alias table. When the remaining mass ``rem`` is under
``_SCAN_BELOW`` of the proposal's mass, an exact linear scan replaces rejection, so the work
per draw is bounded.

Random numbers: a splitmix64 counter from an explicit 64-bit seed (no global state), kept in a
local variable (a register) and threaded through the helpers; one 64-bit output gives an alias
draw (high 32 bits pick the column, low 32 bits toss the coin against a 32-bit threshold) or a
53-bit uniform. Chunks run in parallel with independent streams and accumulators.

Dropless tallies: without a capacity the order of the copies does not matter, so a copy only
adds one to ``count[source, expert]`` and a token adds one to the count of its node set (a bit
pattern, up to 8 nodes); slots, traffic and node-deduplicated tokens are derived at the end.
Measured speeds: benchmarks/bench_routing.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

DROP, REROUTE, SHARED = 0, 1, 2
# counters_C: index of each count
C_DROPPED, C_REROUTED, C_SHARED, C_OVERFLOW = 0, 1, 2, 3
# how a token's preferences are made
MODE_SAMPLED, MODE_BALANCED, MODE_GIVEN = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LO32 = np.uint64(0xFFFFFFFF)
_LO20, _LO4, _S52, _S56 = np.uint64(0xFFFFF), np.uint64(0xF), np.uint64(52), np.uint64(56)
_S11, _S27, _S30, _S31, _S32 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)
_CHUNK_SEED = np.uint64(0x632BE59BD9B4E019)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53
# NOTE: below this remaining share of the proposal mass, a linear scan beats rejection.
_SCAN_BELOW = 0.25
_MAX_TRIES = 64
_FAST_TRIES = 16
_TALLY_NODES = 8


@njit(cache=True, inline="always")
def _next(z):
    """splitmix64: advance the counter ``z`` (uint64) and return ``(z, 64 random bits)``."""
    z = z + _GOLDEN
    x = (z ^ (z >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return z, x ^ (x >> _S31)


@njit(cache=True, inline="always")
def _unit(x):
    """U[0, 1) double from 64 random bits (the top 53)."""
    return np.float64(x >> _S11) * _TO_UNIT


@njit(cache=True, inline="always")
def _alias(x, thr_V, alias_V, n):
    """Alias-table draw over ``n`` entries from 64 random bits ``x``; ``thr_V`` (uint64) is the
    column's keep probability times 2^32."""
    i = np.int64(((x >> _S32) * np.uint64(n)) >> _S32)
    if (x & _LO32) < thr_V[i]:
        return i
    return alias_V[i]


@njit(cache=True, inline="always")
def _alias_row(x, thr_GS, alias_GS, g, n):
    """:func:`_alias` on row ``g`` of 2-D tables (no view is made)."""
    i = np.int64(((x >> _S32) * np.uint64(n)) >> _S32)
    if (x & _LO32) < thr_GS[g, i]:
        return i
    return alias_GS[g, i]


@njit(cache=True, inline="always")
def _packed_row(x, tab_MV, m, n):
    """Alias draw from row ``m`` of a packed table (tables.sampling_tables: keep threshold,
    alias and the hot bits of both in one word, so one load per draw): ``(expert, hot bit)``."""
    i = np.int64(((x >> _S32) * np.uint64(n)) >> _S32)
    w = tab_MV[m, i]
    keep = (x & _LO32) < (w & _LO32)
    e = i if keep else np.int64((w >> _S32) & _LO20)
    bit = np.int64((w >> (_S52 if keep else _S56)) & _LO4)
    return e, bit


@njit(cache=True)
def _extend_prefs(z, i, j0, j1, rem, mass_sel, all_groups, n_sel, gsel_G, S, p_E, tab_ME, hot_H,
                  hotbit_E, prop_M, gmass_G, thr_GS, alias_GS, taken_E, prefs_X):
    """Draw token ``i``'s preferences ``j0 .. j1-1`` into ``prefs_X`` (the general path: the
    fast path in :func:`_route_range` hands over here when few eligible experts remain, and
    reroutes draw their candidates here). Each is proportional to ``p_E`` among the experts
    of the token's selected groups (``gsel_G[:n_sel]``, mass ``mass_sel``) that it does not
    hold yet (``taken_E[e] == i``); ``rem`` is that eligible mass.

    Proposals as in the fast path, rejection while ``rem`` is over ``_SCAN_BELOW`` of the
    proposal mass (at most ``_MAX_TRIES``), else an exact linear scan. Returns ``(z, rem, n)``:
    ``n`` preferences are filled (``n < j1`` when none is left)."""
    E = p_E.size
    mask = 0
    if all_groups:
        for h in range(hot_H.size):
            if taken_E[hot_H[h]] == i:
                mask |= 1 << h
    for j in range(j0, j1):
        e = -1
        tries = _MAX_TRIES
        prop = prop_M[mask] if all_groups else mass_sel
        if rem > _SCAN_BELOW * prop:
            tries = 0
            while tries < _MAX_TRIES:
                z, x = _next(z)
                if all_groups:
                    e, _ = _packed_row(x, tab_ME, mask, E)
                else:  # a selected group by mass, then an expert inside it
                    u = _unit(x) * mass_sel
                    g = gsel_G[n_sel - 1]
                    for m in range(n_sel - 1):
                        u -= gmass_G[gsel_G[m]]
                        if u < 0:
                            g = gsel_G[m]
                            break
                    z, x = _next(z)
                    e = g * S + _alias_row(x, thr_GS, alias_GS, g, S)
                if taken_E[e] != i:
                    break
                tries += 1
        if tries == _MAX_TRIES:  # exact scan over the eligible experts
            e = -1
            if rem > 1e-15:
                z, x = _next(z)
                u = _unit(x) * rem
                for m in range(n_sel):
                    g = gsel_G[m]
                    for f in range(g * S, (g + 1) * S):
                        if taken_E[f] != i:
                            e = f
                            u -= p_E[f]
                            if u < 0:
                                break
                    if u < 0:
                        break
        if e < 0:
            return z, rem, j
        prefs_X[j] = e
        taken_E[e] = i
        rem -= p_E[e]
        mask |= hotbit_E[e]
    return z, rem, j1


@njit(cache=True)
def _add_tallies(count_RE, pattern_RB, slot_for_RE, slot_rank_P, load_P, traffic_RR, dedup_RN):
    """Add dropless tallies to the accumulators: ``count_RE[s, e]`` copies from source s to
    expert e (to its slot ``slot_for_RE[s, e]``) and ``pattern_RB[s, b]`` tokens of source s
    whose copies reached the set of nodes with bit pattern b."""
    R, E = count_RE.shape
    n_nodes = dedup_RN.shape[1]
    for r in range(R):
        for e in range(E):
            c = count_RE[r, e]
            if c:
                slot = slot_for_RE[r, e]
                load_P[slot] += c
                traffic_RR[r, slot_rank_P[slot]] += c
        for bits in range(1, pattern_RB.shape[1]):
            c = pattern_RB[r, bits]
            if c:
                for node in range(n_nodes):
                    if (bits >> node) & 1:
                        dedup_RN[r, node] += c


@njit(cache=True)
def _route_range(i0, i1, K, R, p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G,
                 galias_G, thr_GS, alias_GS, TG, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, cap,
                 policy, mode, seed, load_P, traffic_RR, dedup_RN, counters_C, given_TX):
    """Route tokens ``i0 .. i1-1`` into the accumulators (see the module docstring).

    ``mode``: MODE_SAMPLED, MODE_BALANCED, or MODE_GIVEN (token i's preference list is
    ``given_TX[i]``, -1 padded: its first K entries are its choices, later ones the reroute
    order). ``seed`` (uint64) starts the random stream. Tables: see
    :func:`moesim.routing.tables.sampling_tables`.

    NOTE: the group pick and the rejection draws are written out here rather than in helper
    functions: a numba call (or an inlined helper with loops) increments and decrements the
    reference count of every array argument, which cost more than the draws themselves."""
    z = seed
    X = given_TX.shape[1]
    E = p_E.size
    G = gmass_G.size
    S = E // G
    all_groups = TG >= G
    n_sel = G if all_groups else TG
    taken_E = np.full(E, -1, dtype=np.int64)
    gmark_G = np.full(G, -1, dtype=np.int64)
    gsel_G = np.arange(G)
    gcum_G = np.zeros(G)
    nstamp_N = np.full(n_nodes, -1, dtype=np.int64)
    prefs_X = np.empty(E, dtype=np.int64)
    # NOTE: dropless copies are tallied per (source, expert) and each token's set of nodes as a
    # bit pattern; slots, traffic and node-deduplicated tokens follow from them at the end.
    tally = cap < 0 and n_nodes <= _TALLY_NODES
    count_RE = np.zeros((R if tally else 0, E), dtype=np.int64)
    pattern_RB = np.zeros((R if tally else 0, 1 << n_nodes if tally else 0), dtype=np.int64)
    node_RE = slot_node_P[slot_for_RE] if tally else np.zeros((0, E), dtype=np.int64)
    s = i0 % R
    for i in range(i0, i1):
        rem = 0.0
        mass_sel = 1.0
        if mode == MODE_GIVEN:
            for j in range(K):
                prefs_X[j] = given_TX[i, j]
        elif mode == MODE_BALANCED:
            base = (i * K) % E
            for j in range(K):
                e = base + j
                prefs_X[j] = e - E if e >= E else e
        else:
            if not all_groups:  # TG groups by successive sampling on their masses
                mass_sel = 0.0
                n = 0
                while n < TG:
                    z, x = _next(z)
                    if mass_sel < 0.75:
                        g = _alias(x, gthr_G, galias_G, G)
                    else:
                        u = _unit(x) * (1.0 - mass_sel)
                        g = -1
                        for h in range(G):
                            if gmark_G[h] != i:
                                g = h
                                u -= gmass_G[h]
                                if u < 0:
                                    break
                    if gmark_G[g] != i:
                        gmark_G[g] = i
                        gsel_G[n] = g
                        n += 1
                        mass_sel += gmass_G[g]
            # fast path: rejection, at most _FAST_TRIES proposals per pick; a pick that runs out
            # (and the rest of the token's picks) goes to _extend_prefs. Exact either way: an
            # accepted proposal has the conditional law whatever the number of tries it took.
            j = 0
            if all_groups:
                mask = 0
                while j < K:
                    tries = 0
                    while tries < _FAST_TRIES:
                        z, x = _next(z)
                        e, bit = _packed_row(x, tab_ME, mask, E)
                        if taken_E[e] != i:
                            break
                        tries += 1
                    if tries == _FAST_TRIES:
                        break
                    prefs_X[j] = e
                    taken_E[e] = i
                    mask |= bit
                    j += 1
            else:
                acc = 0.0
                for h in range(n_sel):  # cumulative mass of the selected groups
                    acc += gmass_G[gsel_G[h]]
                    gcum_G[h] = acc
                while j < K:
                    tries = 0
                    while tries < _FAST_TRIES:
                        z, x = _next(z)
                        u = _unit(x) * mass_sel
                        m = 0
                        for h in range(n_sel - 1):  # branch-free: count the cut points below u
                            m += u >= gcum_G[h]
                        g = gsel_G[m]
                        z, x = _next(z)
                        e = g * S + _alias_row(x, thr_GS, alias_GS, g, S)
                        if taken_E[e] != i:
                            break
                        tries += 1
                    if tries == _FAST_TRIES:
                        break
                    prefs_X[j] = e
                    taken_E[e] = i
                    j += 1
            if j < K or cap >= 0:  # the eligible mass, for _extend_prefs (now or on reroute)
                rem = mass_sel
                for h in range(j):
                    rem -= p_E[prefs_X[h]]
            if j < K:
                z, rem, _ = _extend_prefs(z, i, j, K, rem, mass_sel, all_groups, n_sel, gsel_G, S, p_E,
                                          tab_ME, hot_H, hotbit_E, prop_M, gmass_G, thr_GS, alias_GS,
                                          taken_E, prefs_X)
        if tally:  # dropless, few nodes: one count per copy, one node pattern per token
            bits = 0
            for j in range(K):
                e = prefs_X[j]
                count_RE[s, e] += 1
                bits |= 1 << node_RE[s, e]
            pattern_RB[s, bits] += 1
            s += 1
            if s == R:
                s = 0
            continue
        n_pref = K
        for j in range(K):
            e = prefs_X[j]
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
                    if mode == MODE_GIVEN:
                        if n_pref >= X or given_TX[i, n_pref] < 0:
                            break
                        e = given_TX[i, n_pref]
                    elif mode == MODE_BALANCED:
                        if n_pref >= E:
                            break
                        e = (i * K + n_pref) % E
                    else:
                        z, rem, got = _extend_prefs(z, i, n_pref, n_pref + 1, rem, mass_sel, all_groups,
                                                    n_sel, gsel_G, S, p_E, tab_ME, hot_H, hotbit_E,
                                                    prop_M, gmass_G, thr_GS, alias_GS, taken_E, prefs_X)
                        if got == n_pref:
                            break
                        e = prefs_X[n_pref]
                    n_pref += 1
                    cand = slot_for_RE[s, e]
                    if load_P[cand] < cap:
                        slot = cand
                if slot < 0:
                    counters_C[C_DROPPED] += 1
                    continue
                counters_C[C_REROUTED] += 1
            load_P[slot] += 1
            traffic_RR[s, slot_rank_P[slot]] += 1
            node = slot_node_P[slot]
            if nstamp_N[node] != i:
                nstamp_N[node] = i
                dedup_RN[s, node] += 1
        s += 1
        if s == R:
            s = 0
    if tally:
        _add_tallies(count_RE, pattern_RB, slot_for_RE, slot_rank_P, load_P, traffic_RR, dedup_RN)


@njit(cache=True)
def route_serial(T, K, R, p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G, galias_G, thr_GS,
                 alias_GS, TG, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, cap, policy, mode, seed,
                 given_TX):
    """One step, tokens in order (needed when capacity makes order matter).

    Returns ``load_P`` (copies per slot), ``traffic_RR`` (copies source -> destination rank),
    ``dedup_RN`` (distinct tokens source -> node), ``counters_C``."""
    load_P = np.zeros(slot_rank_P.size, dtype=np.int64)
    traffic_RR = np.zeros((R, R), dtype=np.int64)
    dedup_RN = np.zeros((R, n_nodes), dtype=np.int64)
    counters_C = np.zeros(4, dtype=np.int64)
    _route_range(0, T, K, R, p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G, galias_G, thr_GS,
                 alias_GS, TG, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, cap, policy, mode,
                 np.uint64(seed), load_P, traffic_RR, dedup_RN, counters_C, given_TX)
    return load_P, traffic_RR, dedup_RN, counters_C


@njit(cache=True, parallel=True)
def route_parallel(T, K, R, p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G, galias_G, thr_GS,
                   alias_GS, TG, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, mode, seed, chunks):
    """One dropless step split into ``chunks`` token ranges routed in parallel (own streams,
    own accumulators, summed at the end)."""
    P = slot_rank_P.size
    load_CP = np.zeros((chunks, P), dtype=np.int64)
    traffic_CRR = np.zeros((chunks, R, R), dtype=np.int64)
    dedup_CRN = np.zeros((chunks, R, n_nodes), dtype=np.int64)
    counters_CC = np.zeros((chunks, 4), dtype=np.int64)
    step = (T + chunks - 1) // chunks
    no_given = np.zeros((0, 1), dtype=np.int64)
    for c in prange(chunks):
        i0 = min(T, c * step)
        i1 = min(T, i0 + step)
        _route_range(i0, i1, K, R, p_E, tab_ME, hot_H, hotbit_E, prop_M, gmass_G, gthr_G, galias_G,
                     thr_GS, alias_GS, TG, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, -1, DROP, mode,
                     np.uint64(seed) + np.uint64(c) * _CHUNK_SEED,
                     load_CP[c], traffic_CRR[c], dedup_CRN[c], counters_CC[c], no_given)
    return load_CP.sum(axis=0), traffic_CRR.sum(axis=0), dedup_CRN.sum(axis=0), counters_CC.sum(axis=0)


@njit(cache=True)
def expert_choice_step(T, R, E, cap, slot_for_RE, slot_rank_P, slot_node_P, n_nodes, seed):
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
    z = np.uint64(seed)
    c = min(cap, T)
    for e in range(E):
        for j in range(c):
            z, x = _next(z)
            m = j + min(int(_unit(x) * (T - j)), T - j - 1)
            perm[j], perm[m] = perm[m], perm[j]
            t = perm[j]
            s = t % R
            slot = slot_for_RE[s, e]
            load_P[slot] += 1
            traffic_RR[s, slot_rank_P[slot]] += 1
            served_T[t] = True
            node = slot_node_P[slot]
            if not hit_TN[t, node]:
                hit_TN[t, node] = True
                dedup_RN[s, node] += 1
    counters_C[C_DROPPED] = T - served_T.sum()
    return load_P, traffic_RR, dedup_RN, counters_C
