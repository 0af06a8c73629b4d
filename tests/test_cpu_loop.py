"""The CPU measure -> calibrate -> validate loop (issue 9), small version.

The case files were measured on this project's CPU host by ``python -m validation.bench
--device cpu`` (validation/data/cpu-host-{calib,eval}.json, disjoint shape sets). Here the
cpu-host profile is fitted from the generic prior on the calibration file's GEMM cases only and
judged on the evaluation file's GEMM and MoE-layer cases, which it never saw.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from moesim.calibrate import calibrate
from moesim.cases import load_cases
from moesim.catalog import load_profile
from moesim.specs.hardware import Efficiency
from moesim.validate import validate

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"


def test_calibrated_on_one_set_judged_on_the_other():
    calib = load_cases(DATA / "cpu-host-calib.json")
    evaluation = load_cases(DATA / "cpu-host-eval.json")
    assert not {c.id for c in calib.cases} & {c.id for c in evaluation.cases}
    prior = load_profile("cpu-host").with_efficiency(Efficiency())
    fitted = calibrate(calib.of_kind("gemm"), prior, source="cpu-host-calib.json (gemm)").profile
    judged = dataclasses.replace(evaluation, cases=evaluation.of_kind("gemm") + evaluation.of_kind("moe_layer"))
    before = validate(judged, {"cpu-host": prior}).summary
    after = validate(judged, {"cpu-host": fitted}).summary
    # Issue 9's bound: median |rel err| <= 15% out of sample for GEMM and MoE-layer cases.
    # Measured when this test was written: gemm 5.1%, moe_layer 6.4% with this GEMM-only fit
    # (the full fit of validation/calibrate_cpu_host.py, which also uses the grouped_gemm and
    # all_to_all cases, gives 4.5% and 7.4%).
    for kind in ("gemm", "moe_layer"):
        assert after[kind].n >= 5 and after[kind].unsupported == 0
        assert after[kind].median_abs_rel_error <= 0.15, (kind, after[kind])
        assert after[kind].median_abs_rel_error < before[kind].median_abs_rel_error
