"""Serve DeepSeek-V3 across GPUs and TPU v5p: the ranked plan and the verified answer.

Usage: python examples/plan_serving.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.planner.plan import plan
from moesim.planner.report import render
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes

scenario = load_scenario(Path(__file__).with_name("plan_deepseek_v3_gpu_tpu.toml"))
if "--small" in sys.argv:
    scenario = apply_changes(scenario, small_search(scenario))
result = plan(scenario).require_feasible()
print(render(result, top=8))
