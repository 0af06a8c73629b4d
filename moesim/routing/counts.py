"""Per-token counts for the analytic engine: how many of a token's k picks carry a label.

Legend: E experts, G groups, L labels (ranks, nodes or single experts), K top-k, M experts of
a label inside the token's groups.

A label is any partition of the experts (the ranks holding them, their nodes, or the experts
themselves). ``label_counts`` returns ``c[l, j] = P(j of a token's k picks carry label l)``:

* uniform popularity: the token picks a uniformly random ``tg``-subset of the ``G`` groups,
  then ``k`` distinct experts uniformly among the ``N = tg * E/G`` experts there, so given
  the ``M`` experts of label ``l`` inside its groups, the count is Hypergeometric(N, M, k):
  ``C(M, j) C(N - M, k - j) / C(N, k)``. The law of M (a sum over the chosen groups of the
  label's experts per group) is a small dynamic program over the groups; it depends only on
  the sorted per-group counts of the label, so equal labels are computed once (and cached);
* skewed popularity: the exponential race (race.py), mixed over the token's group subsets.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
from scipy import special

from moesim.errors import SpecError
from moesim.routing.race import race_counts

MAX_GROUP_SEQUENCES = 20000


@functools.lru_cache(maxsize=256)
def _hypergeom_MK(N: int, k: int) -> np.ndarray:
    """``H[M, j]``: Hypergeometric pmf of j marked among k drawn from N with M marked,
    (N+1) x (k+1) (log-binomials by scipy.special.gammaln; zero outside the support)."""
    M = np.arange(N + 1.0)[:, None]
    j = np.arange(k + 1.0)[None, :]

    def log_comb(n, r):
        with np.errstate(invalid="ignore"):
            return special.gammaln(n + 1) - special.gammaln(r + 1) - special.gammaln(n - r + 1)

    ok = (j <= M) & (k - j <= N - M)
    with np.errstate(invalid="ignore"):
        log_MK = log_comb(M, j) + log_comb(N - M, k - j) - log_comb(float(N), float(k))
    out = np.where(ok, np.exp(np.where(ok, log_MK, 0.0)), 0.0)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=65536)
def uniform_count_pmf(m_key: tuple[int, ...], tg: int, group_size: int, k: int) -> np.ndarray:
    """Count pmf (k+1) of a label with ``m_key[g]`` experts in group g (any order), uniform
    popularity, ``tg`` of ``len(m_key)`` groups picked uniformly, then k experts there."""
    dp = np.zeros((tg + 1, group_size * tg + 1))  # dp[n, M]: n groups chosen holding M label experts
    dp[0, 0] = 1.0
    for m in m_key:
        new = dp.copy()
        new[1:, m:] += dp[:-1, : dp.shape[1] - m]
        dp = new
    weight_M = dp[tg] / dp[tg].sum()
    out = weight_M @ _hypergeom_MK(group_size * tg, k)
    out.setflags(write=False)
    return out


def distinct_rows(x_RV: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first_U, inv_R)``: the first row index of each distinct row of ``x_RV`` (in order of
    first appearance) and the distinct-row index of every row, so equal rows share one
    computation. Rows compare by their bytes (exact)."""
    x_RV = np.ascontiguousarray(x_RV)
    R = x_RV.shape[0]
    if R == 0 or np.array_equal(x_RV, np.broadcast_to(x_RV[0], x_RV.shape)):
        return np.zeros(min(R, 1), dtype=np.int64), np.zeros(R, dtype=np.int64)
    rows_R = x_RV.reshape(R, -1).view(np.dtype((np.void, x_RV.dtype.itemsize * x_RV[0].size))).ravel()
    _, first_U, inv_R = np.unique(rows_R, return_index=True, return_inverse=True)
    order_U = np.argsort(first_U, kind="stable")
    rank_U = np.empty_like(order_U)
    rank_U[order_U] = np.arange(order_U.size)
    return first_U[order_U], rank_U[inv_R.ravel()]


def uniform_counts(group_E: np.ndarray, n_groups: int, tg: int, k: int, labels_E: np.ndarray,
                   n_labels: int) -> np.ndarray:
    """``n_labels x (k+1)`` count pmfs under uniform popularity (see the module docstring)."""
    E = group_E.size
    m_LG = np.bincount(labels_E * n_groups + group_E, minlength=n_labels * n_groups)
    m_LG = np.sort(m_LG.reshape(n_labels, n_groups), axis=1)  # the law is symmetric in the groups
    first_U, inv_L = distinct_rows(m_LG)
    table = np.array([uniform_count_pmf(tuple(int(v) for v in m_LG[u]), tg, E // n_groups, k)
                      for u in first_U])
    return table[inv_L]


def group_subsets(gmass_G: np.ndarray, tg: int) -> list[tuple[tuple[int, ...], float]]:
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


def label_counts(group_E: np.ndarray, n_groups: int, tg: int, k: int, p_E: np.ndarray, uniform: bool,
                 labels_E: np.ndarray, n_labels: int) -> np.ndarray:
    """``n_labels x (k+1)``: pmf of how many of a token's k picks carry each label."""
    if uniform:
        return uniform_counts(group_E, n_groups, tg, k, labels_E, n_labels)
    gmass_G = np.bincount(group_E, weights=p_E, minlength=n_groups)
    out = np.zeros((n_labels, k + 1))
    for subset, w in group_subsets(gmass_G, tg):
        inside = np.isin(group_E, subset)
        out += w * race_counts(p_E[inside], labels_E[inside], n_labels, k)
    return out
