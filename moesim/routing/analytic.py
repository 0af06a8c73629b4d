"""Analytic engine: expectations and order statistics of routing, without sampling.

Legend: E experts, P physical slots, R EP ranks, N nodes, L slots per rank, Q source classes
(sources that use the same replica of every expert), K top-k.

Model (the same as the Monte Carlo kernels, see kernels.py): tokens are iid, so
* an expert's inclusion probability ``pi_e`` is k/E for uniform popularity, else the
  exponential-race integral (race.py), mixed over the token's group choice;
* a slot's load is exactly Binomial(N_P, pi_e), N_P the tokens of the sources using it;
  drops per slot are E[(Y - C)+] (exact);
* a rank's dropless load is a sum over tokens of the per-token count of its experts, whose
  pmf is hypergeometric for uniform popularity (mixed over group subsets) and from the race
  otherwise: the sum is computed exactly (FFT) or normally for wide supports;
* with a capacity, a rank's load is the convolution of its clipped slot loads, with the
  variance scaled by (exact dropless variance) / (sum of slot variances), which carries the
  negative correlation of a token's k distinct picks;
* the maximum over R ranks treats ranks as independent but stretches each rank's deviations
  by sqrt(R / (R - 1)): dropless rank loads sum to T*k, and for exchangeable normals with a
  fixed sum, E[max] = mean + sd * sqrt(R/(R-1)) * E[max of R iid N(0,1)] (the same for
  experts with E);
* ``reroute`` is a fluid model (overflow re-sent in proportion to popularity to slots with
  room, solved by bisection) combined with the binomial overflow; it is an approximation,
  the Monte Carlo engine is the reference there.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
from scipy import stats

from moesim.errors import SpecError
from moesim.routing import dists
from moesim.routing.problem import RoutingProblem
from moesim.routing.race import race_counts

MAX_GROUP_SEQUENCES = 20000
DRIFT_DRAWS = 16


def _group_subsets(gmass_G: np.ndarray, tg: int) -> list[tuple[tuple[int, ...], float]]:
    """Subsets of ``tg`` groups and their probabilities under successive sampling by mass."""
    G = gmass_G.size
    if tg == G or G == 1:
        return [(tuple(range(G)), 1.0)]
    if np.prod(np.arange(G - tg + 1, G + 1, dtype=float)) > MAX_GROUP_SEQUENCES:
        raise SpecError("engine", "analytic", f"skewed group-limited routing with {tg} of {G} groups "
                        "has too many group orders; use engine='montecarlo'")
    w: dict[tuple[int, ...], float] = {}
    for seq in itertools.permutations(range(G), tg):
        prob, left = 1.0, 1.0
        for g in seq:
            prob *= gmass_G[g] / left
            left -= gmass_G[g]
        key = tuple(sorted(seq))
        w[key] = w.get(key, 0.0) + prob
    return list(w.items())


def _uniform_counts(pb: RoutingProblem, labels_E: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-token count pmf per label, uniform popularity: a random subset of groups, then a
    hypergeometric draw of k of the chosen groups' experts."""
    G, tg, k = pb.n_groups, pb.topk_groups, pb.top_k
    gs = pb.num_experts // G
    out = np.zeros((n_labels, k + 1))
    m_LG = np.zeros((n_labels, G), dtype=np.int64)
    np.add.at(m_LG, (labels_E, pb.group_E), 1)
    cache: dict[bytes, np.ndarray] = {}
    for lab in range(n_labels):
        key = m_LG[lab].tobytes()
        if key in cache:
            out[lab] = cache[key]
            continue
        # dist of M = experts of this label inside a uniform random tg-subset of groups (DP)
        dp = np.zeros((tg + 1, gs * tg + 1))
        dp[0, 0] = 1.0
        for g in range(G):
            m = m_LG[lab, g]
            new = dp.copy()
            new[1:, m:] += dp[:-1, : dp.shape[1] - m]
            dp = new
        weight_M = dp[tg] / dp[tg].sum()
        for M in np.flatnonzero(weight_M > 0):
            out[lab] += weight_M[M] * stats.hypergeom.pmf(np.arange(k + 1), gs * tg, M, k)
        cache[key] = out[lab]
    return out


def _label_counts(pb: RoutingProblem, p_E: np.ndarray, uniform: bool, labels_E: np.ndarray,
                  n_labels: int) -> np.ndarray:
    """``n_labels x (k+1)``: pmf of how many of a token's k picks carry each label."""
    if uniform:
        return _uniform_counts(pb, labels_E, n_labels)
    gmass_G = np.bincount(pb.group_E, weights=p_E, minlength=pb.n_groups)
    out = np.zeros((n_labels, pb.top_k + 1))
    for subset, w in _group_subsets(gmass_G, pb.topk_groups):
        inside = np.isin(pb.group_E, subset)
        out += w * race_counts(p_E[inside], labels_E[inside], n_labels, pb.top_k)
    return out


