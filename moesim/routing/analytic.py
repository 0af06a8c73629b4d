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

Speed (uniform and balanced popularity are the planner's default; benchmarks/bench_routing.py):
ranks, slots and experts with the same law share one object (``distinct_rows``: a contiguous
placement has one kind of rank and one kind of expert), per-token count pmfs are closed forms
(counts.py), everything that does not depend on T is cached per placement (``_token_counts``),
and ``balanced`` routes one period of its deterministic pattern. Skewed popularity needs the
race quadrature per group subset and labelling: a step whose estimated work exceeds
``MAX_RACE_WORK`` raises a SpecError that points to ``engine='montecarlo'``.
"""
from __future__ import annotations

import numpy as np

from moesim.errors import SpecError
from moesim.routing import dists, race
from moesim.routing.counts import distinct_rows, group_subsets, label_counts
from moesim.routing.exact import balanced_step, expert_choice_stats, source_tokens
from moesim.routing.problem import RoutingProblem

DRIFT_DRAWS = 16
# NOTE: skewed steps above this much exponential-race work (~1e9 operations a second here)
# are refused with a SpecError that points to engine='montecarlo'.
MAX_RACE_WORK = 6e9


def _label_counts(pb: RoutingProblem, p_E: np.ndarray, uniform: bool, labels_E: np.ndarray,
                  n_labels: int) -> np.ndarray:
    """``n_labels x (k+1)``: pmf of how many of a token's k picks carry each label (counts.py)."""
    return label_counts(pb.group_E, pb.n_groups, pb.topk_groups, pb.top_k, p_E, uniform, labels_E,
                        n_labels)


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


def _check_race_work(pb: RoutingProblem, p_E: np.ndarray, rows_QE: np.ndarray) -> None:
    """Refuse (SpecError) a skewed step whose exponential-race quadrature would exceed
    MAX_RACE_WORK operations: group subsets x labellings x time points x (U K + 3 parts K^2)."""
    pl, k = pb.placement, pb.top_k
    gmass_G = np.bincount(pb.group_E, weights=p_E, minlength=pb.n_groups)
    subsets = len(group_subsets(gmass_G, pb.topk_groups))
    rank_QE = pl.slot_rank_P[rows_QE]
    n_rank = distinct_rows(rank_QE)[0].size
    n_node = distinct_rows(pl.rank_node_R[rank_QE])[0].size
    U = pb.num_experts * pb.topk_groups // pb.n_groups
    parts = pb.num_experts + n_rank * pl.ep + n_node * pl.num_nodes
    work = subsets * race.GRID_POINTS * ((1 + n_rank + n_node) * U * k + 3 * parts * k * k)
    if work > MAX_RACE_WORK:
        raise SpecError("engine", "analytic",
                        f"skewed routing ({pb.skew}, {subsets} group subsets, {n_rank} source classes) "
                        f"needs ~{work:.1e} quadrature operations (limit {MAX_RACE_WORK:.0e}, roughly a "
                        "second per 1e9); use engine='montecarlo'")


def _slot_dists(pb: RoutingProblem, N_P: np.ndarray, piP: np.ndarray):
    """Slot loads Binomial(N_P, pi) (free and clipped at C), one object per distinct slot type.

    Returns ``(free_P, cap_P, type_P)``: per-slot lists (shared objects) and the type index."""
    first_U, type_P = distinct_rows(np.column_stack([N_P.astype(float), piP]))
    free_U = [dists.clipped_binomial(int(N_P[i]), float(piP[i]), None) for i in first_U]
    cap_U = free_U if pb.capacity is None else \
        [dists.clipped_binomial(int(N_P[i]), float(piP[i]), pb.capacity) for i in first_U]
    return [free_U[u] for u in type_P], [cap_U[u] for u in type_P], type_P


def _per_class_counts(pb, p_E, uniform, labels_QE, n_labels) -> np.ndarray:
    """``label_counts`` for each class's labelling (Q x n_labels x (k+1)); classes with the
    same labelling are computed once."""
    first_U, inv_Q = distinct_rows(labels_QE)
    c_ULK = [_label_counts(pb, p_E, uniform, labels_QE[q], n_labels) for q in first_U]
    return np.stack([c_ULK[u] for u in inv_Q])


_LAYOUTS: dict = {}
MAX_LAYOUTS = 512


def _token_counts(pb: RoutingProblem, p_E: np.ndarray, uniform: bool, rows_QE: np.ndarray) -> dict:
    """What does not depend on the token count: per-token count pmfs of every rank for each
    source class (``c_QRK``), node-hit probabilities (``nodes_hit_QN``), the distinct ranks
    (``first_U``, ``inv_R``) and, for skewed popularity, the inclusion probabilities ``pi_E``.
    Cached per (placement, groups, k, popularity): the planner sweeps token counts."""
    pl = pb.placement
    key = (id(pl), pb.n_groups, pb.topk_groups, pb.top_k, b"" if uniform else p_E.tobytes())
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0] is pl:  # the entry holds pl, so its id is not reused
        return hit[1]
    R, N, E, k = pl.ep, pl.num_nodes, pb.num_experts, pb.top_k
    if not uniform:
        _check_race_work(pb, p_E, rows_QE)
    if uniform:
        pi_E = np.full(E, k / E)
    else:  # renormalised to sum to k exactly (removes the ~1e-5 quadrature error)
        pi_E = np.clip(1.0 - _label_counts(pb, p_E, False, np.arange(E), E)[:, 0], 0.0, 1.0)
        pi_E *= k / pi_E.sum()
    rank_QE = pl.slot_rank_P[rows_QE]
    c_QRK = _per_class_counts(pb, p_E, uniform, rank_QE, R)
    nodes_hit_QN = 1.0 - _per_class_counts(pb, p_E, uniform, pl.rank_node_R[rank_QE], N)[:, :, 0]
    first_U, inv_R = distinct_rows(c_QRK.transpose(1, 0, 2).reshape(R, -1))
    out = dict(pi_E=pi_E, c_QRK=c_QRK, nodes_hit_QN=nodes_hit_QN, first_U=first_U, inv_R=inv_R)
    if len(_LAYOUTS) >= MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = (pl, out)
    return out


