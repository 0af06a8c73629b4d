"""Timing, metadata and ``moesim-cases/1`` writing for validation/bench.py (torch + stdlib only).

Timing: ``warmup`` untimed calls, then ``reps`` timed samples; the case value is the median.
On CUDA each call is bracketed by CUDA events (``elapsed_time`` after a synchronize); on CPU by
``time.perf_counter``. The spread (min, max) is kept in the case notes so a noisy host shows.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from validation.measure_host import cpu_model

SCHEMA = "moesim-cases/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def median_time(fn: Callable[[], object], device: str, warmup: int = 2, reps: int = 7,
                min_sample_s: float = 0.005) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` over ``reps`` samples after ``warmup`` runs; also every sample.

    On CPU a sample times ``n`` back-to-back calls (n <= 100 chosen so a sample lasts at least
    ``min_sample_s``) and records the mean per call.
    """
    for _ in range(warmup):
        fn()
    samples = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        inner = _inner_calls(fn, min_sample_s)
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples), samples


def _inner_calls(fn, min_sample_s: float) -> int:
    """Calls per CPU sample so one sample lasts >= min_sample_s (timer resolution, scheduler noise)."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, min(100, math.ceil(min_sample_s / max(once, 1e-7))))


def metadata(device: str) -> dict:
    """Device and version facts recorded in every file's description and case sources."""
    meta = {
        "torch": torch.__version__, "python": platform.python_version(), "device": device,
        "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
        meta["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return meta


def meta_line(meta: dict) -> str:
    keys = ("device", "gpu", "cpu", "torch", "cuda", "torch_threads", "python", "date")
    return ", ".join(f"{k}={meta[k]}" for k in keys if k in meta)


def make_case(case_id: str, kind: str, hardware: str, inputs: dict, time_s: float, samples: list[float],
              meta: dict, notes: str = "") -> dict:
    """One ``moesim-cases/1`` case measured by validation/bench.py (``_``-keys are not written)."""
    case = {
        "id": case_id, "kind": kind, "hardware": hardware, "inputs": inputs,
        "measured": {"metric": "time_s", "value": float(time_s)},
        "source": f"validation/bench.py ({meta_line(meta)})",
        "_samples": list(samples), "_extra": notes,
    }
    _set_notes(case)
    return case


def _set_notes(case: dict) -> None:
    samples = case["_samples"]
    spread = f"median of {len(samples)} samples, min {min(samples):.3g} s, max {max(samples):.3g} s"
    case["notes"] = f"{spread}. {case['_extra']}".strip()


def merge_case(into: dict, case: dict) -> None:
    """Add ``case`` to ``into`` (id -> case); a repeated id pools samples and re-takes the median."""
    old = into.get(case["id"])
    if old is None:
        into[case["id"]] = case
        return
    old["_samples"] += case["_samples"]
    old["measured"]["value"] = float(statistics.median(old["_samples"]))
    _set_notes(old)


def write_cases(path: Path, description: str, cases: list[dict], meta: dict, failures: list[dict]) -> Path:
    """Write a case file; ``failures`` (suite, error) go into the description, never silently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = description + f" Measured with {meta_line(meta)}."
    if failures:
        text += " Suites that failed or were skipped: " + "; ".join(f"{f['suite']}: {f['error']}" for f in failures)
    body = {"schema": SCHEMA, "description": text,
            "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases]}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path
