"""Exponential-race kernel speed (not a test): ``_race_kernel`` (parts outside the universe left
out, counts bounded by part sizes) vs ``_race_kernel_reference`` (the plain quadrature), as a ratio.

Inputs: the README's ``moesim route --model deepseek-v3 --tokens 4096 --ep 32 --ranks-per-node 8
--skew zipf:1.2 --capacity-factor 1.25 --overflow reroute --engine analytic`` step: E = 256,
k = 8, 4 of 8 groups, Zipf(1.2), EP 32 on 4 nodes; every group subset's universe with the three
labellings the analytic engine asks for (expert, rank, node: moesim/routing/analytic.py
``_token_counts``). Both kernels are warmed (Numba cache loaded) before timing; the answers are
checked equal. Prints seconds per pass of each and the reference / fast ratio (median of 3).
Measured here (2 shared cores, runs vary ~20%): 2.25 s vs 1.03 s, ratio 1.9-2.3x; the whole
command 5.3 s -> 2.2-3.2 s with a warm Numba cache. A cold cache (the first run after an install
or a source change) adds ~11 s of compilation once, either way: that, not the kernel, is most of
a first run's 17-21 s.
Run: ``python benchmarks/bench_race.py``.
"""
from __future__ import annotations

import time

import numpy as np

from moesim.routing import build_problem
from moesim.routing.counts import group_subsets
from moesim.routing.race import race_counts


def inputs():
    pb = build_problem(256, 8, 4096, ep=32, ranks_per_node=8, skew="zipf:1.2", capacity_factor=1.25,
                       overflow="reroute", n_groups=8, topk_groups=4)
    p_E = pb.p_SE[0]
    pl = pb.placement
    rank_E = pl.slot_rank_P[: pb.num_experts]
    labellings = [(np.arange(pb.num_experts), pb.num_experts), (rank_E, pl.ep), (pl.rank_node_R[rank_E], pl.num_nodes)]
    gmass_G = np.bincount(pb.group_E, weights=p_E, minlength=pb.n_groups)
    out = []
    for subset, _w in group_subsets(gmass_G, pb.topk_groups):
        inside = np.isin(pb.group_E, subset)
        out += [(p_E[inside], lab[inside], n, pb.top_k) for lab, n in labellings]
    return out


def run(args, reference: bool):
    return [race_counts(*a, reference=reference) for a in args]


def main():
    args = inputs()
    fast, ref = run(args, False), run(args, True)  # warm both, check the answers
    assert all(np.array_equal(a, b) for a, b in zip(fast, ref)), "fast kernel differs from the reference"
    times = {}
    for reference in (True, False):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            run(args, reference)
            ts.append(time.perf_counter() - t)
        times[reference] = float(np.median(ts))
    print(f"{len(args)} race_counts calls: reference {times[True]:.3f} s, fast {times[False]:.3f} s, "
          f"ratio {times[True] / times[False]:.2f}x")


if __name__ == "__main__":
    main()