def _rank_free(lay: dict, tokens_Q: np.ndarray) -> tuple[list[dists.Dist], np.ndarray]:
    """Dropless rank loads: a sum over tokens of per-token counts (dists.token_sum), one
    object per distinct rank: ``(dists_U, inv_R)``."""
    c_QRK = lay["c_QRK"]
    free_U = [dists.token_sum([(c_QRK[q, r], int(n)) for q, n in enumerate(tokens_Q)])
              for r in lay["first_U"]]
    return free_U, lay["inv_R"]


def _grouped(dists_U: list[dists.Dist], inv_R: np.ndarray) -> list[tuple[dists.Dist, int]]:
    """``(dist, how many rows have it)`` for the rows mapped to ``dists_U`` by ``inv_R``."""
    n_U = np.bincount(inv_R, minlength=len(dists_U))
    return [(d, int(n)) for d, n in zip(dists_U, n_U) if n]


def _rank_capped(pb, rank_free, slot_free, slot_cap, type_P, load_P):
    """Rank loads with a capacity: the convolution of the clipped slot loads, the variance
    scaled by (exact dropless variance) / (sum of slot variances), the mean moved to the
    expected accepted load. One object per distinct (dropless law, slot types, load) rank:
    ``(dists_U, inv_R)``."""
    pl = pb.placement
    R = pl.ep
    free_U, free_R = rank_free
    U = int(type_P.max()) + 1
    cnt_RU = np.bincount(pl.slot_rank_P * U + type_P, minlength=R * U).reshape(R, U)
    load_R = np.bincount(pl.slot_rank_P, weights=load_P, minlength=R)
    key_R = np.column_stack([free_R, cnt_RU, np.round(load_R, 6)])
    first_U, inv_R = distinct_rows(key_R)
    out_U = []
    for r in first_U:
        on = np.flatnonzero(pl.slot_rank_P == r)
        d = dists.convolve([slot_cap[i] for i in on])
        kappa = free_U[free_R[r]].var / max(sum(slot_free[i].var for i in on), 1e-300)
        d = dists.rescale(d, d.var * kappa)
        shift = load_R[r] - d.mean
        out_U.append(d if abs(shift) < 1e-9 else dists.Dist(d.mean + shift, d.var))
    return out_U, inv_R


def _expert_dists(pb, slot_cap, type_P):
    """Logical expert loads: the convolution of their replicas' slot loads, one object per
    distinct replica set: ``(dists_U, inv_E)``."""
    pl = pb.placement
    E = pb.num_experts
    U = int(type_P.max()) + 1
    cnt_EU = np.bincount(pl.slot_expert_P * U + type_P, minlength=E * U).reshape(E, U)
    first_U, inv_E = distinct_rows(cnt_EU)
    out_U = [dists.convolve([slot_cap[i] for i in np.flatnonzero(pl.slot_expert_P == e)]) for e in first_U]
    return out_U, inv_E


