"""A staged pilot: the smallest DeepSeek-V3 deployment for 10% of the traffic, what to watch, when to roll back.

Usage: python examples/pilot_plan.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.planner.pilot import pilot_plan
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes
from moesim.textfmt import table

scenario = load_scenario(Path(__file__).with_name("plan_deepseek_v3_gpu_tpu.toml"))
if "--small" in sys.argv:
    scenario = apply_changes(scenario, small_search(scenario))
p = pilot_plan(scenario, share=0.10)
print(f"pilot: {p.devices} x {p.hardware} ({p.layout}, batch {p.batch}/device), ${p.usd_per_hour:,.2f}/h")
print(table([(w.metric, f"{w.expected:.4g}", f"{w.band_low:.4g}-{w.band_high:.4g}", w.rollback_if)
             for w in p.watches], ["watch", "expected", "band", "roll back if"]))
