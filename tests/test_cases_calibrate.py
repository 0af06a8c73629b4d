"""Case files, the generic calibrator and the validate report, with a planted predictor."""
from __future__ import annotations

import json
import sys
import types

import pytest

from moesim import validate as validate_mod
from moesim.calibrate import calibrate, param_bounds, with_params
from moesim.cases import parse_cases
from moesim.catalog import load_profile
from moesim.cli import run
from moesim.errors import MoesimError
from moesim.validate import UnsupportedCase, validate

TRUE_FRACTION = 0.7
TRUE_OVERHEAD_US = 5.0


def _planted_predict(inputs, hw):
    """time = 2mnk / (peak x gemm_compute_fraction) + kernel_overhead (a planted closed form)."""
    if inputs.get("m") is None:
        raise UnsupportedCase("m not stated")
    eff = hw.efficiency.compute
    flops = 2.0 * inputs["m"] * inputs["n"] * inputs["k"]
    return flops / (hw.peak_flops(inputs["dtype"]) * eff.gemm_compute_fraction) + eff.kernel_overhead_us * 1e-6


@pytest.fixture
def planted(monkeypatch):
    mod = types.ModuleType("planted_predictor")
    mod.predict = _planted_predict
    mod.FIT = ("compute.gemm_compute_fraction", "compute.kernel_overhead_us")
    monkeypatch.setitem(sys.modules, "planted_predictor", mod)
    monkeypatch.setitem(validate_mod.PREDICTORS, "gemm", ("planted_predictor", "predict", "FIT"))
    return mod


def _case(i, m, n, k, value, hardware="h100-sxm", **extra):
    return {"id": f"c{i}", "kind": "gemm", "hardware": hardware,
            "inputs": {"m": m, "n": n, "k": k, "dtype": "bf16", **extra},
            "measured": {"metric": "time_s", "value": value}, "source": "planted"}


def _planted_file(hw):
    truth = with_params(hw, {"compute.gemm_compute_fraction": TRUE_FRACTION,
                             "compute.kernel_overhead_us": TRUE_OVERHEAD_US})
    shapes = [(64, 1024, 1024), (128, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 2048),
              (256, 2048, 7168), (1024, 14336, 4096)]
    cases = [_case(i, m, n, k, _planted_predict({"m": m, "n": n, "k": k, "dtype": "bf16"}, truth))
             for i, (m, n, k) in enumerate(shapes)]
    return {"schema": "moesim-cases/1", "description": "planted", "cases": cases}


def test_calibrate_recovers_planted_parameters(planted):
    hw = load_profile("h100-sxm")
    cf = parse_cases(_planted_file(hw), "planted")
    result = calibrate(cf.cases, hw, source="planted")
    # Exact synthetic data from the same closed form: the fit must recover the truth closely.
    assert result.params["compute.gemm_compute_fraction"] == pytest.approx(TRUE_FRACTION, rel=1e-3)
    assert result.params["compute.kernel_overhead_us"] == pytest.approx(TRUE_OVERHEAD_US, rel=1e-2)
    assert result.max_abs_rel_error_after < 1e-3
    assert "calibrated" in result.profile.efficiency.origin


def test_validate_reports_errors_and_unsupported(planted):
    hw = load_profile("h100-sxm")
    data = _planted_file(hw)
    data["cases"].append(_case(99, None, 1, 1, 1.0, not_stated=["m"]))
    report = validate(parse_cases(data, "x"))
    by_id = {c.id: c for c in report.cases}
    assert by_id["c99"].status == "unsupported" and "m not stated" in by_id["c99"].reason
    s = report.summary["gemm"]
    assert (s.n, s.unsupported) == (6, 1)
    # generic prior (0.8 fraction, 3 us) vs planted truth (0.7, 5 us): every error is nonzero
    assert s.median_abs_rel_error > 0


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda c: c.pop("measured"), "missing key 'measured'"),
        (lambda c: c["inputs"].pop("k"), "missing required input 'k'"),
        (lambda c: c["inputs"].update(m=None), "null but not listed"),
        (lambda c: c.update(kind="bogus"), "kind 'bogus' unknown"),
        (lambda c: c["measured"].update(value=-1), "must be a positive number"),
        (lambda c: c["measured"].update(metric="tokens"), "metric 'tokens' not known"),
    ],
)
def test_bad_case_named_and_others_kept(mutate, needle):
    data = {"schema": "moesim-cases/1", "cases": [_case(0, 1, 1, 1, 1.0), _case(1, 2, 2, 2, 1.0)]}
    mutate(data["cases"][1])
    cf = parse_cases(data, "f")
    assert [c.id for c in cf.cases] == ["c0"]
    assert cf.problems[0].id == "c1" and needle in cf.problems[0].problem


def test_wrong_schema_rejected():
    with pytest.raises(MoesimError, match="moesim-cases/1"):
        parse_cases({"schema": "other", "cases": []}, "f")


def test_param_bounds_from_spec():
    assert param_bounds("compute.gemm_compute_fraction")[1] == 1.0
    assert param_bounds("comm.scale_up_latency_us")[0] == 0.0
    with pytest.raises(MoesimError, match="unknown efficiency parameter"):
        param_bounds("compute.nope")
    with pytest.raises(MoesimError, match="not a real-valued"):
        param_bounds("compute.gemm_tile_m")


def test_cli_validate_malformed_file_exit_2_and_keeps_good_cases(planted, tmp_path, capsys):
    hw = load_profile("h100-sxm")
    data = _planted_file(hw)
    data["cases"][0]["inputs"].pop("n")
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(data))
    code = run(["validate", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    report = json.loads(out)
    assert len(report["cases"]) == 5  # the other five are still predicted
    assert "case c0" in err and "'n'" in err and "Traceback" not in err


def test_cli_calibrate_writes_loadable_profile(planted, tmp_path, capsys):
    hw = load_profile("h100-sxm")
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(_planted_file(hw)))
    out_toml = tmp_path / "cal.toml"
    code = run(["calibrate", str(path), "--hw", "h100-sxm", "-o", str(out_toml), "--json"])
    assert code == 0, capsys.readouterr().err
    fitted = load_profile(str(out_toml))
    assert fitted.efficiency.compute.gemm_compute_fraction == pytest.approx(TRUE_FRACTION, rel=1e-3)
