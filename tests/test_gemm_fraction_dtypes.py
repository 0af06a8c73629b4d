"""A GEMM compute fraction holds for the math dtypes its calibration measured
(ComputeEfficiency.gemm_fraction_dtypes); other dtypes run at the generic prior."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from moesim.calibrate import calibrate
from moesim.cases import load_cases, parse_cases
from moesim.catalog import _profiles_dir, load_profile, replace_efficiency
from moesim.compute.gemm import gemm_time
from moesim.errors import MoesimError
from moesim.specs.hardware import ComputeEfficiency, Efficiency

_CAL = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-calibration.json"

PRIOR = ComputeEfficiency().gemm_compute_fraction


def _with_compute(profile, **compute):
    eff = profile.efficiency
    c = ComputeEfficiency.model_validate({**eff.compute.model_dump(), **compute})
    return profile.with_efficiency(eff.model_copy(update={"compute": c}))


def test_fraction_holds_for_measured_dtypes_and_their_same_rate_twin_only():
    c = ComputeEfficiency(gemm_compute_fraction=0.6, gemm_fraction_dtypes=["FP8", "bf16"])
    assert c.gemm_fraction_dtypes == ("bf16", "fp8")  # canonical, sorted
    assert c.gemm_fraction("fp8") == c.gemm_fraction("mxfp8") == 0.6  # an alias of fp8
    assert c.gemm_fraction("bf16") == c.gemm_fraction("fp16") == 0.6  # one tensor-core rate
    assert c.gemm_fraction("fp4") == c.gemm_fraction("tf32") == PRIOR == 0.80
    # empty: a fraction for every dtype (the prior, and profiles written before the field)
    assert ComputeEfficiency(gemm_compute_fraction=0.6).gemm_fraction("fp4") == 0.6


def test_unknown_dtype_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="gemm_fraction_dtypes.*int3"):
        ComputeEfficiency(gemm_fraction_dtypes=["int3"])


def test_a_compute_bound_gemm_outside_the_measured_dtypes_is_priced_at_the_prior():
    """The same GEMM time, to the last bit, as the profile with the prior fraction: the fitted
    value does not reach a dtype it never saw, and does reach the ones it did."""
    b200 = load_profile("b200")
    fitted = _with_compute(b200, gemm_compute_fraction=0.5, gemm_fraction_dtypes=["fp8"])
    prior = _with_compute(b200, gemm_compute_fraction=PRIOR, gemm_fraction_dtypes=[])
    shape = (8192, 8192, 8192)
    assert gemm_time(fitted, *shape, "fp4").time_s == gemm_time(prior, *shape, "fp4").time_s
    everywhere = _with_compute(b200, gemm_compute_fraction=0.5, gemm_fraction_dtypes=[])
    slow, base = gemm_time(fitted, *shape, "fp8"), gemm_time(prior, *shape, "fp8")
    assert slow.time_s == gemm_time(everywhere, *shape, "fp8").time_s
    assert slow.bound == base.bound == "compute" and slow.time_s > 1.5 * base.time_s  # 0.8 / 0.5 = 1.6


def _gemm_rows(dtype, frac, hw):
    truth = _with_compute(hw, gemm_compute_fraction=frac, gemm_fraction_dtypes=[])
    shapes = [(4096, 4096, 4096), (8192, 8192, 4096), (8192, 4096, 8192), (4096, 8192, 8192)]
    rows = [{"id": f"g{i}", "kind": "gemm", "hardware": hw.name,
             "inputs": {"m": m, "n": n, "k": k, "dtype": dtype},
             "measured": {"metric": "time_s", "value": gemm_time(truth, m, n, k, dtype).time_s},
             "source": "planted"} for i, (m, n, k) in enumerate(shapes)]
    return parse_cases({"schema": "moesim-cases/1", "cases": rows}, "planted").cases


def test_calibration_records_the_dtypes_it_measured(tmp_path):
    """Fitting on fp8 rows planted at 0.6: the fraction comes back 0.6 for fp8 and the fitted
    profile prices a bf16 GEMM at the prior, where it would otherwise have taken 0.6 too; the
    written profile keeps the list."""
    b200 = load_profile("b200").with_efficiency(Efficiency())
    result = calibrate(_gemm_rows("fp8", 0.6, b200), b200, ("compute.gemm_compute_fraction",), starts=0)
    c = result.profile.efficiency.compute
    assert c.gemm_compute_fraction == pytest.approx(0.6, rel=1e-3)
    assert c.gemm_fraction_dtypes == ("fp8",)
    assert c.gemm_fraction("bf16") == PRIOR
    toml = tmp_path / "b200.toml"
    toml.write_bytes((_profiles_dir() / "b200.toml").read_bytes())
    replace_efficiency(toml, result.profile.efficiency)
    again = load_profile(str(toml)).efficiency.compute
    assert again.gemm_fraction_dtypes == ("fp8",) and again.gemm_fraction("fp8") == pytest.approx(0.6, rel=1e-3)


def test_shipped_profiles_apply_their_fits_only_where_measured():
    """The GH100 fraction was fitted on H800 FP8 DeepGEMM rows with XLA's H100 BF16 rows and
    transfers to H100 / H200 for both (not FP4, which Hopper has no peak for); b200's on XLA's
    bf16 / fp8 table, so its FP4 GEMMs keep the prior; MI300X's on bf16 / fp16 / fp8 rows."""
    for name in ("h800-sxm", "h100-sxm", "h200-sxm"):
        c = load_profile(name).efficiency.compute
        assert c.gemm_fraction_dtypes == ("bf16", "fp8"), name
        assert c.gemm_fraction("bf16") == c.gemm_fraction("fp8") == c.gemm_compute_fraction > 0.9
        assert c.gemm_fraction("tf32") == PRIOR
    b200 = load_profile("b200").efficiency.compute
    assert b200.gemm_fraction_dtypes == ("bf16", "fp8") and b200.gemm_fraction("fp4") == PRIOR
    assert b200.gemm_fraction("bf16") == b200.gemm_compute_fraction < PRIOR
    assert load_profile("mi300x").efficiency.compute.gemm_fraction_dtypes == ("bf16", "fp16", "fp8")


