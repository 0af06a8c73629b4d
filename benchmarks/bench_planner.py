"""Planner speed: the default scenario end to end, and the analytic stage's configurations/second.

Targets (issue 8): the default scenario answers in <= 10 s; the analytic stage evaluates
>= 10,000 configurations per second. Measured in one run, reported as figures and ratios to the
targets; nothing here is a pass/fail unit test.

Usage: PYTHONPATH=. python benchmarks/bench_planner.py [--json] [--skip-default]
"""
from __future__ import annotations

import json
import sys
import time

from moesim.planner.plan import plan
from moesim.planner.scenario import default_scenario, scenario_from_dict, scenario_model
from moesim.planner.space import serving_space
from moesim.planner.sweep import run_sweep
from moesim.planner.testing import ClosedFormEvaluator


def analytic_rate(scenario) -> dict:
    """Configurations per second through the real evaluator over the default search space (inline)."""
    from moesim.planner.analytic import AnalyticEvaluator

    cands = serving_space(scenario, scenario_model(scenario)).candidates
    ev = AnalyticEvaluator()
    ev.evaluate(cands[:2], scenario)  # warm imports, numba caches
    t = time.perf_counter()
    out = run_sweep(cands, scenario, ev, executor="inline")
    dt = time.perf_counter() - t
    return {"configs": len(out), "seconds": dt, "configs_per_s": len(out) / dt,
            "fits": sum(e.reason != "does_not_fit" for e in out)}


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
    return {"configs": r.evaluated, "seconds": dt, "configs_per_s": r.evaluated / dt}


def default_end_to_end() -> dict:
    s = default_scenario()
    t = time.perf_counter()
    r = plan(s)
    dt = time.perf_counter() - t
    a = r.answer
    return {"seconds": dt, "configs": r.evaluated, "timings_s": r.timings_s,
            "answer": f"{a.total_devices} x {a.ranked.candidate.hardware} {a.ranked.candidate.layout()} "
                      f"batch {a.ranked.candidate.batch}, ${a.usd_per_hour:.2f}/h, verified={a.verified}"}


def main() -> None:
    report = {"machinery": machinery_rate(), "analytic_stage": analytic_rate(default_scenario())}
    if "--skip-default" not in sys.argv:
        report["default_scenario"] = default_end_to_end()
        report["default_vs_10s_target"] = 10.0 / report["default_scenario"]["seconds"]
    report["analytic_vs_10k_target"] = report["analytic_stage"]["configs_per_s"] / 10_000
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
