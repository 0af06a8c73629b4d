"""Per-token counts under successive sampling, by the exponential race (no sampling).

Legend: U experts of the universe (the token's allowed experts), K top-k, X time points.

Successive sampling of K experts proportionally to ``p`` is the same as giving each expert an
exponential clock with rate ``p_u`` and taking the first K to ring. Split the universe into
labelled parts (the experts of one rank, one node, or a single expert). For part ``g`` with
``A(t)`` of its clocks rung by time ``t`` and ``B(t)`` the rest, the part receives at most j
of the K picks iff the others reach ``K - j`` before the part reaches ``j + 1``:

    P(c_g <= j) = ∫_0^∞ P(A(t) <= j) dP(B(t) >= K - j)                            (1)

``A(t)`` and ``B(t)`` are Poisson-binomial with success probabilities ``1 - exp(-p_u t)``.
We evaluate (1) as a Stieltjes sum on a log-spaced time grid (trapezoid in the integrand),
with the counts truncated at K (only values below K enter (1)); the "rest" of each part comes
from prefix and suffix products over the parts, so one pass costs O(U K + parts K^2) per time
(``_race_kernel``: parts holding none of the universe's experts left out, counts bounded by the
part sizes; the plain version ``_race_kernel_reference`` is kept as the oracle).
"""
from __future__ import annotations

import numpy as np
from numba import njit

GRID_POINTS = 600


@njit(cache=True)
def _conv_trunc(a, na, b, nb, out):
    """``out = (a * b)[:K]`` with ``a`` zero from index ``na`` and ``b`` from ``nb`` on: the terms
    skipped are exact zeros, so the sums are those of the full product, added in the same order."""
    K = out.size
    out[:] = 0.0
    for i in range(min(K, na)):
        if a[i] == 0.0:
            continue
        for j in range(min(K - i, nb)):
            out[i + j] += a[i] * b[j]


@njit(cache=True)
def _tails(pmf_K, rest, K, a_K, b_K1):
    """A part's ``P(A <= j)`` (j < K, from its truncated count pmf) into ``a_K`` and the rest's
    ``P(B >= m)`` (m = 0..K, from the rest's pmf) into ``b_K1``."""
    c = 0.0
    for j in range(K):
        c += pmf_K[j]
        a_K[j] = c
    c = 0.0
    b_K1[0] = 1.0
    for m in range(1, K + 1):
        c += rest[m - 1]
        b_K1[m] = 1.0 - c


@njit(cache=True)
def _tails_at_infinity(size_G, n_all, K, a_now, b_now):
    """The tails once every clock has rung: a part holds all its experts, the rest all others."""
    for g in range(size_G.size):
        for j in range(K):
            a_now[g, j] = 1.0 if size_G[g] <= j else 0.0
        for m in range(K + 1):
            b_now[g, m] = 1.0 if n_all - size_G[g] >= m else 0.0


@njit(cache=True)
def _stieltjes_step(le_GK, a_now, a_prev, b_now, b_prev, K):
    """One trapezoid term of (1) per part and j, then the current tails become the previous."""
    for g in range(le_GK.shape[0]):
        for j in range(K):
            db = b_now[g, K - j] - b_prev[g, K - j]
            le_GK[g, j] += db * 0.5 * (a_now[g, j] + a_prev[g, j])
    a_prev[:, :] = a_now
    b_prev[:, :] = b_now