def test_same_silicon_rows_join_the_fit_on_their_own_profile():
    """FP8 rows on h800 and BF16 rows on h100, both planted at 0.6 (every other parameter at the
    prior): fitted on h800 with h100 as a sibling the fraction comes back 0.6 and holds for both
    dtypes; the h100 rows alone, without the sibling, are not in h800's fit."""
    h800 = load_profile("h800-sxm").with_efficiency(Efficiency())
    h100 = load_profile("h100-sxm").with_efficiency(Efficiency())
    rows = _gemm_rows("fp8", 0.6, h800) + _gemm_rows("bf16", 0.6, h100)
    param = ("compute.gemm_compute_fraction",)
    joint = calibrate(rows, h800, param, starts=0, siblings=(h100,))
    assert joint.n_cases == 8 and joint.params[param[0]] == pytest.approx(0.6, rel=1e-3)
    assert joint.profile.name == "h800-sxm"
    assert joint.profile.efficiency.compute.gemm_fraction_dtypes == ("bf16", "fp8")
    alone = calibrate(rows, h800, param, starts=0)
    assert alone.n_cases == 4 and alone.profile.efficiency.compute.gemm_fraction_dtypes == ("fp8",)


def test_a_sibling_shares_only_the_compute_section():
    """A sibling's all-to-all row would fit the main profile's comm terms on another fabric
    (H100's NVLink beside H800's): refused, naming the case. The sibling's GEMM rows, priced
    with its own shipped comm section and the fitted compute section, still fit 0.6."""
    h800 = load_profile("h800-sxm").with_efficiency(Efficiency())
    h100 = load_profile("h100-sxm")
    a2a = next(c for c in load_cases(_CAL).of_kind("all_to_all"))
    moved = parse_cases({"schema": "moesim-cases/1", "cases": [
        {"id": "a2a-on-h100", "kind": "all_to_all", "hardware": "h100-sxm", "inputs": dict(a2a.inputs),
         "measured": {"metric": a2a.metric, "value": a2a.measured}, "source": "planted"}]}, "planted").cases
    rows = _gemm_rows("fp8", 0.6, h800)
    with pytest.raises(MoesimError, match="a2a-on-h100.*sibling 'h100-sxm'.*compute"):
        calibrate(rows + moved, h800, siblings=(h100,))
    truth = h100.with_efficiency(Efficiency())
    joint = calibrate(rows + _gemm_rows("bf16", 0.6, truth), h800, ("compute.gemm_compute_fraction",), starts=0,
                      siblings=(h100,))
    assert joint.params["compute.gemm_compute_fraction"] == pytest.approx(0.6, rel=1e-3)