def _classes(pb: RoutingProblem):
    """Source classes (same slot for every expert) and integer tokens per source / class."""
    pl = pb.placement
    R, T = pl.ep, pb.tokens
    rows, class_R = np.unique(pl.slot_for_RE, axis=0, return_inverse=True)
    tokens_R = T // R + (np.arange(R) < T % R)
    tokens_Q = np.bincount(class_R.ravel(), weights=tokens_R, minlength=rows.shape[0]).astype(np.int64)
    return rows, class_R.ravel(), tokens_R, tokens_Q


def _reroute_fluid(D_P, w_P, cap, total):
    """Fluid reroute: overflow spread over slots in proportion to ``w_P``; returns inflow I_P."""
    target = min(total, cap * D_P.size)
    lo, hi = 0.0, total
    for _ in range(80):
        x = 0.5 * (lo + hi)
        if np.minimum(D_P + x * w_P, cap).sum() < target:
            lo = x
        else:
            hi = x
    return D_P + hi * w_P


def _reroute(D_P, acc_P, w_P, cap, copies):
    """Reroute: fluid inflow (systematic overflow of hot experts) plus the binomial overflow
    placed on the room left. Returns (load_P, overflowed copies, rerouted copies)."""
    I_P = _reroute_fluid(D_P, w_P / w_P.sum(), cap, copies)
    primary_P = np.minimum(acc_P, D_P * np.minimum(1.0, cap / np.maximum(I_P, 1e-300)))
    load_P = np.maximum(np.minimum(I_P, cap), acc_P)
    need = min(copies, cap * D_P.size) - load_P.sum()
    room_P = cap - load_P
    if need > 0 and room_P.sum() > 0:
        load_P = load_P + room_P * min(1.0, need / room_P.sum())
    overflow = copies - primary_P.sum()
    return load_P, overflow, load_P.sum() - primary_P.sum()


def _expected_order_stats(ds: list[dists.Dist]) -> np.ndarray:
    """E[j-th largest] of independent loads (j = 1..L), via P(X_(j) > x) on a grid."""
    b = np.array([d.bounds(1.0) for d in ds])
    lo, hi = np.floor(b[:, 0].min()), np.ceil(b[:, 1].max())
    step = max(1.0, (hi - lo) / 512)
    x_X = lo + (np.arange(int(np.ceil((hi - lo) / step))) + 0.5) * step
    L = len(ds)
    tail = np.zeros((x_X.size, L + 1))  # tail[:, j] = P(#exceeding x == j)
    tail[:, 0] = 1.0
    for d in ds:
        q_X = 1.0 - d.cdf(x_X)
        tail[:, 1:] = tail[:, 1:] * (1 - q_X[:, None]) + tail[:, :-1] * q_X[:, None]
        tail[:, 0] *= 1 - q_X
    at_least_XL = np.cumsum(tail[:, ::-1], axis=1)[:, ::-1][:, 1:]  # P(at least j exceed), j=1..L
    return lo + at_least_XL.sum(axis=0) * step