def _traffic(pb, pi_E, accept_P, rows_QE, class_R, tokens_R, nodes_hit_QN):
    """Expected copies source rank -> rank and distinct tokens source rank -> node (per class,
    then scaled by each source's tokens)."""
    pl = pb.placement
    R, N = pl.ep, pl.num_nodes
    slot_node_P = pl.slot_node_P
    w_QR = np.zeros((rows_QE.shape[0], R))
    hit_QN = np.zeros((rows_QE.shape[0], N))
    for q, slots in enumerate(rows_QE):
        acc_E = pi_E * accept_P[slots]
        w_QR[q] = np.bincount(pl.slot_rank_P[slots], weights=acc_E, minlength=R)
        node_acc = np.bincount(slot_node_P[slots], weights=acc_E, minlength=N)
        node_dem = np.bincount(slot_node_P[slots], weights=pi_E, minlength=N)
        hit_QN[q] = nodes_hit_QN[q] * np.where(node_dem > 0, node_acc / np.maximum(node_dem, 1e-300), 0.0)
    return tokens_R[:, None] * w_QR[class_R], tokens_R[:, None] * hit_QN[class_R]


def _step(pb: RoutingProblem, p_E: np.ndarray) -> dict:
    """Expectations for one popularity vector."""
    pl, k, T, C = pb.placement, pb.top_k, pb.tokens, pb.capacity
    R, P, E = pl.ep, pl.num_slots, pb.num_experts
    uniform = pb.kind == "uniform" or bool(np.all(p_E == p_E[0]))
    rows_QE, class_R, tokens_R, tokens_Q = source_tokens(pb)
    lay = _token_counts(pb, p_E, uniform, rows_QE)
    pi_E = lay["pi_E"]
    N_P = np.bincount(rows_QE.ravel(), weights=np.repeat(tokens_Q, E), minlength=P).astype(np.int64)
    e_P = pl.slot_expert_P
    piP = pi_E[e_P]
    D_P = N_P * piP
    slot_free, slot_cap, type_P = _slot_dists(pb, N_P, piP)
    acc_P = np.array([d.mean for d in slot_cap])
    rank_free = _rank_free(lay, tokens_Q)
    rerouted = overflow = 0.0
    if C is None:
        rank_d, load_P = rank_free, D_P
    else:
        load_P = acc_P.copy()
        overflow = np.maximum(D_P - acc_P, 0.0).sum()
        if pb.overflow == "reroute":
            load_P, overflow, rerouted = _reroute(D_P, acc_P, p_E[e_P] * N_P / T, C, T * k)
        rank_d = _rank_capped(pb, rank_free, slot_free, slot_cap, type_P, load_P)
    f_R = np.sqrt(R / (R - 1)) if R > 1 else 1.0
    rank_max, rank_vals, rank_cdf = dists.max_of_groups(_grouped(*rank_d), f_R)
    if C is not None:  # no rank holds more than its slots' capacity
        cap_r = pl.slots_per_rank * C
        rank_max, rank_vals = min(rank_max, cap_r), np.minimum(rank_vals, cap_r)
    f_E = np.sqrt(E / (E - 1)) if E > 1 else 1.0
    exp_max, exp_vals, exp_cdf = dists.max_of_groups(_grouped(*_expert_dists(pb, slot_cap, type_P)), f_E)
    if C is not None:
        cap_e = C * int(pl.replicas_E.max())
        exp_max, exp_vals = min(exp_max, cap_e), np.minimum(exp_vals, cap_e)
    r_star = int(np.argmax(np.array([d.mean for d in rank_d[0]])[rank_d[1]]))
    order = dists.expected_order_stats([slot_cap[i] for i in np.flatnonzero(pl.slot_rank_P == r_star)])
    straggler = order * rank_max / max(order.sum(), 1e-300)
    active_R = np.bincount(pl.slot_rank_P, weights=1.0 - (1.0 - piP) ** N_P, minlength=R)
    accept_P = np.where(D_P > 0, load_P / np.maximum(D_P, 1e-300), 0.0)
    traffic_RR, dedup_RN = _traffic(pb, pi_E, accept_P, rows_QE, class_R, tokens_R, lay["nodes_hit_QN"])
    copies = T * k
    dropped = copies - load_P.sum()
    dropped = 0.0 if dropped < 1e-9 * copies else dropped
    return dict(load_P=load_P, rank_max=rank_max, rank_vals=rank_vals, rank_cdf=rank_cdf,
                exp_max=exp_max, exp_vals=exp_vals, exp_cdf=exp_cdf, straggler=straggler,
                active_R=active_R, traffic_RR=traffic_RR, dedup_RN=dedup_RN,
                drop=dropped / copies if pb.overflow != "shared" else 0.0,
                shared=dropped / copies if pb.overflow == "shared" else 0.0,
                reroute=rerouted / copies, overflow=overflow / copies)


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
        return expert_choice_stats(pb)
    if pb.kind == "balanced":
        results = [balanced_step(pb)]
    else:
        rng = np.random.default_rng(seed)
        p_list = [p for row in pb.p_SE for p in
                  (drift_steps(row, pb.drift, DRIFT_DRAWS, rng) if pb.drift > 0 else row[None, :])]
        results = [_step(pb, p) for p in p_list]
    mean = {key: results[0][key] if len(results) == 1 else np.mean([r[key] for r in results], axis=0)
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
