"""End-to-end serving rows priced on a calibrated or modified profile (catalog.profile_overrides):
the planner loads profiles by name, and an in-process search now gets the profile passed."""
from __future__ import annotations

from pathlib import Path

import pytest

from moesim.cases import load_cases
from moesim.catalog import load_profile, profile_overrides
from moesim.specs.hardware import ComputeEfficiency, Efficiency
from moesim.validate import predict_case

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
ROW = "trtllm-perf-qwen3-30b-a3b-gb200-tp1-fp4-isl8192-osl1024"  # one GPU, ~1 s through the planner


@pytest.fixture(scope="module")
def row():
    return next(c for c in load_cases(DATA / "published-e2e-serving-maxload.json").cases if c.id == ROW)


def _slower(hw, f=0.5):
    """Every GEMM and attention kernel at ``f`` x the profile's fractions (memory terms too)."""
    c = hw.efficiency.compute
    compute = ComputeEfficiency.model_validate({**c.model_dump(), "gemm_compute_fraction": c.gemm_compute_fraction * f,
                                                "gemm_memory_fraction": c.gemm_memory_fraction * f,
                                                "attention_compute_fraction": c.attention_compute_fraction * f,
                                                "gemm_fraction_dtypes": []})  # every dtype, FP4 too
    return hw.with_efficiency(Efficiency.model_validate({**hw.efficiency.model_dump(), "compute": compute.model_dump()}))


def test_a_modified_profile_is_priced_not_refused(row):
    hw = load_profile(row.hardware)
    shipped = predict_case(row, hw)
    slow = predict_case(row, _slower(hw))
    assert shipped.status == slow.status == "ok", slow.reason
    # half the kernel rates on a one-GPU row: slower, but not by more than 2x (host time is unchanged)
    assert 0.5 * shipped.predicted <= slow.predicted < 0.95 * shipped.predicted
    # an equal copy under another name (a user's profile file) prices exactly as the catalog one
    mine = predict_case(row, hw.model_copy(update={"name": "gb200-mine"}))
    assert mine.status == "ok" and mine.predicted == shipped.predicted


def test_the_override_is_scoped():
    hw = load_profile("gb200")
    other = _slower(hw)
    with profile_overrides({"gb200": other}):
        assert load_profile("gb200") is other
        with profile_overrides({"b200": hw}):
            assert load_profile("gb200") is other and load_profile("b200") is hw
        assert load_profile("b200").name == "b200"  # the inner block's name is back to the catalog's
    assert load_profile("gb200") == hw and load_profile("gb200") is not other
