"""Speed of the step model: DeepSeek-V3 decode estimates priced one point per call vs in a batch.

Run: ``python benchmarks/bench_step.py [--json]`` (one core: NUMBA_NUM_THREADS=1 is set below).
Reports, measured in one run (routing engine warmed first, so both sides see cached routing):
- ``point``: ``estimate`` on one (batch, context) point per call, a fresh ``StepCache`` per call
  (the layer setup and the layer model rebuilt every time: what the scalar ``decode_iteration``
  did), ms per estimate;
- ``batched``: ``estimate`` once per deployment over every (batch, context) point of the grid,
  a fresh ``StepCache`` per deployment (nothing shared between deployments), ms per estimate;
- their ratio. Goal (issue 13): <= 0.1 ms per estimate when priced in a batch.
The grid: 4 GPU profiles x 5 device counts (DP attention, EP = devices, the fewest redundant
slots) = 20 deployments, x 5 batches per device x 64 contexts = 6,400 estimates per overlap mode.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

from moesim.catalog import load_model, load_profile  # noqa: E402
from moesim.specs import Deployment  # noqa: E402
from moesim.specs.parallel import smallest_redundancy  # noqa: E402
from moesim.step import Decode, StepCache, estimate  # noqa: E402

HWS = ("h800-sxm", "h200-sxm", "h100-sxm", "b200")
DEVICES = (16, 32, 64, 72, 128)
BATCH = (16, 32, 64, 128, 256)
CONTEXT = tuple(range(512, 131073, 2048))  # 64 contexts


def deployments(model, overlap: str) -> list[Deployment]:
    out = []
    for name in HWS:
        hw = load_profile(name)
        for v in DEVICES:
            out.append(Deployment(hardware=hw, devices=v, devices_per_domain=8, dp=v, ep=v, attention_layout="dp",
                                  redundant_experts=smallest_redundancy(model.moe.num_experts, v), dtype="fp8",
                                  overlap=overlap))
    return out


def batched(model, deps) -> tuple[float, int]:
    b, c = np.meshgrid(BATCH, CONTEXT, indexing="ij")
    work = Decode(b.ravel(), c.ravel())
    t0 = time.perf_counter()
    n = 0
    for dep in deps:
        n += len(estimate(model, dep, work, check_memory=False, cache=StepCache()))
    return time.perf_counter() - t0, n


def point(model, deps, samples: int = 40) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(samples):
        dep = deps[rng.integers(len(deps))]
        w = Decode(BATCH[rng.integers(len(BATCH))], CONTEXT[rng.integers(len(CONTEXT))])
        estimate(model, dep, w, check_memory=False, cache=StepCache())
    return time.perf_counter() - t0, samples


def main() -> dict:
    model = load_model("deepseek-v3")
    out = {}
    for overlap in ("none", "two_microbatch"):
        deps = deployments(model, overlap)
        batched(model, deps)  # warm the routing engine's cache for every (EP, tokens)
        t_b, n_b = batched(model, deps)
        t_p, n_p = point(model, deps)
        per_b, per_p = t_b / n_b * 1e3, t_p / n_p * 1e3
        out[overlap] = {"deployments": len(deps), "estimates": n_b, "batched_ms_per_estimate": round(per_b, 4),
                        "point_ms_per_estimate": round(per_p, 3), "ratio_point_over_batched": round(per_p / per_b, 1),
                        "goal_ms": 0.1}
        if "--json" not in sys.argv:
            print(f"[{overlap}] {len(deps)} deployments x {n_b // len(deps)} points = {n_b} estimates: "
                  f"batched {per_b:.4f} ms/estimate ({t_b:.2f} s), one point per call {per_p:.3f} ms/estimate, "
                  f"ratio {per_p / per_b:,.0f}x (goal <= 0.1 ms)")
    if "--json" in sys.argv:
        print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
