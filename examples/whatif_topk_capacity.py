"""What if DeepSeek-V3 routed to 4 experts instead of 8, with a capacity factor of 1.25?

Side by side with deltas: devices, cost, latency, drop fraction. Drops are never free: the
scenario allows 1% of routed token copies to drop (``limits.max_drop_fraction``); the capacity
limit then shortens the step on the busiest rank, and the plan shows the drop it costs.
Usage: python examples/whatif_topk_capacity.py [--small]
"""
import sys
from pathlib import Path

from moesim.commands.plan import small_search
from moesim.commands.whatif import delta_table
from moesim.planner.scenario import load_scenario
from moesim.planner.whatif import apply_changes, what_if

base = load_scenario(Path(__file__).with_name("plan_deepseek_v3_gpu_tpu.toml"))
base = apply_changes(base, {"hardware": ["h200-sxm"], "verify.top_n": 0, "limits.max_drop_fraction": 0.01})
if "--small" in sys.argv:
    base = apply_changes(base, {**small_search(base), "verify.top_n": 0})
for changes in ({"model.top_k": 4}, {"routing.capacity_factor": 1.25}):
    res = what_if(base, changes)
    print(f"what if {changes}:")
    print(delta_table(res.deltas, "base", "changed"), end="\n\n")
