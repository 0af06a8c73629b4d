"""Train a Mixtral-8x22B-class model on 2T tokens in 30 days: devices, parallelism, cost, MFU.

Usage: python examples/plan_training.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.planner.plan import plan
from moesim.planner.report import render
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes

scenario = load_scenario(Path(__file__).with_name("train_mixtral_8x22b.toml"))
if "--small" in sys.argv:
    scenario = apply_changes(scenario, small_search(scenario))
result = plan(scenario).require_feasible()
print(render(result, top=8))
best = result.ranked[0]
print(f"\n{best.total_devices} x {best.candidate.hardware}: {best.days:.1f} days, "
      f"MFU {best.evaluation.mfu:.1%}, ${best.total_usd:,.0f}")
