"""A staged pilot of the DeepSeek-V3 plan's answer: 1%, 10%, 50%, 100% of the traffic at each
stage's own load, what to watch, when to proceed and when to roll back.

Usage: python examples/pilot_plan.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.planner.pilot import staged_pilot
from moesim.planner.plan import plan
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes
from moesim.provenance import for_plan
from moesim.textfmt import table

scenario = load_scenario(Path(__file__).with_name("plan_deepseek_v3_gpu_tpu.toml"))
if "--small" in sys.argv:
    scenario = apply_changes(scenario, small_search(scenario))
result = plan(scenario, executor="inline").require_feasible()
band = for_plan(result).answer_band  # the measured serving forecast error (moesim validate)
p = staged_pilot(scenario, result, error=band.median_abs_rel_error, error_source=band.text())
print(f"pilot of {p.replicas_full} x {p.devices_per_replica} {p.hardware} ({p.layout}, batch {p.batch}/device)")
rows = []
for s in p.stages:
    for w in s.watches[:2]:
        rows.append((f"{s.share:.0%}", w.metric, f"{w.expected * 1e3:.1f}",
                     f"{w.band_low * 1e3:.1f}-{w.band_high * 1e3:.1f}", w.gate, w.rollback_if))
print(table(rows, ["stage", "watch", "expected ms", "band ms", "proceed if", "roll back if"]))