def _step(pb: RoutingProblem, p_E: np.ndarray) -> dict:
    """Expectations for one popularity vector."""
    pl, k, T, C = pb.placement, pb.top_k, pb.tokens, pb.capacity
    R, P, E = pl.ep, pl.num_slots, pb.num_experts
    uniform = pb.kind == "uniform" or bool(np.all(p_E == p_E[0]))
    rows_QE, class_R, tokens_R, tokens_Q = _classes(pb)
    if uniform:
        pi_E = np.full(E, k / E)
    else:  # renormalised to sum to k exactly (removes the ~1e-5 quadrature error)
        pi_E = np.clip(1.0 - _label_counts(pb, p_E, False, np.arange(E), E)[:, 0], 0.0, 1.0)
        pi_E *= k / pi_E.sum()
    N_P = np.zeros(P, dtype=np.int64)
    for q in range(rows_QE.shape[0]):
        np.add.at(N_P, rows_QE[q], tokens_Q[q])
    e_P = pl.slot_expert_P
    piP = pi_E[e_P]
    D_P = N_P * piP
    slot_free = [dists.clipped_binomial(int(n), float(p), None) for n, p in zip(N_P, piP)]
    slot_cap = slot_free if C is None else [dists.clipped_binomial(int(n), float(p), C) for n, p in zip(N_P, piP)]
    acc_P = np.array([d.mean for d in slot_cap])
    over_P = D_P - acc_P
    # per-token counts per rank and per node, for each source class
    rank_parts = [[] for _ in range(R)]
    nodes_hit_QN = np.zeros((rows_QE.shape[0], pl.num_nodes))
    for q, row_E in enumerate(rows_QE):
        rank_E = pl.slot_rank_P[row_E]
        c_RK = _label_counts(pb, p_E, uniform, rank_E, R)
        for r in range(R):
            rank_parts[r].append((c_RK[r], int(tokens_Q[q])))
        node_E = pl.rank_node_R[rank_E]
        nodes_hit_QN[q] = 1.0 - _label_counts(pb, p_E, uniform, node_E, pl.num_nodes)[:, 0]
    rank_free = [dists.token_sum(parts) for parts in rank_parts]
    rerouted = overflow = 0.0
    if C is None:
        rank_d, load_P = rank_free, D_P
    else:
        load_P = acc_P.copy()
        overflow = over_P.sum()
        if pb.overflow == "reroute":
            load_P, overflow, rerouted = _reroute(D_P, acc_P, p_E[e_P] * N_P / T, C, T * k)
        rank_d = []
        for r in range(R):
            on = np.flatnonzero(pl.slot_rank_P == r)
            d = dists.convolve([slot_cap[i] for i in on])
            kappa = rank_free[r].var / max(sum(slot_free[i].var for i in on), 1e-300)
            d = dists.rescale(d, d.var * kappa)
            shift = load_P[on].sum() - d.mean
            rank_d.append(d if abs(shift) < 1e-9 else dists.Dist(d.mean + shift, d.var))
    f_R = np.sqrt(R / (R - 1)) if R > 1 else 1.0
    rank_max, rank_vals, rank_cdf = dists.max_distribution(rank_d, f_R)
    if C is not None:  # no rank holds more than its slots' capacity
        rank_max, rank_vals = min(rank_max, pl.slots_per_rank * C), np.minimum(rank_vals, pl.slots_per_rank * C)
    expert_d = []
    for e in range(E):
        reps = np.flatnonzero(e_P == e)
        expert_d.append(dists.convolve([slot_cap[i] for i in reps]))
    f_E = np.sqrt(E / (E - 1)) if E > 1 else 1.0
    exp_max, exp_vals, exp_cdf = dists.max_distribution(expert_d, f_E)
    if C is not None:
        cap_e = C * int(pl.replicas_E.max())
        exp_max, exp_vals = min(exp_max, cap_e), np.minimum(exp_vals, cap_e)
    rank_mean_R = np.array([d.mean for d in rank_d])
    r_star = int(np.argmax(rank_mean_R))
    on = np.flatnonzero(pl.slot_rank_P == r_star)
    order = _expected_order_stats([slot_cap[i] for i in on])
    straggler = order * rank_max / max(order.sum(), 1e-300)
    active_R = np.bincount(pl.slot_rank_P, weights=1.0 - (1.0 - piP) ** N_P, minlength=R)
    accept_P = np.where(D_P > 0, load_P / np.maximum(D_P, 1e-300), 0.0)
    traffic_RR = np.zeros((R, R))
    dedup_RN = np.zeros((R, pl.num_nodes))
    slot_node_P = pl.slot_node_P
    for s in range(R):
        slots = rows_QE[class_R[s]]
        np.add.at(traffic_RR[s], pl.slot_rank_P[slots], tokens_R[s] * pi_E * accept_P[slots])
        node_acc = np.bincount(slot_node_P[slots], weights=pi_E * accept_P[slots], minlength=pl.num_nodes)
        node_dem = np.bincount(slot_node_P[slots], weights=pi_E, minlength=pl.num_nodes)
        frac = np.where(node_dem > 0, node_acc / np.maximum(node_dem, 1e-300), 0.0)
        dedup_RN[s] = tokens_R[s] * nodes_hit_QN[class_R[s]] * frac
    copies = T * k
    dropped = copies - load_P.sum()
    dropped = 0.0 if dropped < 1e-9 * copies else dropped
    return dict(load_P=load_P, rank_max=rank_max, rank_vals=rank_vals, rank_cdf=rank_cdf,
                exp_max=exp_max, exp_vals=exp_vals, exp_cdf=exp_cdf, straggler=straggler,
                active_R=active_R, traffic_RR=traffic_RR, dedup_RN=dedup_RN,
                drop=dropped / copies if pb.overflow != "shared" else 0.0,
                shared=dropped / copies if pb.overflow == "shared" else 0.0,
                reroute=rerouted / copies, overflow=overflow / copies)


