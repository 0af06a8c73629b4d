"""Routing speed benchmark (not a test): Numba Monte Carlo vs a vectorized numpy sampler, and
the analytic engine's calls per second.

1. Monte Carlo: T = 1,048,576 tokens, E = 256, k = 8, Zipf(1.2) (and uniform), EP = 32,
   dropless. Both samplers route one step with the same model (successive sampling of k
   distinct experts from p, token i on rank i mod EP) and tally copies per slot and the
   rank x rank traffic matrix (the Numba kernel also tallies node-deduplicated tokens, which
   the numpy sampler skips). The numpy sampler is as fast as we could make it: O(1) alias
   draws for whole (tokens x k) blocks, duplicates redrawn only on the rows that have one,
   tallies by ``np.bincount``. Prints the Numba / numpy ratio measured in this run (all
   threads, and one thread) and token-choices per second per core (``numba.set_num_threads(1)``).
2. Analytic: ``route`` calls per second, cold (a distinct token count per call, so no result
   cache hit), for uniform DeepSeek-V3-like routing (E = 256, k = 8, 4 of 8 groups) on EP 8,
   EP 32 and EP 72 with 32 redundant slots (load-aware), T in {256, 4096, 65536}.

``--grid`` also runs the issue's full analytic-vs-Monte-Carlo grid.
Run: ``python benchmarks/bench_routing.py [--grid]``. Times are medians (the machine is shared).
"""
from __future__ import annotations

import sys
import time

import numba
import numpy as np

from moesim.routing import build_problem, route
from moesim.routing.tables import alias_table
from moesim.routing.montecarlo import StepSampler

T, E, K, EP = 1 << 20, 256, 8, 32


def numpy_step(p_E, slot_rank_E, R, rng, chunk=1 << 15):
    """Successive sampling, vectorized: alias draws with replacement for a (chunk x k) block,
    then column j is redrawn (only on the rows where it repeats an earlier column) until the
    row is distinct: the same law as the Numba kernel (rejection of duplicates)."""
    thr_E, alias_E = alias_table(p_E)
    keep_E = thr_E / 4294967296.0
    n_E = p_E.size

    def draw(shape):
        u = rng.random(shape) * n_E
        i = u.astype(np.int64)
        return np.where(u - i < keep_E[i], i, alias_E[i])

    load_E = np.zeros(n_E, dtype=np.int64)
    traffic = np.zeros(R * R, dtype=np.int64)
    for t0 in range(0, T, chunk):
        n = min(chunk, T - t0)
        choice_TK = draw((n, K))
        for j in range(1, K):
            rows = np.arange(n)
            while rows.size:
                dup = (choice_TK[rows, :j] == choice_TK[rows, j:j + 1]).any(axis=1)
                rows = rows[dup]
                if rows.size:
                    choice_TK[rows, j] = draw(rows.size)
        load_E += np.bincount(choice_TK.ravel(), minlength=n_E)
        src_T = (t0 + np.arange(n)) % R
        traffic += np.bincount((src_T[:, None] * R + slot_rank_E[choice_TK]).ravel(), minlength=R * R)
    return load_E, traffic.reshape(R, R)


def _median_time(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_montecarlo(skew: str):
    pb = build_problem(E, K, T, ep=EP, skew=skew)
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    sampler = StepSampler(pb)
    st = sampler.sample(rng)  # compile / load the cache
    numba_s = _median_time(lambda: sampler.sample(rng), 7)
    numba.set_num_threads(1)
    sampler1 = StepSampler(pb, threads=1)
    sampler1.sample(rng)
    numba1_s = _median_time(lambda: sampler1.sample(rng), 7)
    numba.set_num_threads(threads)
    out = {}
    numpy_s = _median_time(lambda: out.setdefault("np", numpy_step(pb.p_E, pb.placement.slot_rank_P, EP, rng)), 3)
    load_E, traffic_RR = out["np"]
    # same sampler: per-expert shares and traffic agree (Zipf: the hot expert is in ~93% of tokens)
    assert np.allclose(load_E / T, st.load_P / T, atol=0.01)
    assert np.allclose(traffic_RR / (T * K), st.traffic_RR / (T * K), atol=0.002)
    choices = T * K
    print(f"Monte Carlo, T={T} E={E} k={K} {skew} EP={EP} dropless ({threads} threads available)")
    print(f"  numba, {threads} threads: {numba_s * 1e3:7.1f} ms/step  {choices / numba_s / 1e6:6.1f} M choices/s")
    print(f"  numba, 1 thread:  {numba1_s * 1e3:7.1f} ms/step  {choices / numba1_s / 1e6:6.1f} M choices/s per core")
    print(f"  numpy vectorized: {numpy_s * 1e3:7.1f} ms/step  {choices / numpy_s / 1e6:6.1f} M choices/s")
    print(f"  speed-up numba/numpy: {numpy_s / numba_s:.1f}x ({threads} threads), {numpy_s / numba1_s:.1f}x (1 thread)")


DSV3 = {"EP 8": dict(ep=8), "EP 32": dict(ep=32),
        "EP 72 + 32 redundant": dict(ep=72, redundant_experts=32, placement="load_aware")}


def bench_analytic(reps: int = 30, **extra):
    label = ", ".join(f"{k}={v}" for k, v in extra.items()) or "dropless"
    print(f"Analytic engine, uniform DeepSeek-V3-like (E=256, k=8, 4 of 8 groups), {label}, cold calls:")
    total, n, offset = 0.0, 0, 0
    for name, kw in DSV3.items():
        route(E, K, 999, n_groups=8, topk_groups=4, **kw, **extra)  # placement and tables built once
        cells = []
        for tokens in (256, 4096, 65536):
            times = []
            for _ in range(reps):
                offset += 1  # a new token count per call: no result-cache hit
                t = time.perf_counter()
                route(E, K, tokens + offset, n_groups=8, topk_groups=4, **kw, **extra)
                times.append(time.perf_counter() - t)
            total += sum(times)
            n += reps
            med = float(np.median(times))
            cells.append(f"T={tokens}: {med * 1e3:5.2f} ms ({1 / med:5.0f}/s)")
        print(f"  {name:22s} " + "  ".join(cells))
    print(f"  overall: {total / n * 1e3:.2f} ms per call = {n / total:.0f} calls/s (mean)")


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
    bench_montecarlo("zipf:1.2")
    bench_montecarlo("uniform")
    bench_analytic()
    bench_analytic(capacity_factor=1.25)
    bench_analytic(skew="balanced")
    if "--grid" in sys.argv:
        bench_grid()
