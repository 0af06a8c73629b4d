"""Speed of the step model: vectorized DeepSeek-V3 decode estimates per second vs the scalar path.

Run: ``python benchmarks/bench_step.py`` (one core: NUMBA_NUM_THREADS=1 is set below).
Reports, measured in one run:
- scalar ``decode_iteration`` per call (routing cached, i.e. the planner's warm case);
- ``decode_constants`` per (hardware, devices, batch) configuration: cold (routing engine
  called for each new EP size x tokens) and warm (routing cached);
- ``evaluate`` (numpy only) estimates per second over a context sweep, both overlap modes;
- the ratio vectorized / scalar. Goal (issue 6): >= 10,000 estimates per second on one core.
"""
from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import time  # noqa: E402

from moesim.catalog import load_model, load_profile  # noqa: E402
from moesim.specs import Cluster, Parallelism  # noqa: E402
from moesim.step import decode_iteration  # noqa: E402
from moesim.step.vectorized import decode_constants, evaluate  # noqa: E402

HWS = ("h800-sxm", "h200-sxm", "h100-sxm", "b200")
DEVICES = (16, 32, 64, 72, 128)
BATCH = (16, 32, 64, 128, 256)
CONTEXT = tuple(range(512, 131073, 2048))  # 64 contexts


def _timed(fn, repeat: int = 1):
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - t0) / repeat


def main() -> None:
    model = load_model("deepseek-v3")
    hws = [load_profile(n) for n in HWS]
    for overlap in ("none", "two_microbatch"):
        k, cold = _timed(lambda: decode_constants(model, hws, DEVICES, BATCH, overlap=overlap))
        _, warm = _timed(lambda: decode_constants(model, hws, DEVICES, BATCH, overlap=overlap))
        grid, t_eval = _timed(lambda: evaluate(k, CONTEXT), repeat=3)
        n = grid.size
        print(f"[{overlap}] {k.configurations} configurations x {len(CONTEXT)} contexts = {n} estimates")
        print(f"  constants: cold {cold:.2f} s ({cold / k.configurations * 1e3:.1f} ms/config), "
              f"warm {warm:.3f} s ({warm / k.configurations * 1e3:.2f} ms/config)")
        print(f"  evaluate: {t_eval * 1e3:.1f} ms -> {n / t_eval:,.0f} estimates/s")
        print(f"  end to end warm: {n / (warm + t_eval):,.0f} estimates/s; cold: {n / (cold + t_eval):,.0f} estimates/s")
    hw = load_profile("h800-sxm")
    cl = Cluster(hardware="h800-sxm", devices=32, devices_per_domain=8)
    par = Parallelism(dp=32, ep=32, attention_layout="dp")

    def scalar():
        return decode_iteration(model, hw, cl, par, batch_per_device=128, context=4096, dtype="fp8",
                                overlap="two_microbatch")

    scalar()
    _, t_scalar = _timed(scalar, repeat=20)
    print(f"scalar decode_iteration (routing cached): {t_scalar * 1e3:.2f} ms/call "
          f"({1 / t_scalar:,.0f} estimates/s)")
    k = decode_constants(model, hws, DEVICES, BATCH, overlap="two_microbatch")
    grid, t_eval = _timed(lambda: evaluate(k, CONTEXT), repeat=3)
    print(f"ratio evaluate / scalar: {grid.size / t_eval * t_scalar:,.0f}x")


if __name__ == "__main__":
    main()