def _balanced_step(pb: RoutingProblem) -> dict:
    """``balanced``: no randomness, so the step is routed once by the deterministic kernel
    (on at most 65,536 tokens, traffic scaled to T); expert loads are exactly T*k/E (+-1)."""
    from moesim.routing.montecarlo import StepSampler

    import dataclasses

    T = pb.tokens
    sub = dataclasses.replace(pb, tokens=min(T, 1 << 16)) if T > (1 << 16) else pb
    st = StepSampler(sub).sample(np.random.default_rng(0))
    scale = T / sub.tokens
    pl = pb.placement
    load_P = st.load_P * scale
    rank_R = np.bincount(pl.slot_rank_P, weights=load_P, minlength=pl.ep)
    r_star = int(np.argmax(rank_R))
    expert_E = np.bincount(pl.slot_expert_P, weights=load_P, minlength=pb.num_experts)
    copies = T * pb.top_k
    c = st.counters_C / (sub.tokens * pb.top_k)
    return dict(load_P=load_P, rank_max=rank_R.max(), rank_vals=np.array([rank_R.max()]),
                rank_cdf=np.array([1.0]), exp_max=expert_E.max(), exp_vals=np.array([expert_E.max()]),
                exp_cdf=np.array([1.0]), straggler=np.sort(load_P[pl.slot_rank_P == r_star])[::-1],
                active_R=np.bincount(pl.slot_rank_P, weights=load_P > 0, minlength=pl.ep).astype(float),
                traffic_RR=st.traffic_RR * scale, dedup_RN=st.dedup_RN * scale,
                drop=c[0], reroute=c[1], shared=c[2], overflow=c[3]) if copies else {}


def _mix_cdf(results: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Average the per-step CDFs of a maximum on the union of their grids."""
    if len(results) == 1:
        return results[0][f"{key}_vals"], results[0][f"{key}_cdf"]
    x_X = np.unique(np.concatenate([r[f"{key}_vals"] for r in results]))
    cdf_X = np.mean([np.interp(x_X, r[f"{key}_vals"], r[f"{key}_cdf"], left=0.0, right=1.0)
                     for r in results], axis=0)
    return x_X, cdf_X


def run_analytic(pb: RoutingProblem, seed: int = 0) -> "RoutingStats":
    """Expected routing of one step; averaged over trace steps and over ``DRIFT_DRAWS`` drifted
    popularities (drawn from ``seed``) when the popularity changes per step."""
    from moesim.routing.popularity import drift_steps
    from moesim.routing.stats import RoutingStats

    pl = pb.placement
    if pb.routing == "expert_choice":
        return _expert_choice(pb)
    if pb.kind == "balanced":
        results = [_balanced_step(pb)]
    else:
        rng = np.random.default_rng(seed)
        p_list = [p for row in pb.p_SE for p in
                  (drift_steps(row, pb.drift, DRIFT_DRAWS, rng) if pb.drift > 0 else row[None, :])]
        results = [_step(pb, p) for p in p_list]
    mean = {key: np.mean([r[key] for r in results], axis=0)
            for key in results[0] if not key.endswith(("_vals", "_cdf"))}
    rv, rc = _mix_cdf(results, "rank")
    ev, ec = _mix_cdf(results, "exp")
    load_P = mean["load_P"]
    return RoutingStats(
        engine="analytic", routing=pb.routing, skew=pb.skew, num_experts=pb.num_experts,
        top_k=pb.top_k, tokens=pb.tokens, ep=pl.ep, ranks_per_node=pl.ranks_per_node,
        capacity=pb.capacity, overflow=pb.overflow, placement=pl.policy, samples=0,
        expert_tokens_E=np.bincount(pl.slot_expert_P, weights=load_P, minlength=pb.num_experts),
        slot_tokens_P=load_P, slot_rank_P=pl.slot_rank_P, rank_node_R=pl.rank_node_R,
        rank_tokens_R=np.bincount(pl.slot_rank_P, weights=load_P, minlength=pl.ep),
        rank_tokens_max=float(mean["rank_max"]), expert_tokens_max=float(mean["exp_max"]),
        straggler_tokens_L=mean["straggler"], active_experts_R=mean["active_R"],
        traffic_RR=mean["traffic_RR"], dedup_tokens_RN=mean["dedup_RN"],
        drop_fraction=float(mean["drop"]), reroute_fraction=float(mean["reroute"]),
        shared_fraction=float(mean["shared"]), overflow_fraction=float(mean["overflow"]),
        rank_max_values_X=rv, rank_max_cdf_X=rc, expert_max_values_X=ev, expert_max_cdf_X=ec,
    )


def _expert_choice(pb: RoutingProblem):
    """Expert choice: each expert takes a uniformly random C-subset of the T tokens (see
    kernels.expert_choice_step), so loads are exactly C per expert, split over replicas by
    source, and a token is served by nobody with probability (1 - C/T)^E."""
    from moesim.routing.stats import RoutingStats

    pl = pb.placement
    T, E, R = pb.tokens, pb.num_experts, pl.ep
    C = min(pb.capacity, T)
    rows_QE, class_R, tokens_R, tokens_Q = _classes(pb)
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
