"""Measure this host's peaks for the ``cpu-host`` hardware profile (hwprofiles/cpu-host.toml).

The CPU validation runs (gloo processes on one machine) are judged against a profile whose numbers
must be measured, not invented. This script measures, on the threads torch uses by default:

* dense GEMM throughput per dtype (fp32, and bf16 where torch supports it on this CPU): the best
  of several timed ``torch.matmul`` calls on an ``n x n`` square, counted as ``2 n^3`` FLOP;
  numpy's fp32 matmul is timed too. The profile's peak for a dtype is the best rate any of the
  engines reached (``summary.peak_tflops``): what the hardware can do. A slower engine's shortfall
  is an efficiency, which calibration fits, not a lower peak;
* memory bandwidth: the best of several copies of a large fp32 array (``numpy.copyto``), reported
  both as STREAM-style traffic (bytes read + bytes written) and as the copy rate (bytes copied).

It prints one JSON object; ``--out FILE`` also writes it. Nothing here is used by the library at
run time: the numbers are copied into the TOML with this script named as their source.

Usage::

    python validation/measure_host.py            # defaults: n=2048, 512 MiB arrays, 10 repeats
    python validation/measure_host.py --out validation/data/host-measurement.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

try:  # torch is the [validation] extra; numpy alone still gives fp32 GEMM and bandwidth
    import torch
except ImportError:  # pragma: no cover - exercised only without the extra
    torch = None


def _best_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_tflops_torch(n: int, dtype_name: str, repeats: int) -> float:
    """Best dense ``n x n x n`` matmul rate in TFLOP/s with torch, counting 2 n^3 FLOP."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e12


def gemm_tflops_numpy(n: int, repeats: int) -> float:
    """Best fp32 ``n x n x n`` matmul rate in TFLOP/s with numpy (cross-check of torch)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e12


def copy_bandwidth_GBps(mib: int, repeats: int) -> dict[str, float]:
    """Best large-array copy: STREAM traffic (read + write) and copy rate, in decimal GB/s."""
    n_bytes = mib * 2**20
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    seconds = _best_seconds(lambda: np.copyto(dst, src), repeats)
    return {
        "stream_copy_GBps": 2.0 * n_bytes / seconds / 1e9,  # bytes read + bytes written
        "copy_rate_GBps": n_bytes / seconds / 1e9,  # bytes moved from src to dst
        "array_MiB": float(mib),
    }


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_GB() -> float | None:
    """MemTotal from /proc/meminfo in decimal GB (None where the file does not exist)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9  # the file counts KiB
    except OSError:
        pass
    return None


def measure(n: int, mib: int, repeats: int) -> dict:
    """All measurements as one plain dict (what the script prints)."""
    result: dict = {
        "date": dt.date.today().isoformat(),
        "cpu_model": cpu_model(),
        "os_cpu_count": os.cpu_count(),
        "mem_total_GB": mem_total_GB(),
        "numpy": np.__version__,
        "gemm_n": n,
        "repeats": repeats,
        "gemm_tflops": {},
        "gemm_tflops_numpy_fp32": gemm_tflops_numpy(n, repeats),
        "memory": copy_bandwidth_GBps(mib, repeats),
    }
    if torch is not None:
        result["torch"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
        for name in ("fp32", "bf16"):
            try:
                result["gemm_tflops"][name] = gemm_tflops_torch(n, name, repeats)
            except RuntimeError as err:  # a dtype this CPU build cannot multiply
                result["gemm_tflops"][name] = None
                result.setdefault("errors", {})[name] = str(err)
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    """Peak per dtype (best engine) and the two bandwidth figures the profile uses."""
    fp32 = [result["gemm_tflops_numpy_fp32"], result["gemm_tflops"].get("fp32")]
    peaks = {"fp32": max(x for x in fp32 if x is not None)}
    if result["gemm_tflops"].get("bf16") is not None:
        peaks["bf16"] = result["gemm_tflops"]["bf16"]
    return {
        "peak_tflops": peaks,
        "memory_bandwidth_GBps": result["memory"]["stream_copy_GBps"],
        "copy_rate_GBps": result["memory"]["copy_rate_GBps"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="GEMM size (n x n x n)")
    parser.add_argument("--mib", type=int, default=512, help="size of each copied array, MiB")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs; the best is kept")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    for name in ("n", "mib", "repeats"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    result = measure(args.n, args.mib, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