@njit(cache=True)
def _race_kernel(p_U, label_U, n_parts, K, t_X):
    """(1) for every part, on the parts that hold some of the universe's experts only.

    A part with no expert of the universe never receives a pick: (1) telescopes to
    P(B(inf) >= K - j), 1 when the universe holds K experts or more (the plain quadrature gets
    it up to rounding, ~1e-16), and its count pmf is the identity of the
    convolutions, so it is left out of the prefix and suffix products (which are then the same
    floating-point sums). A part of ``s`` experts has a count pmf that is zero above ``s``: the
    Poisson-binomial update and the convolutions stop there (skipped terms are exact zeros).
    Present parts come out bit-identical to ``_race_kernel_reference``; the expert labelling
    (one part per expert, half of them outside a 4-of-8-group universe) costs ~4x less."""
    size_all = np.zeros(n_parts, dtype=np.int64)
    for u in range(p_U.size):
        size_all[label_U[u]] += 1
    pos = np.full(n_parts, -1, dtype=np.int64)
    n = 0
    for g in range(n_parts):
        if size_all[g] > 0:
            pos[g] = n
            n += 1
    part_N = np.zeros(n, dtype=np.int64)
    for g in range(n_parts):
        if pos[g] >= 0:
            part_N[pos[g]] = g
    lab_U = np.empty(p_U.size, dtype=np.int64)
    for u in range(p_U.size):
        lab_U[u] = pos[label_U[u]]
    size_G = np.zeros(n, dtype=np.int64)
    for g in range(n):
        size_G[g] = size_all[part_N[g]]
    len_G = np.minimum(size_G + 1, K)  # nonzero entries of a part's truncated count pmf
    len_pre = np.ones(n + 1, dtype=np.int64)
    len_suf = np.ones(n + 1, dtype=np.int64)
    for g in range(n):
        len_pre[g + 1] = min(K, len_pre[g] + size_G[g])
    for g in range(n - 1, -1, -1):
        len_suf[g] = min(K, len_suf[g + 1] + size_G[g])
    seen_G = np.zeros(n, dtype=np.int64)
    le_GK = np.zeros((n, K))  # accumulates P(c_g <= j), j < K
    pmf_GK = np.zeros((n, K))
    pre = np.zeros((n + 1, K))
    suf = np.zeros((n + 1, K))
    rest = np.zeros(K)
    a_prev = np.ones((n, K))  # values at t = 0: nothing has rung
    b_prev = np.zeros((n, K + 1))  # P(B >= m), m = 0..K
    b_prev[:, 0] = 1.0
    a_now = np.zeros((n, K))
    b_now = np.zeros((n, K + 1))
    for it in range(t_X.size + 1):
        if it < t_X.size:
            t = t_X[it]
            pmf_GK[:, :] = 0.0
            pmf_GK[:, 0] = 1.0
            seen_G[:] = 0
            for u in range(p_U.size):
                q = 1.0 - np.exp(-p_U[u] * t)
                g = lab_U[u]
                row = pmf_GK[g]
                for v in range(min(K - 1, seen_G[g] + 1), 0, -1):
                    row[v] = row[v] * (1.0 - q) + row[v - 1] * q
                row[0] *= 1.0 - q
                seen_G[g] += 1
            pre[0, :] = 0.0
            pre[0, 0] = 1.0
            suf[n, :] = 0.0
            suf[n, 0] = 1.0
            for g in range(n):
                _conv_trunc(pre[g], len_pre[g], pmf_GK[g], len_G[g], pre[g + 1])
            for g in range(n - 1, -1, -1):
                _conv_trunc(suf[g + 1], len_suf[g + 1], pmf_GK[g], len_G[g], suf[g])
            for g in range(n):
                _conv_trunc(pre[g], len_pre[g], suf[g + 1], len_suf[g + 1], rest)
                _tails(pmf_GK[g], rest, K, a_now[g], b_now[g])
        else:  # t = infinity: every clock has rung
            _tails_at_infinity(size_G, p_U.size, K, a_now, b_now)
        _stieltjes_step(le_GK, a_now, a_prev, b_now, b_prev, K)
    out = np.zeros((n_parts, K))
    for j in range(K):  # an absent part: the telescoped sum P(B(inf) >= K - j), B = the whole universe
        out[:, j] = 1.0 if p_U.size >= K - j else 0.0
    for g in range(n):
        out[part_N[g], :] = le_GK[g]
    return out


