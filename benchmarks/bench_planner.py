"""Planner speed: the default scenario end to end, and the analytic stage's configurations/second.

Targets (issue 8): the default scenario answers in <= 10 s on this machine; the analytic stage
evaluates >= 10,000 configurations per second. Measured in one run, reported as figures and
ratios to the targets; nothing here is a pass/fail unit test.

What is measured:
- ``default_cli``: wall time of ``python -m moesim plan --json`` in fresh processes, twice (the
  first run may compile/load numba caches; both include interpreter start and imports);
- ``analytic_stage`` over the default search space, inline (one process), three ways:
  ``cold`` (this process's first evaluation: the routing engine's analytic path runs for every
  distinct EP size x tokens), ``routing_warm`` (planner memo cleared, routing results cached: the
  step model's own cost per configuration) and ``memo_warm`` (a repeated plan in one process:
  what-if / compare / pilot reuse);
- ``large_search_cold``: the analytic stage alone (``AnalyticEvaluator.evaluate`` over every
  candidate of the space, one call, inline) on a LARGER space than the default: the default
  scenario's five hardware profiles x devices (8, 16, 32, 64, 128) x attention layout (DP, or TP
  1/2/4/8) x batch per device (1 ... 512, 10 values) x capacity factor (1.0, 1.1, 1.25, 1.5, 2.0),
  in a FRESH process (nothing memoized, routing engine cold; module imports done before the
  clock starts), reported as configurations / wall seconds and split by outcome;
- ``machinery``: search + judge + rank with the closed-form evaluator (the planner's overhead);

A "configuration" everywhere here is one planner ``Candidate``: (hardware, devices per replica,
TP, PP, DP, EP, attention layout, batch per device, capacity factor), judged into one
``Evaluation`` (fits? decode step, TPOT, TTFT, tokens/s, memory headroom, bottleneck, drops).
The prompt / output lengths (hence the decode context) are the scenario's, not a search axis.
- ``default_in_process``: ``plan(default_scenario())`` timings (analytic / verify).

Where the analytic stage's time goes (2026-11-28, this machine, after the planner moved to
``moesim.step.vectorized.LayoutIterations``: one layer-model call per layer kind and token count,
the schedule on arrays, setups and layer-model memo shared by the decode steps and the replica
cost): large_search_cold ~800 configurations/s (the scalar path before: ~430-550/s on the same
space, same step model; evaluations equal to 3e-15, every verdict, K and bottleneck identical);
default space cold ~115/s (was 84). The floor is the layer model itself at every distinct
(layout, token count): ~1 ms per layer kind (routing max-load, GEMM and all-to-all models),
~25 token counts per layout (the decode batches, the replica cost's decode and prefill grid
nodes, the prefill-overlap choice), i.e. ~50 ms per layout whatever the vectorization around
it; ~2 ms per distinct (EP, tokens, capacity factor) for the routing engine's drop fraction.
None of these is affine in the batch (GEMM tiles, low-latency vs normal all-to-all, the max over
ranks), so exact results (rtol 1e-6) cannot interpolate between batches: the >= 10,000/s target
needs either a cheaper layer model or accepting interpolation error; see the task report.

Usage: PYTHONPATH=. python benchmarks/bench_planner.py [--json] [--skip-default]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from moesim.planner.plan import plan
from moesim.planner.scenario import default_scenario, scenario_from_dict, scenario_model
from moesim.planner.space import serving_space
from moesim.planner.sweep import run_sweep
from moesim.planner.testing import ClosedFormEvaluator

ROOT = Path(__file__).resolve().parent.parent


def _rate(cands, scenario, ev) -> dict:
    t = time.perf_counter()
    out = run_sweep(cands, scenario, ev, executor="inline")
    dt = time.perf_counter() - t
    return {"configs": len(out), "seconds": round(dt, 3), "configs_per_s": round(len(out) / dt, 1)}


def analytic_rate(scenario) -> dict:
    """Configurations per second through the real evaluator over the default search space (inline)."""
    from moesim.planner import analytic
    from moesim.routing.api import _route_cached

    from moesim.planner import serving_policy

    cands = serving_space(scenario, scenario_model(scenario)).candidates
    ev = analytic.AnalyticEvaluator()
    cold = _rate(cands, scenario, ev)
    cold["routing_engine_calls"] = _route_cached.cache_info().misses
    analytic._MEMO.clear()
    serving_policy._COSTS.clear()  # the replica GridCosts (prefill / mixed iteration nodes) too
    serving_policy._OVERLAPS.clear()
    serving_policy._NODES.clear()
    serving_policy._ITERS.clear()
    warm = _rate(cands, scenario, ev)
    memo = _rate(cands, scenario, ev)
    return {"cold": cold, "routing_warm": warm, "memo_warm": memo,
            "fits": sum(e.reason != "does_not_fit" for e in run_sweep(cands, scenario, ev, executor="inline"))}


LARGE_SEARCH = """
import json, time
from collections import Counter
from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner.scenario import default_scenario, scenario_model
from moesim.planner.space import serving_space
import moesim.des.serving, moesim.step, moesim.routing.api  # imports before the clock
s = default_scenario()
s = s.model_copy(update={"search": s.search.model_copy(update=dict(
    devices_per_replica=(8, 16, 32, 64, 128), tp=(1, 2, 4, 8),
    batch_per_device=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    capacity_factors=(1.0, 1.1, 1.25, 1.5, 2.0)))})
