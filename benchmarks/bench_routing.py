"""Routing speed benchmark (not a test): Numba Monte Carlo vs a plain vectorized numpy sampler.

T = 1,048,576 tokens, E = 256, k = 8, Zipf(1.2), EP = 32, dropless; both route one step with
the same model (successive sampling of k distinct experts from p, token i on rank i mod EP)
and tally copies per slot and the rank x rank traffic matrix. Prints the ratio measured in
this run and token-choices per second per core. ``--grid`` also runs the issue's full
analytic-vs-Monte-Carlo grid. Run: ``python benchmarks/bench_routing.py [--grid]``.
"""
from __future__ import annotations

import sys
import time

import numba
import numpy as np

from moesim.routing import build_problem, route
from moesim.routing.montecarlo import StepSampler

T, E, K, EP = 1 << 20, 256, 8, 32


def numpy_step(p_E, slot_rank_E, R, rng, chunk=1 << 17):
    """Successive sampling, vectorized: draw k experts with replacement by inverse CDF, redraw
    the duplicates until every row is distinct (same distribution as the Numba kernel)."""
    cdf_E = np.cumsum(p_E)
    cdf_E[-1] = 1.0
    load_E = np.zeros(E, dtype=np.int64)
    traffic_RR = np.zeros((R, R), dtype=np.int64)
    for t0 in range(0, T, chunk):
        n = min(chunk, T - t0)
        choice_TK = np.searchsorted(cdf_E, rng.random((n, K)), side="right")
        for j in range(1, K):  # column j must differ from columns < j: redraw until it does
            while True:
                dup = (choice_TK[:, :j] == choice_TK[:, j:j + 1]).any(axis=1)
                if not dup.any():
                    break
                choice_TK[dup, j] = np.searchsorted(cdf_E, rng.random(dup.sum()), side="right")
        load_E += np.bincount(choice_TK.ravel(), minlength=E)
        src_T = (t0 + np.arange(n)) % R
        np.add.at(traffic_RR, (np.repeat(src_T, K), slot_rank_E[choice_TK.ravel()]), 1)
    return load_E, traffic_RR


def bench_speed():
    pb = build_problem(E, K, T, ep=EP, skew="zipf:1.2")
    sampler = StepSampler(pb)
    rng = np.random.default_rng(0)
    sampler.sample(rng)  # compile / load the cache
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        st = sampler.sample(rng)
    numba_s = (time.perf_counter() - t) / reps
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    sampler1 = StepSampler(pb, threads=1)
    sampler1.sample(rng)
    t = time.perf_counter()
    for _ in range(reps):
        sampler1.sample(rng)
    numba1_s = (time.perf_counter() - t) / reps
    numba.set_num_threads(threads)
    t = time.perf_counter()
    load_E, _ = numpy_step(pb.p_E, pb.placement.slot_rank_P, EP, rng)
    numpy_s = time.perf_counter() - t
    # same sampler: per-expert shares agree (hot expert ~93% of tokens)
    assert np.allclose(load_E / T, st.load_P / T, atol=0.01)
    choices = T * K
    print(f"T={T} E={E} k={K} zipf:1.2 EP={EP} dropless, {threads} threads")
    print(f"numba ({threads} threads): {numba_s * 1e3:.1f} ms/step = {choices / numba_s / 1e6:.1f} M choices/s "
          f"= {choices / numba_s / threads / 1e6:.1f} M/s per core")
    print(f"numba (1 thread):  {numba1_s * 1e3:.1f} ms/step = {choices / numba1_s / 1e6:.1f} M choices/s per core")
    print(f"numpy vectorized:  {numpy_s * 1e3:.1f} ms/step = {choices / numpy_s / 1e6:.2f} M choices/s")
    print(f"speed-up numba/numpy: {numpy_s / numba_s:.1f}x ({threads} threads), {numpy_s / numba1_s:.1f}x (1 thread)")
    for args in [dict(), dict(capacity_factor=1.25), dict(ep=72, redundant_experts=32, n_groups=8, topk_groups=4)]:
        route(E, K, 4096 + 1, ep=args.pop("ep", 32), **args)  # warm
    t = time.perf_counter()
    n = 0
    for tok in (4096, 8192, 16384, 65536, 1 << 20):
        for cf in (None, 1.0, 1.25):
            route(E, K, tok, ep=32, capacity_factor=cf)
            n += 1
    print(f"analytic uniform (uncached): {(time.perf_counter() - t) / n * 1e3:.1f} ms per configuration")


def bench_grid():
    worst = 0.0
    for skew in ("uniform", "zipf:1.2"):
        for tok in (256, 4096, 65536):
            for e in (8, 64, 256):
                for k in (1, 2, 8):
                    for ep in (1, 8, 32):
                        if e % ep:
                            continue
                        for cf in (None, 1.25):
                            a = route(e, k, tok, ep=ep, skew=skew, capacity_factor=cf)
                            m = route(e, k, tok, ep=ep, skew=skew, capacity_factor=cf, engine="montecarlo",
                                      samples=max(8, min(400, 2_000_000 // (tok * k))))
                            r = abs(a.rank_tokens_max / m.rank_tokens_max - 1)
                            dd = abs(a.drop_fraction - m.drop_fraction)
                            ok = r < 0.03 and (dd < 0.002 if m.drop_fraction < 0.05 else dd < 0.03 * m.drop_fraction)
                            worst = max(worst, r)
                            if not ok:
                                print("MISS", skew, tok, e, k, ep, cf, a.rank_tokens_max, m.rank_tokens_max,
                                      a.drop_fraction, m.drop_fraction)
    print(f"grid done: worst E[max rank load] relative difference {worst:.4f}")


if __name__ == "__main__":
    bench_speed()
    if "--grid" in sys.argv:
        bench_grid()