@njit(cache=True)
def _conv_trunc_reference(a, b, out):
    K = out.size
    out[:] = 0.0
    for i in range(K):
        if a[i] == 0.0:
            continue
        for j in range(K - i):
            out[i + j] += a[i] * b[j]


@njit(cache=True)
def _race_kernel_reference(p_U, label_U, n_parts, K, t_X):
    """The plain quadrature of (1) over every part (the oracle of ``_race_kernel``: tests/test_race.py,
    benchmarks/bench_race.py)."""
    size_G = np.zeros(n_parts, dtype=np.int64)
    for u in range(p_U.size):
        size_G[label_U[u]] += 1
    le_GK = np.zeros((n_parts, K))  # accumulates P(c_g <= j), j < K
    pmf_GK = np.zeros((n_parts, K))
    pre = np.zeros((n_parts + 1, K))
    suf = np.zeros((n_parts + 1, K))
    rest = np.zeros(K)
    a_prev = np.ones((n_parts, K))  # values at t = 0: nothing has rung
    b_prev = np.zeros((n_parts, K + 1))  # P(B >= m), m = 0..K
    b_prev[:, 0] = 1.0
    a_now = np.zeros((n_parts, K))
    b_now = np.zeros((n_parts, K + 1))
    for it in range(t_X.size + 1):
        if it < t_X.size:
            t = t_X[it]
            pmf_GK[:, :] = 0.0
            pmf_GK[:, 0] = 1.0
            for u in range(p_U.size):
                q = 1.0 - np.exp(-p_U[u] * t)
                row = pmf_GK[label_U[u]]
                for v in range(K - 1, 0, -1):
                    row[v] = row[v] * (1.0 - q) + row[v - 1] * q
                row[0] *= 1.0 - q
            pre[0, :] = 0.0
            pre[0, 0] = 1.0
            suf[n_parts, :] = 0.0
            suf[n_parts, 0] = 1.0
            for g in range(n_parts):
                _conv_trunc_reference(pre[g], pmf_GK[g], pre[g + 1])
            for g in range(n_parts - 1, -1, -1):
                _conv_trunc_reference(suf[g + 1], pmf_GK[g], suf[g])
            for g in range(n_parts):
                _conv_trunc_reference(pre[g], suf[g + 1], rest)
                _tails(pmf_GK[g], rest, K, a_now[g], b_now[g])
        else:  # t = infinity: every clock has rung
            _tails_at_infinity(size_G, p_U.size, K, a_now, b_now)
        _stieltjes_step(le_GK, a_now, a_prev, b_now, b_prev, K)
    return le_GK


def race_counts(p_U: np.ndarray, label_U: np.ndarray, n_parts: int, k: int, reference: bool = False) -> np.ndarray:
    """``P[g, j]``: probability that a token's k picks include exactly j experts of part g.

    ``p_U`` (float64) popularity of the universe's experts (any positive scale), ``label_U``
    (int64) the part of each. Returns float64 ``n_parts x (k + 1)``, rows summing to 1.
    ``reference``: the plain kernel (``_race_kernel_reference``), for tests and benchmarks."""
    p_U = np.asarray(p_U, dtype=np.float64)
    p_U = p_U / p_U.sum()
    t_X = np.geomspace(1e-4 / p_U.max(), 60.0 / p_U.min(), GRID_POINTS)
    kernel = _race_kernel_reference if reference else _race_kernel
    le_GK = kernel(p_U, np.asarray(label_U, dtype=np.int64), int(n_parts), int(k), t_X)
    cdf_GK1 = np.concatenate([np.clip(le_GK, 0.0, 1.0), np.ones((n_parts, 1))], axis=1)
    cdf_GK1 = np.maximum.accumulate(cdf_GK1, axis=1)
    return np.diff(cdf_GK1, axis=1, prepend=0.0)
