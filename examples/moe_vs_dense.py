"""MoE vs dense at the same target and SLO: DeepSeek-V3 against Llama 3.1 405B.

Usage: python examples/moe_vs_dense.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.commands.whatif import delta_table
from moesim.planner.compare import compare
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes

scenario = load_scenario(Path(__file__).with_name("plan_deepseek_v3_gpu_tpu.toml"))
scenario = apply_changes(scenario, {"hardware": ["h200-sxm", "b200"], "verify.top_n": 0})
if "--small" in sys.argv:
    scenario = apply_changes(scenario, {**small_search(scenario), "verify.top_n": 0})
result = compare(scenario, "llama3.1-405b")
print(delta_table(result.deltas, "deepseek-v3 (MoE)", "llama3.1-405b (dense)"))
