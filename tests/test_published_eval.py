"""The published EVALUATION case set (validation/data/published-eval.json).

It is never fitted on: these tests check that it stays disjoint from the calibration set, that
every case is well formed and derived with its source's own definition, and that ``validate``
answers every case. The error bounds per kind are asserted in tests/test_accuracy_bounds.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moesim.cases import REQUIRED_INPUTS, SCHEMA, parse_cases
from moesim.validate import validate

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
EVAL = DATA / "published-eval.json"
CALIBRATION = DATA / "published-calibration.json"

# Keys that only describe a case (provenance, explanations), not what was run.
DESCRIPTIVE = {"not_stated", "not_applicable", "assumed", "library", "scaling", "bandwidth_definition",
               "intranode_transport"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def raw() -> dict:
    return _load(EVAL)


@pytest.fixture(scope="module")
def casefile(raw):
    return parse_cases(raw, str(EVAL))


def _signature(case: dict) -> tuple:
    """(kind, hardware, inputs without descriptive keys) as a hashable value."""
    inputs = {k: v for k, v in case["inputs"].items() if k not in DESCRIPTIVE}
    return case["kind"], case["hardware"], json.dumps(inputs, sort_keys=True)


def _required_signature(case: dict) -> tuple:
    """(kind, hardware, the kind's required inputs + layout/mode/op) — a coarser identity."""
    keys = REQUIRED_INPUTS[case["kind"]] + ("groups", "layout", "mode", "dedup")
    return case["kind"], case["hardware"], tuple((k, json.dumps(case["inputs"].get(k))) for k in keys)


def test_file_is_well_formed(raw, casefile):
    assert raw["schema"] == SCHEMA
    assert casefile.problems == ()
    assert len(casefile.cases) == len(raw["cases"]) == 33
    kinds = [c.kind for c in casefile.cases]
    assert {k: kinds.count(k) for k in set(kinds)} == {"grouped_gemm": 10, "all_to_all": 12, "gemm": 11}


def test_every_case_names_source_notes_and_published_value(raw):
    for case in raw["cases"]:
        assert "github.com/" in case["source"], case["id"]
        assert len(case["notes"]) > 200, case["id"]
        pub = case["published"]
        assert {"metric", "value", "unit"} <= set(pub), case["id"]
        for name in case["inputs"].get("assumed", ()):
            assert name in case["inputs"] and name in case["notes"], (case["id"], name)


def test_disjoint_from_calibration_set(raw):
    calib = _load(CALIBRATION)["cases"]
    calib_ids = {c["id"] for c in calib}
    assert not calib_ids & {c["id"] for c in raw["cases"]}
    for sig in (_signature, _required_signature):
        calib_sigs = {sig(c) for c in calib}
        shared = [c["id"] for c in raw["cases"] if sig(c) in calib_sigs]
        assert shared == [], f"{sig.__name__}: {shared}"


def test_no_duplicate_measurements_inside_the_set(raw):
    sigs = [_signature(c) for c in raw["cases"]]
    assert len(set(sigs)) == len(sigs)


def test_grouped_gemm_time_uses_deepgemm_definition(raw):
    """time_s = 2 G M N K / (TFLOPS 1e12) (DeepGEMM tests/test_core.py); the stored value has 6
    significant digits, so rtol 1e-5. Hand check of the first row: 2*4*8192*4096*7168 / 1297e12
    = 1.4835354e-3 s."""
    rows = [c for c in raw["cases"] if c["kind"] == "grouped_gemm"]
    assert len(rows) == 10
    first = next(c for c in rows if c["id"] == "deepgemm-h800-grouped-contiguous-g4-m8192-n4096-k7168")
    assert first["measured"]["value"] == pytest.approx(1.4835354e-3, rel=1e-5)
    for c in rows:
        i = c["inputs"]
        flops = 2 * i["groups"] * i["m_per_group"] * i["n"] * i["k"]
        tflops = c["published"]["value"]
        assert c["measured"]["value"] == pytest.approx(flops / (tflops * 1e12), rel=1e-5), c["id"]
        # The published GB/s follows from the same time: G (MK + KN + 2MN) / t; both columns are
        # rounded to integers in the source, so agreement within 0.5%.
        gbps = next(p["value"] for p in c["also_published"] if p["metric"] == "memory_bandwidth")
        moved = i["groups"] * (i["m_per_group"] * i["k"] + i["k"] * i["n"] + 2 * i["m_per_group"] * i["n"])
        assert moved / c["measured"]["value"] / 1e9 == pytest.approx(gbps, rel=5e-3), c["id"]
        if i["layout"] == "masked":
            assert i["capacity"] == i["m_per_group"], c["id"]   # the benchmark fills every group


def test_deepep_low_latency_bytes_follow_deepep_count(raw):
    """bytes_per_token = hidden + hidden/128*4 + 16 (FP8 dispatch) or 2*hidden (BF16 combine)
    (DeepEP tests/test_low_latency.py); the published logical bandwidth is then
    1014 selections (1024 minus 10 masked) x bytes / latency. Latencies are integers in us and
    bandwidths integers in GB/s, so agreement within 1.5 GB/s + 1.5%."""
    rows = [c for c in raw["cases"] if c["kind"] == "all_to_all"]
    assert len(rows) == 12
    for c in rows:
        i = c["inputs"]
        expected = {"dispatch": 7168 + 7168 // 128 * 4 + 16, "combine": 2 * 7168}[i["op"]]
        assert i["bytes_per_token"] == expected == {"dispatch": 7408, "combine": 14336}[i["op"]]
        assert c["measured"]["value"] == pytest.approx(c["published"]["value"] * 1e-6, rel=1e-12)
        bw = c["also_published"][0]["value"]
        logical = 1014 * i["bytes_per_token"] / c["measured"]["value"] / 1e9
        assert math.isclose(logical, bw, rel_tol=0.015, abs_tol=1.5), (c["id"], logical, bw)
        assert (i["mode"], i["dedup"], i["ranks_per_node"]) == ("low_latency", "none", 8)


def test_dense_h100_rows_use_deepgemm_definition(raw):
    """User-reported H100 rows (DeepGEMM issue #136): time_s = 2 m n k / (TFLOPS 1e12); the
    printed time is whole microseconds, so it must agree within 0.5 us. Hand check:
    2*64*2112*7168 / 155e12 = 12.5017e-6 s (printed '13 us')."""
    rows = [c for c in raw["cases"] if c["kind"] == "gemm"]
    assert len(rows) == 11 and all(c["hardware"] == "h100-sxm" for c in rows)
    one = next(c for c in rows if c["id"] == "deepgemm-h100-gemm-issue136-m64-n2112-k7168")
    assert one["measured"]["value"] == pytest.approx(12.5017e-6, rel=1e-5)
    for c in rows:
        i = c["inputs"]
        t = 2 * i["m"] * i["n"] * i["k"] / (c["published"]["value"] * 1e12)
        assert c["measured"]["value"] == pytest.approx(t, rel=1e-5), c["id"]
        printed_us = next(p["value"] for p in c["also_published"] if p["metric"] == "time")
        assert abs(t * 1e6 - printed_us) <= 0.5, c["id"]


def test_validate_answers_every_case(casefile):
    report = validate(casefile)
    assert len(report.cases) == len(casefile.cases)
    for pred in report.cases:
        assert pred.status in ("ok", "unsupported"), (pred.id, pred.status, pred.reason)
        if pred.status == "ok":
            assert pred.predicted > 0 and math.isfinite(pred.rel_error), pred.id
        else:
            assert pred.reason, pred.id
    assert set(report.summary) == {"grouped_gemm", "all_to_all", "gemm"}
