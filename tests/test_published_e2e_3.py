"""The third published end-to-end serving set (validation/data/published-e2e-serving-3.json,
docs/evidence.md 'Third set'): well formed, evaluation only, every row names its source (dstack's
DeepSeek-R1 CSV or GPUStack's performance lab, pinned), and every measured value follows from
the numbers printed in the same row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.cases import parse_cases
from published_checks import check_vllm_bench_block

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
NAME = "published-e2e-serving-3.json"
SOURCES = ("https://github.com/dstackai/benchmarks/blob/", "https://github.com/gpustack/gpustack/blob/")


def _raw():
    return json.loads((DATA / NAME).read_text())


def test_loads_as_an_evaluation_file_with_a_source_per_row():
    raw = _raw()
    cf = parse_cases(raw, NAME)
    assert cf.problems == () and cf.role == "evaluation" and len(cf.cases) == len(raw["cases"]) == 23
    assert "never fitted" in raw["description"].lower() or "evaluation only" in raw["description"].lower()
    for c in raw["cases"]:
        assert "role" not in c, c["id"]  # no row may opt into a fit
        assert c["source"].startswith(SOURCES), c["id"]
        assert {"metric", "value", "unit"} <= set(c["published"]), c["id"]
        assert len(c["notes"]) > 80, c["id"]
        inputs = c["inputs"]
        assert inputs["phase"] == "end_to_end" and inputs["max_load"] is True, c["id"]
        for key in inputs.get("not_stated", ()):
            assert inputs[key] is None, (c["id"], key)
        for key in inputs.get("assumed", ()):
            assert key in inputs and key in c["notes"], (c["id"], key)


def test_counts_per_source_hardware_and_engine():
    rows = [(c["id"].split("-")[0], c["hardware"], "vllm" if "-vllm-" in c["id"] else "sglang") for c in _raw()["cases"]]
    assert {k: rows.count(k) for k in set(rows)} == {
        ("dstack", "mi300x", "vllm"): 3, ("dstack", "mi300x", "sglang"): 3, ("dstack", "h200-sxm", "sglang"): 3,
        ("dstack", "h200-sxm", "vllm"): 2, ("gpustack", "h200-sxm", "vllm"): 4, ("gpustack", "h100-sxm", "vllm"): 8}


def test_dstack_measured_follows_from_the_printed_row():
    # The CSV prints elapsed_time, token totals and tokens_per_second = (input + output) / elapsed:
    # recomputing the printed rate from the printed totals checks the transcription (the CSV
    # carries ~10 significant digits: rtol 1e-6); measured = output tokens / elapsed / 8 GPUs.
    for c in _raw()["cases"]:
        if not c["id"].startswith("dstack-"):
            continue
        also = {p["metric"]: p["value"] for p in c["also_published"]}
        el, out, inp = also["elapsed_time"], also["total_output_tokens"], also["total_input_tokens"]
        i = c["inputs"]
        assert out == also["num_requests"] * i["output_len"] and inp == also["num_requests"] * i["prompt_len"], c["id"]
        assert c["published"]["value"] == pytest.approx((inp + out) / el, rel=1e-6), c["id"]
        assert c["measured"]["value"] == pytest.approx(out / el / i["devices"], rel=1e-5), c["id"]


def test_gpustack_measured_follows_from_the_printed_block():
    # each GPUStack row is one printed vllm bench serve block (published_checks.check_vllm_bench_block)
    for c in _raw()["cases"]:
        if c["id"].startswith("gpustack-"):
            check_vllm_bench_block(c)


def test_disjoint_from_calibration():
    calib = {c["id"] for c in json.loads((DATA / "published-calibration.json").read_text())["cases"]}
    assert not calib & {c["id"] for c in _raw()["cases"]}