m = scenario_model(s)
cands = serving_space(s, m).candidates
t = time.perf_counter()
evs = AnalyticEvaluator().evaluate(cands, s)
dt = time.perf_counter() - t
layouts = len({(c.hardware, c.devices, c.tp, c.pp, c.dp, c.ep, c.attention_layout) for c in cands})
print(json.dumps({"configs": len(evs), "layouts": layouts, "seconds": round(dt, 3),
                  "configs_per_s": round(len(evs) / dt, 1),
                  "outcomes": dict(Counter(e.reason or "ok" for e in evs))}))
"""


def large_search_cold() -> dict:
    """The analytic stage on the larger space of the module docstring, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", LARGE_SEARCH], capture_output=True, text=True, cwd=ROOT, env=env,
                       check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def machinery_rate() -> dict:
    """Search + judge + rank + frontier with the closed-form evaluator: the planner's own overhead."""
    s = scenario_from_dict({
        "model": "deepseek-v3", "hardware": ["slow-gpu", "fast-gpu"],
        "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 20000},
        "slo": {"tpot_s": 0.05}, "verify": {"top_n": 0},
        "search": {"devices_per_replica": [8, 16, 32, 64, 128, 256], "tp": [1, 2, 4, 8], "pp": [1, 2, 4],
                   "batch_per_device": [1, 2, 4, 8, 16, 32, 64, 128, 256],
                   "capacity_factors": [1.0, 1.1, 1.25, 1.5, 2.0]},
    })
    t = time.perf_counter()
    r = plan(s, ClosedFormEvaluator(), executor="inline")
    dt = time.perf_counter() - t
    return {"configs": r.evaluated, "seconds": round(dt, 3), "configs_per_s": round(r.evaluated / dt, 1)}


def default_cli(runs: int = 2) -> list[dict]:
    """Wall time of ``moesim plan --json`` in fresh processes (interpreter start and imports included)."""
    out = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "moesim", "plan", "--json"], capture_output=True, text=True,
                           cwd=ROOT, env=env, check=True)
        wall = time.perf_counter() - t
        d = json.loads(p.stdout)
        a = d["answer"]
        out.append({"wall_s": round(wall, 2), "timings_s": {k: round(v, 3) for k, v in d["timings_s"].items()},
                    "answer": f"{a['total_devices']} devices (95% {a['devices_ci']}), ${a['usd_per_hour']:.2f}/h, "
                              f"verified={a['verified']}"})
    return out


def default_in_process() -> dict:
    s = default_scenario()
    t = time.perf_counter()
    r = plan(s)
    return {"seconds": round(time.perf_counter() - t, 3), "timings_s": r.timings_s,
            "verified": [f"{v.candidate.key()}: {v.replicas} replica(s) {v.replicas_ci}, {len(v.probes)} probe(s)"
                         for v in r.verifications]}


def main() -> None:
    report = {}
    if "--skip-default" not in sys.argv:
        report["default_cli"] = default_cli()
        report["default_vs_10s_target"] = [round(10.0 / r["wall_s"], 2) for r in report["default_cli"]]
    report["analytic_stage"] = analytic_rate(default_scenario())
    report["large_search_cold"] = large_search_cold()
    report["machinery"] = machinery_rate()
    report["analytic_vs_10k_target"] = {k: round(report["analytic_stage"][k]["configs_per_s"] / 10_000, 3)
                                        for k in ("cold", "routing_warm", "memo_warm")}
    report["analytic_vs_10k_target"]["large_search_cold"] = round(report["large_search_cold"]["configs_per_s"]
                                                                  / 10_000, 3)
    if "--skip-default" not in sys.argv:
        report["default_in_process_after_warm_stage"] = default_in_process()
    report["load_average"] = os.getloadavg()
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
