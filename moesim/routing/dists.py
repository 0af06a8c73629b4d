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
from scipy import stats

# NOTE: wider supports use the normal approximation (loads of thousands of copies, where it
# is accurate to well under 1% on the expected maximum).
MAX_EXACT_SUPPORT = 1 << 15
GRID_POINTS = 4096


@dataclass(frozen=True)
class Dist:
    mean: float
    var: float
    offset: int = 0
    pmf_V: np.ndarray | None = None  # None: normal approximation

    @property
    def sd(self) -> float:
        return float(np.sqrt(max(self.var, 0.0)))

    def bounds(self, f: float) -> tuple[float, float]:
        """Support after stretching deviations by ``f`` (12 sd for the normal form)."""
        if self.pmf_V is None:
            return self.mean - 12 * f * self.sd, self.mean + 12 * f * self.sd + 1
        nz = np.flatnonzero(self.pmf_V > 1e-300)
        lo, hi = self.offset + nz[0], self.offset + nz[-1]
        return self.mean + f * (lo - self.mean), self.mean + f * (hi - self.mean) + 1

    def cdf(self, x_X: np.ndarray, f: float = 1.0) -> np.ndarray:
        """P(load <= x) with deviations from the mean stretched by ``f``."""
        y_X = self.mean + (x_X - self.mean) / f
        if self.pmf_V is None:
            if self.sd == 0:
                return (y_X >= self.mean).astype(float)
            return stats.norm.cdf((np.floor(y_X) + 0.5 - self.mean) / self.sd)
        c_V = np.minimum(np.cumsum(self.pmf_V), 1.0)
        i_X = np.floor(y_X).astype(np.int64) - self.offset
        out = np.where(i_X >= c_V.size, 1.0, c_V[np.clip(i_X, 0, c_V.size - 1)])
        return np.where(i_X < 0, 0.0, out)


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
        spec *= np.fft.rfft(c, size) ** n
    pmf = np.clip(np.fft.irfft(spec, size)[:width], 0.0, None)
    return Dist(mean, var, 0, pmf / pmf.sum())


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
    pmf_V = stats.binom.pmf(v_V, n, p)
    if cap is not None and hi == cap:
        pmf_V[-1] = stats.binom.sf(cap - 1, n, p)
    return from_pmf(pmf_V / pmf_V.sum(), lo)


def convolve(dists: list[Dist]) -> Dist:
    """Sum of independent loads (exact if every part is tabulated and the support is small)."""
    mean = sum(d.mean for d in dists)
    var = sum(d.var for d in dists)
    if any(d.pmf_V is None for d in dists) or sum(d.pmf_V.size - 1 for d in dists) + 1 > MAX_EXACT_SUPPORT:
        return Dist(mean, var)
    width = sum(d.pmf_V.size - 1 for d in dists) + 1
    size = 1 << int(np.ceil(np.log2(width)))
    spec = np.ones(size // 2 + 1, dtype=complex)
    for d in dists:
        spec *= np.fft.rfft(d.pmf_V, size)
    pmf = np.clip(np.fft.irfft(spec, size)[:width], 0.0, None)
    return from_pmf(pmf / pmf.sum(), sum(d.offset for d in dists))


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
    b = np.array([d.bounds(f) for d in dists])
    lo, hi = float(np.floor(b[:, 0].min())), float(np.ceil(b[:, 1].max()))
    step = max(1.0, (hi - lo) / GRID_POINTS) if f == 1.0 else (hi - lo) / GRID_POINTS
    x_X = lo + (np.arange(int(np.ceil((hi - lo) / step))) + 0.5) * step
    cdf_X = np.ones_like(x_X)
    counts: dict[int, list] = {}
    for d in dists:  # identical objects (cached) are evaluated once
        counts.setdefault(id(d), [d, 0])[1] += 1
    for d, n in counts.values():
        cdf_X *= d.cdf(x_X, f) ** n
    emax = lo + float(np.sum(1.0 - cdf_X) * step)
    return emax, x_X - 0.5 * step, cdf_X
