"""GEMM-shape predictions per second through the vectorized path (issue 4 goal: >= 1,000,000/s).

Run: python benchmarks/bench_compute.py [n_shapes]. Reports shapes/s for gemm_time_arrays on a
random grid of (m, n, k) and the ratio to the goal, measured in this one run.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from moesim.catalog import load_profile
from moesim.compute.gemm import gemm_time_arrays

GOAL = 1_000_000


def main(n_shapes: int = 2_000_000) -> float:
    rng = np.random.default_rng(0)
    m = rng.integers(1, 16384, n_shapes)
    n = rng.integers(1, 32768, n_shapes)
    k = rng.integers(1, 32768, n_shapes)
    hw = load_profile("h800-sxm")
    gemm_time_arrays(hw, m[:10], n[:10], k[:10], "fp8")  # compile / load the numba cache
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        gemm_time_arrays(hw, m, n, k, "fp8")
        best = min(best, time.perf_counter() - t0)
    rate = n_shapes / best
    print(f"gemm_time_arrays: {n_shapes:,} shapes in {best:.3f} s = {rate:,.0f} shapes/s "
          f"({rate / GOAL:.1f}x the {GOAL:,}/s goal)")
    return rate


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000)
