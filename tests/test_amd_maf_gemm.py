"""AMD's max-achievable-FLOPs GEMMs (validation/data/published-calibration.json, ROCm blog 'Measuring
Max-Achievable FLOPs - Part 2') calibrate the MI300X and MI325X math rate; only the compute fraction
is identifiable from them (moesim.compute.cases.gemm_fit_params)."""
from pathlib import Path

import pytest

from moesim.cases import load_cases
from moesim.catalog import load_profile
from moesim.compute.cases import GEMM_FIT_PARAMS, gemm_fit_params, predict_gemm_case
from moesim.specs.hardware import Efficiency

CAL = Path(__file__).resolve().parents[1] / "validation/data/published-calibration.json"


def _rows(prefix: str):
    return [c for c in load_cases(CAL).cases if c.id.startswith(prefix)]


def test_compute_bound_rows_identify_only_the_compute_fraction():
    rows = _rows("amd-maf-mi300x")
    assert len(rows) == 3
    prior = load_profile("mi300x").with_efficiency(Efficiency())
    assert gemm_fit_params(rows, prior) == ("compute.gemm_compute_fraction",)


def test_deepgemm_rows_still_identify_all_five():
    # the small-M DeepGEMM shapes are memory- and latency-bound at the prior: every parameter stays fitted
    rows = _rows("deepgemm-h800-gemm")
    prior = load_profile("h800-sxm").with_efficiency(Efficiency())
    assert gemm_fit_params(rows, prior) == GEMM_FIT_PARAMS


@pytest.mark.parametrize("hw", ["mi300x", "mi325x"])
def test_shipped_profile_reproduces_amd_maf(hw):
    # in-sample: one fitted fraction for three dtypes whose sustained clocks differ (MI300X FP16 at
    # 1115 MHz, BF16 1207, FP8 1230 in the source), so each row is within 7%, not exact
    profile = load_profile(hw)
    assert profile.efficiency.compute_origin == "calibrated"
    for c in _rows(f"amd-maf-{hw}"):
        predicted = predict_gemm_case(c.inputs, profile)
        assert abs(predicted / c.measured - 1) < 0.07, c.id


def test_mi300x_math_rate_is_below_the_generic_prior():
    # the source's 708 TFLOPs BF16 is 54% of the 1307.4 dense peak (power-limited clock 1207 of
    # 2100 MHz); the generic 0.80 prior overstated it by about half
    frac = load_profile("mi300x").efficiency.compute.gemm_compute_fraction
    assert 0.45 < frac < 0.60
