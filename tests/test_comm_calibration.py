"""The all_to_all predictor on the published calibration cases (validation/data).

Byte counts of each source's bandwidth definition are checked against closed forms derived
here; the per-group error bound (median |rel err| <= 15%, issue 5) is IN-SAMPLE: the comm
efficiencies of each profile are fitted on these same cases (validation.calibrate_comm.fit).
The held-out (leave-one-group-out) errors are reported in validation/data/calibrated-comm.json.
"""
from __future__ import annotations

from math import comb
from pathlib import Path
from statistics import median

import pytest
from numpy.testing import assert_allclose

from moesim.cases import load_cases
from moesim.catalog import load_profile
from moesim.specs.hardware import Efficiency
from validation.calibrate_comm import errors_by_group, fit
from moesim.comm.cases import case_traffic_and_time, counted_bytes, predict_all_to_all_case

# A copy of validation/data/published-calibration.json kept in the repository.
CASES_PATH = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-calibration.json"


@pytest.fixture(scope="module")
def cases():
    return load_cases(CASES_PATH).of_kind("all_to_all")


def _case(cases, cid):
    return next(c for c in cases if c.id == cid)


def test_deepep_nvl_bytes_closed_form(cases):
    # DeepEP intranode "NVL" bytes: T x E[distinct ranks] x bytes; 8 ranks of 32 experts, top-8 of 256
    c = _case(cases, "deepep-v1-normal-intranode-ep8-dispatch")
    hw = load_profile("h800-sxm")
    traffic, _ = case_traffic_and_time(dict(c.inputs), hw)
    expect = 4096 * 8 * (1 - comb(224, 8) / comb(256, 8)) * 7392
    assert_allclose(counted_bytes(dict(c.inputs), traffic), expect, rtol=1e-12)


def test_deepep_rdma_bytes_group_limited_closed_form(cases):
    # EP64: 8 nodes = 8 groups of 32 experts, top-4 groups then top-8 of their 128 experts:
    # E[distinct nodes] = 4 (1 - C(96, 8) / C(128, 8)), own node included (DeepEP's count)
    c = _case(cases, "deepep-v1-normal-internode-ep64-dispatch")
    hw = load_profile("h800-sxm")
    traffic, _ = case_traffic_and_time(dict(c.inputs), hw)
    expect = 4096 * 4 * (1 - comb(96, 8) / comb(128, 8)) * 7392
    assert_allclose(counted_bytes(dict(c.inputs), traffic), expect, rtol=1e-12)


def test_every_case_is_predicted(cases):
    assert len(cases) == 34
    for c in cases:
        hw = load_profile(c.hardware)
        assert predict_all_to_all_case({**c.inputs, "metric": c.metric}, hw) > 0


@pytest.mark.parametrize("hardware", ["h800-sxm", "h100-sxm", "gb200"])
def test_fitted_median_error_per_group_in_sample(cases, hardware):
    hw = load_profile(hardware)
    mine = [c for c in cases if c.hardware == hardware]
    fitted = fit(mine, hw).profile
    groups = errors_by_group(mine, fitted)["groups"]
    for name, g in groups.items():
        assert g["median_abs_rel_error"] <= 0.15, (hardware, name, g)
    # fitted fractions stay physical
    comm = fitted.efficiency.comm
    assert 0.3 < comm.scale_up_bandwidth_fraction <= 1 and 0.3 < comm.scale_out_bandwidth_fraction <= 1


def test_prior_is_worse_than_fit_on_small_batches(cases):
    # the generic 3 us prior latency cannot explain 19-31 us batch-1 times on GB200
    hw = load_profile("gb200").with_efficiency(Efficiency())  # the generic prior, not the fitted profile
    mine = [c for c in cases if c.hardware == "gb200"]
    before = errors_by_group(mine, hw)["groups"]["low_latency"]["median_abs_rel_error"]
    after = errors_by_group(mine, fit(mine, hw).profile)["groups"]["low_latency"]["median_abs_rel_error"]
    assert after < before
    assert median([before]) > 0.15
