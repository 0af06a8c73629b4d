"""Load distributions for the analytic engine: sums of per-token counts, clipped binomials,
and the expected maximum over ranks or experts.

A load distribution is a :class:`Dist`: either a discrete pmf on ``offset + 0, 1, 2, ...`` or a
normal approximation (``mean``, ``sd``, used when the support is too wide to tabulate;
integer loads get the continuity correction). Legend: V values of a pmf, X grid points.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import special

# NOTE: wider supports use the normal approximation (loads of thousands of copies, where it
# is accurate to well under 1% on the expected maximum).
MAX_EXACT_SUPPORT = 1 << 15
GRID_POINTS = 4096
FFT_FLOOR = 1e-12


@dataclass(frozen=True)
class Dist:
    mean: float
    var: float
    offset: int = 0
    pmf_V: np.ndarray | None = None  # None: normal approximation

    @property
    def sd(self) -> float:
        return float(np.sqrt(max(self.var, 0.0)))

    @functools.cached_property
    def _support(self) -> tuple[int, int]:
        nz = np.flatnonzero(self.pmf_V > 1e-300)
        return self.offset + int(nz[0]), self.offset + int(nz[-1])

    @functools.cached_property
    def _cdf_V(self) -> np.ndarray:
        c_V = np.minimum(np.cumsum(self.pmf_V), 1.0)
        c_V[-1] = 1.0  # the pmf is normalised: round-off only
        return c_V

    def bounds(self, f: float) -> tuple[float, float]:
        """Support after stretching deviations by ``f`` (12 sd for the normal form)."""
        if self.pmf_V is None:
            return self.mean - 12 * f * self.sd, self.mean + 12 * f * self.sd + 1
        lo, hi = self._support
        return self.mean + f * (lo - self.mean), self.mean + f * (hi - self.mean) + 1

    def cdf(self, x_X: np.ndarray, f: float = 1.0) -> np.ndarray:
        """P(load <= x) with deviations from the mean stretched by ``f``."""
        y_X = self.mean + (x_X - self.mean) / f
        if self.pmf_V is None:
            if self.sd == 0:
                return (y_X >= self.mean).astype(float)
            return special.ndtr((np.floor(y_X) + 0.5 - self.mean) / self.sd)
        i_X = np.floor(y_X).astype(np.int64) - self.offset
        out = self._cdf_V.take(i_X, mode="clip")  # at or past the top: 1
        out[i_X < 0] = 0.0
        return out


def from_pmf(pmf_V: np.ndarray, offset: int = 0) -> Dist:
    v_V = offset + np.arange(pmf_V.size)
    mean = float(pmf_V @ v_V)
    return Dist(mean, float(pmf_V @ (v_V - mean) ** 2), offset, pmf_V)


def point(value: float) -> Dist:
    return Dist(float(value), 0.0, int(round(value)), np.array([1.0]))


def token_sum(parts: list[tuple[np.ndarray, int]]) -> Dist:
    """Distribution of a sum over tokens: ``n`` iid tokens with per-token count pmf ``c``, for
    each ``(c, n)`` in ``parts``. Exact by FFT (characteristic function to the power n)
    while the support is at most MAX_EXACT_SUPPORT, else normal with the exact moments."""
    mean = var = 0.0
    width = 1
    for c, n in parts:
        j = np.arange(c.size)
        m = float(c @ j)
        mean += n * m
        var += n * float(c @ (j - m) ** 2)
        width += n * (c.size - 1)
    if width > MAX_EXACT_SUPPORT:
        return Dist(mean, var)
    size = 1 << int(np.ceil(np.log2(width + 1)))
    spec = np.ones(size // 2 + 1, dtype=complex)
    for c, n in parts:
        spec *= _power(np.fft.rfft(c, size), n)
    pmf, offset = _trimmed(np.fft.irfft(spec, size)[:width], 0)
    return Dist(mean, var, offset, pmf / pmf.sum())


def _power(z_F: np.ndarray, n: int) -> np.ndarray:
    """``z_F ** n`` for an integer ``n >= 0`` by repeated squaring (complex ``**`` goes through
    exp/log: slower and less accurate)."""
    out = np.ones_like(z_F)
    while n:
        if n & 1:
            out = out * z_F
        n >>= 1
        if n:
            z_F = z_F * z_F
    return out


def _binom_pmf(v_V: np.ndarray, n: int, p: float) -> np.ndarray:
    """Binomial(n, p) pmf at integers ``v_V`` (log-gamma form, scipy.special)."""
    if p <= 0.0 or p >= 1.0:
        return (v_V == (n if p >= 1.0 else 0)).astype(float)
    log_V = (special.gammaln(n + 1.0) - special.gammaln(v_V + 1.0) - special.gammaln(n - v_V + 1.0)
             + v_V * np.log(p) + (n - v_V) * np.log1p(-p))
    return np.exp(log_V)


@functools.lru_cache(maxsize=65536)
def clipped_binomial(n: int, p: float, cap: int | None) -> Dist:
    """``min(Binomial(n, p), cap)`` (``cap=None``: no clip), tabulated on mean +- 12 sd.
    Cached: equal arguments return the same object (max_distribution groups those)."""
    sd = np.sqrt(n * p * (1 - p))
    lo = int(max(0, np.floor(n * p - 12 * sd - 1)))
    hi = int(min(n, np.ceil(n * p + 12 * sd + 1)))
    if cap is not None:
        hi, lo = min(hi, cap), min(lo, cap)
    v_V = np.arange(lo, hi + 1)
    pmf_V = _binom_pmf(v_V.astype(float), n, p)
    if cap is not None and hi == cap:
        pmf_V[-1] = special.bdtrc(cap - 1, n, p) if cap >= 1 else 1.0  # P(X >= cap)
    return from_pmf(pmf_V / pmf_V.sum(), lo)


def convolve(dists: list[Dist]) -> Dist:
    """Sum of independent loads (exact if every part is tabulated and the support is small)."""
    mean = sum(d.mean for d in dists)
    var = sum(d.var for d in dists)
    if any(d.pmf_V is None for d in dists) or sum(d.pmf_V.size - 1 for d in dists) + 1 > MAX_EXACT_SUPPORT:
        return Dist(mean, var)
    if len(dists) == 1:
        return dists[0]
    width = sum(d.pmf_V.size - 1 for d in dists) + 1
    size = 1 << int(np.ceil(np.log2(width)))
    spec = np.ones(size // 2 + 1, dtype=complex)
    for d, n in _grouped(dists):
        spec *= _power(np.fft.rfft(d.pmf_V, size), n)
    pmf, offset = _trimmed(np.fft.irfft(spec, size)[:width], sum(d.offset for d in dists))
    return from_pmf(pmf / pmf.sum(), offset)


def _trimmed(pmf_V: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """An FFT result without its round-off: negatives clipped, and the tails below
    ``FFT_FLOOR`` x max cut off (round-off there is ~1e-17 x max, of either sign, and would
    otherwise decide the support, hence the grid of :func:`max_distribution`)."""
    pmf_V = np.clip(pmf_V, 0.0, None)
    keep = np.flatnonzero(pmf_V > FFT_FLOOR * pmf_V.max())
    return pmf_V[keep[0]: keep[-1] + 1], offset + int(keep[0])


def _grouped(dists: list[Dist]) -> list[tuple[Dist, int]]:
    """``(dist, multiplicity)`` of the distinct objects in ``dists`` (identity, first seen first)."""
    counts: dict[int, list] = {}
    for d in dists:
        counts.setdefault(id(d), [d, 0])[1] += 1
    return [(d, n) for d, n in counts.values()]


def rescale(d: Dist, var: float) -> Dist:
    """The same distribution with its variance set to ``var`` (deviations stretched)."""
    if d.var <= 0 or var <= 0:
        return d
    if d.pmf_V is None:
        return Dist(d.mean, var)
    return _Stretched(d.mean, var, d.offset, d.pmf_V, float(np.sqrt(var / d.var)))


@dataclass(frozen=True)
class _Stretched(Dist):
    stretch: float = 1.0

    def cdf(self, x_X, f: float = 1.0):
        return Dist.cdf(self, x_X, f * self.stretch)

    def bounds(self, f: float):
        return Dist.bounds(self, f * self.stretch)


def max_distribution(dists: list[Dist], f: float = 1.0) -> tuple[float, np.ndarray, np.ndarray]:
    """``(E[max], values_X, cdf_X)`` of the maximum of independent loads, each with its
    deviations stretched by ``f`` (the fixed-sum correction, see analytic.py).

    E[max] = x0 + ∫_{x0}^∞ (1 - Π_r F_r(x)) dx, midpoint rule on a grid of at most
    GRID_POINTS cells (unit cells for integer loads on narrow supports)."""
    return max_of_groups(_grouped(dists), f)  # identical objects (cached) are evaluated once


def max_of_groups(groups: list[tuple[Dist, int]], f: float = 1.0) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`max_distribution` of ``n`` independent copies of each ``(dist, n)`` in ``groups``."""
    b = np.array([d.bounds(f) for d, _ in groups])
    lo, hi = float(np.floor(b[:, 0].min())), float(np.ceil(b[:, 1].max()))
    step = max(1.0, (hi - lo) / GRID_POINTS) if f == 1.0 else (hi - lo) / GRID_POINTS
    x_X = lo + (np.arange(int(np.ceil((hi - lo) / step))) + 0.5) * step
    cdf_X = np.ones_like(x_X)
    for d, n in groups:
        c_X = d.cdf(x_X, f)
        cdf_X *= c_X if n == 1 else c_X ** n
    emax = lo + float(np.sum(1.0 - cdf_X) * step)
    return emax, x_X - 0.5 * step, cdf_X


