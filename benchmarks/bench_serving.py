"""Benchmark: one simulated hour of DeepSeek-V3 serving at 20 requests/s (about 72,000 requests),
disaggregated on 2 prefill + 4 decode H100 nodes (examples/serve_deepseek_v3.toml).

Target (issue 7): at most 20 s of wall time on the development machine. Reported separately:
setup (loading specs, KV capacity from the memory model, arrivals) and the simulation itself,
which includes the lazy step-model evaluations at the grid nodes it visits (about 20, memoized),
plus simulated iterations per wall second.

Run: python benchmarks/bench_serving.py [--duration 3600] [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from moesim.catalog import build, read_toml
from moesim.des.serving.scenario import ServeScenario, build_requests, build_system
from moesim.des.serving.system import simulate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "serve_deepseek_v3.toml"
TARGET_S = 20.0


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = read_toml(EXAMPLE)
    data["duration_s"] = args.duration
    scn = build(ServeScenario, data, str(EXAMPLE))
    t0 = time.perf_counter()
    system = build_system(scn)
    reqs = build_requests(scn)
    t1 = time.perf_counter()
    # the step-model grid nodes a run visits are evaluated lazily, inside this call
    res = simulate(system, reqs, slo=scn.slo, warmup_s=scn.warmup_s, window_end_s=scn.duration_s)
    t2 = time.perf_counter()
    iterations = res.iterations
    nodes = sum(len(p.cost._memo) for p in (system.prefill, system.decode))
    out = {
        "requests": len(reqs), "simulated_s": scn.duration_s, "iterations": iterations,
        "setup_wall_s": t1 - t0, "simulate_wall_s": t2 - t1, "total_wall_s": t2 - t0,
        "target_wall_s": TARGET_S, "meets_target": (t2 - t0) <= TARGET_S,
        "step_model_grid_nodes": nodes,
        "iterations_per_wall_s": iterations / (t2 - t1),
        "simulated_s_per_wall_s": scn.duration_s / (t2 - t0),
        "ttft_p99_s": res.ttft_s.p99, "tpot_p99_s": res.tpot_s.p99,
        "output_tokens_per_s": res.output_tokens_per_s,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    return out


if __name__ == "__main__":
    main()