def expected_order_stats(dists: list[Dist]) -> np.ndarray:
    """E[j-th largest] of independent loads (j = 1..L), via P(X_(j) > x) on a grid of at most
    512 cells: E[X_(j)] = lo + ∫ P(at least j of the L loads exceed x) dx.

    The count of loads exceeding x is Poisson-binomial in the per-load tails q(x) (a dynamic
    program over the loads); with one distinct distribution it is Binomial(L, q(x))."""
    groups = _grouped(dists)
    b = np.array([d.bounds(1.0) for d, _ in groups])
    lo, hi = np.floor(b[:, 0].min()), np.ceil(b[:, 1].max())
    step = max(1.0, (hi - lo) / 512)
    x_X = lo + (np.arange(int(np.ceil((hi - lo) / step))) + 0.5) * step
    L = len(dists)
    if len(groups) == 1:  # Binomial(L, q(x)) pmf in log form (xlogy: 0 log 0 = 0), tail sums
        q_X1 = np.clip(1.0 - groups[0][0].cdf(x_X), 0.0, 1.0)[:, None]
        j_J = np.arange(L + 1.0)[None, :]
        log_XJ = (special.gammaln(L + 1.0) - special.gammaln(j_J + 1) - special.gammaln(L - j_J + 1)
                  + special.xlogy(j_J, q_X1) + special.xlog1py(L - j_J, -q_X1))
        at_least_XL = np.cumsum(np.exp(log_XJ)[:, ::-1], axis=1)[:, ::-1][:, 1:]
        return lo + at_least_XL.sum(axis=0) * step
    tail = np.zeros((x_X.size, L + 1))  # tail[:, j] = P(#exceeding x == j)
    tail[:, 0] = 1.0
    for d in dists:
        q_X = 1.0 - d.cdf(x_X)
        tail[:, 1:] = tail[:, 1:] * (1 - q_X[:, None]) + tail[:, :-1] * q_X[:, None]
        tail[:, 0] *= 1 - q_X
    at_least_XL = np.cumsum(tail[:, ::-1], axis=1)[:, ::-1][:, 1:]  # P(at least j exceed), j=1..L
    return lo + at_least_XL.sum(axis=0) * step
