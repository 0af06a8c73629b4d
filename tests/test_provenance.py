"""Provenance, error bands and one price basis (moesim/prices.py, moesim/provenance.py).

Hand-worked cases: prices resolved on a basis, mixes refused or stated; a planted prior-only
profile flagged in the text, JSON and CSV of a real (small) plan; bands read from the shipped
file agree with `moesim validate` on the same case file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from numpy.testing import assert_allclose

from moesim.catalog import list_profiles, load_profile, read_error_bands, read_toml
from moesim.cli import run
from moesim.errors import SpecError
from moesim.prices import PriceEntry, PricesSpec, provider_tables, resolve
from moesim.provenance import Bands, prior_profile, profile_provenance

ROOT = Path(__file__).resolve().parents[1]


def _e(hw, usd, provider, quality="list"):
    return PriceEntry(hw, usd, provider, quality, f"{provider} page", "2026-10-07")


LISTED = {"a": _e("a", 2.0, "runpod"), "b": _e("b", 3.0, "runpod"), "t": _e("t", 4.2, "gcp")}


def test_one_provider_needs_no_basis():
    basis = resolve(PricesSpec(), {k: LISTED[k] for k in ("a", "b")})
    assert basis.basis == "runpod" and not basis.mixed
    assert [e.usd_per_device_hour for e in basis.entries] == [2.0, 3.0]


def test_two_providers_without_basis_refused_with_reason():
    with pytest.raises(SpecError) as err:
        resolve(PricesSpec(), LISTED)
    msg = str(err.value)
    assert msg.startswith("prices.basis") and "2 providers" in msg and "gcp: t" in msg and "runpod: a, b" in msg


def test_basis_without_the_candidate_refused_then_stated_mix():
    with pytest.raises(SpecError, match=r"t has no runpod price.*prices.mix.t = \"gcp\""):
        resolve(PricesSpec(basis="runpod"), LISTED)
    basis = resolve(PricesSpec(basis="runpod", mix={"t": "gcp"}), LISTED)
    assert basis.mixed and basis.stated_mix == ("t",)
    assert basis.statement() == "price basis: runpod list prices; stated mix: t from gcp"


def test_mix_must_name_the_candidates_provider():
    with pytest.raises(SpecError, match=r"prices.mix.t.*gcp's"):
        resolve(PricesSpec(basis="runpod", mix={"t": "aws"}), LISTED)


def test_override_for_unknown_hardware_is_an_error():
    with pytest.raises(SpecError, match=r"prices.usd_per_device_hour.h100.*not a candidate"):
        resolve(PricesSpec(usd_per_device_hour={"h100": 2.0}), {"a": LISTED["a"]})
    with pytest.raises(SpecError, match=r"not a candidate"):
        resolve(PricesSpec(), {"a": LISTED["a"]}, overrides={"zz": 1.0})


def test_own_basis_needs_every_candidate_and_uses_them():
    with pytest.raises(SpecError, match="missing: t"):
        resolve(PricesSpec(basis="own", usd_per_device_hour={"a": 1.0, "b": 1.5}), LISTED)
    spec = PricesSpec(basis="own", usd_per_device_hour={"a": 1.0, "b": 1.5, "t": 2.5}, source="our quote")
    basis = resolve(spec, LISTED)
    assert {e.hardware: e.usd_per_device_hour for e in basis.entries} == {"a": 1.0, "b": 1.5, "t": 2.5}
    assert not basis.mixed and basis.entries[0].source == "our quote"


def test_own_price_overrides_one_candidate_on_a_basis():
    basis = resolve(PricesSpec(basis="runpod", usd_per_device_hour={"b": 1.0}), {k: LISTED[k] for k in "ab"})
    assert basis.entry("b").usd_per_device_hour == 1.0 and basis.entry("b").provider == "own"
    assert "b from own prices" in basis.statement()


def test_shipped_profiles_carry_provider_quality_and_origins():
    tables = provider_tables(load_profile(n) for n in list_profiles())
    assert {"runpod", "gcp", "tensorwave", "coreweave"} <= set(tables)
    runpod = {e.hardware for e in tables["runpod"]}
    assert {"h100-sxm", "h200-sxm", "b200"} <= runpod and "mi300x" not in runpod
    for e in (e for es in tables.values() for e in es):
        assert e.source and e.as_of, e
    assert profile_provenance(load_profile("a100-sxm-80gb")).prior_only
    assert profile_provenance(load_profile("mi300x")).label() == "compute calibrated, comm prior"
    assert profile_provenance(load_profile("h800-sxm")).label() == "calibrated"
    assert profile_provenance(load_profile("h100-sxm")).label() == "compute transferred, comm calibrated"


def test_bands_file_matches_validate_on_the_eval_set():
    """The shipped out-of-sample band of a kind is what `moesim validate` measures now (so the
    file is regenerated when a profile changes); median |error| to rtol 1e-9 (same computation)."""
    from moesim.cases import load_cases
    from moesim.validate import validate

    bands = Bands(read_error_bands())
    report = validate(load_cases(ROOT / "validation/data/published-eval.json"))
    for kind in ("gemm", "grouped_gemm", "all_to_all"):
        b = bands.band(kind)
        assert b.sample == "out-of-sample"
        assert_allclose(b.median_abs_rel_error, report.summary[kind].median_abs_rel_error, rtol=1e-9)
        assert b.n == report.summary[kind].n


def test_prior_only_band_is_wider_by_the_measured_ratio():
    bands = Bands(read_error_bands())
    cal, pri = bands.band("serving"), bands.band("serving", prior_only=True)
    assert pri.widened_by >= 1.0 and pri.median_abs_rel_error >= cal.median_abs_rel_error
    w = read_error_bands()["prior_widening"]
    assert pri.widened_by >= w["prior_median_abs_rel_error"] / w["median_abs_rel_error"] - 1e-12


def test_prior_band_compares_the_same_cases():
    """Prior profiles cannot price end-to-end serving rows (the planner loads catalog profiles):
    the prior figures are over the cases both runs priced, beside the shipped ones over the same
    cases, and the widening is their ratio (3x here), not prior-subset / whole-sample (0.3 / 0.2)."""
    from types import SimpleNamespace as NS

    from moesim.provenance import bands_from_reports

    def report(rows):
        return NS(source="planted.json", cases=[NS(id=i, kind="serving", status=st, rel_error=e) for i, st, e in rows])

    shipped = report([("a", "ok", 0.1), ("b", "ok", 0.2), ("c", "ok", -0.9)])
    prior = report([("a", "ok", -0.3), ("b", "unsupported", None), ("c", "unsupported", None)])
    e = bands_from_reports(shipped, prior, "out-of-sample", "2026-12-07")["entries"][0]
    assert (e["n"], e["median_abs_rel_error"], e["max_abs_rel_error"]) == (3, 0.2, 0.9)
    assert (e["prior_n"], e["prior_median_abs_rel_error"], e["paired_median_abs_rel_error"]) == (1, 0.3, 0.1)
    bands = Bands({"entries": [e]})
    assert_allclose(bands.prior_factor("serving"), 3.0, rtol=1e-12)
    assert_allclose(bands.band("serving", prior_only=True).median_abs_rel_error, 0.6, rtol=1e-12)


def test_write_bands_regenerates_the_entries(tmp_path, capsys):
    out = tmp_path / "bands.json"
    assert run(["validate", str(ROOT / "validation/data/published-eval.json"), "--write-bands", str(out)]) == 0
    capsys.readouterr()
    new, shipped = Bands(json.loads(out.read_text())), Bands(read_error_bands())
    for kind in ("gemm", "all_to_all"):
        assert_allclose(new.band(kind).median_abs_rel_error, shipped.band(kind).median_abs_rel_error, rtol=1e-9)


def test_prior_profile_resets_every_efficiency():
    # host issue time is a property of the software stack (moesim/data/stacks.toml), not of the profile
    q = prior_profile(load_profile("h800-sxm"))
    assert q.efficiency.compute_origin == "prior" and q.efficiency.compute.gemm_compute_fraction == 0.80


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A user profile without an [efficiency] section (so: the generic prior) beside h200-sxm."""
    d = tmp_path_factory.mktemp("planted")
    prof = read_toml(ROOT / "hwprofiles/h200-sxm.toml")
    prof["name"] = "planted-gpu"
    prof.pop("efficiency")
    (d / "planted-gpu.toml").write_text(tomli_w.dumps(prof))
    s = d / "s.toml"
    s.write_text(
        f'kind = "serving"\nname = "planted"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm", "{d / "planted-gpu.toml"}"]\n'
        "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
        "[slo]\ntpot_s = 0.08\nttft_s = 3.0\n"
        "[search]\ndevices_per_replica = [8]\nbatch_per_device = [8, 32]\ntp = [1]\nattention_layouts = [\"dp\"]\n"
        "[verify]\ntop_n = 0\n")
    return s, str(d / "planted-gpu.toml")


def test_planted_prior_only_profile_flagged_in_text_json_csv(planted, capsys, tmp_path):
    scenario, hw = planted
    assert run(["plan", str(scenario)]) == 0
    text = capsys.readouterr().out
    assert f"{hw}!" in text and "prior-only" in text and "price basis: runpod list prices" in text
    assert "h200-sxm!" not in text
    csv_path = tmp_path / "c.csv"
    assert run(["plan", str(scenario), "--json", "--csv", str(csv_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provenance"]["prior_only"] == [hw]
    flags = {c["hardware"]: c["prior_only"] for c in data["candidates"]}
    assert flags == {hw: True, "h200-sxm": False}
    assert data["provenance"]["answer_band"]["median_abs_rel_error"] > 0
    header = csv_path.read_text().splitlines()[0]
    assert "efficiency_origin" in header and "price_provider" in header


def test_plan_refuses_two_providers_without_basis(tmp_path, capsys):
    s = tmp_path / "s.toml"
    s.write_text('kind = "serving"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm", "mi300x"]\n'
                 "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
                 "[slo]\ntpot_s = 0.08\n")
    assert run(["plan", str(s), "--small"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prices.basis" in err and "tensorwave: mi300x" in err


def test_prices_for_a_known_profile_dropped_by_a_whatif_are_kept_out():
    """A what-if that narrows the candidates keeps the scenario's mix and prices for the others."""
    basis = resolve(PricesSpec(basis="runpod", mix={"t": "gcp"}, usd_per_device_hour={"t": 1.0}),
                    {"a": LISTED["a"]}, known=("t",))
    assert [e.hardware for e in basis.entries] == ["a"] and not basis.mixed


def test_docs_error_table_is_the_bands_file():
    """docs/validation.md's table rows are the shipped bands (regenerate both together)."""
    doc = (ROOT / "docs/validation.md").read_text()
    for e in read_error_bands()["entries"]:
        def pct(x):
            return "-" if x is None else f"{x:.1%}"

        row = (f"| {e['kind']} | {e['sample']} | {e['n']} | {e['median_abs_rel_error']:.1%} | "
               f"{e['max_abs_rel_error']:.1%} | {e['prior_n']} | {pct(e['paired_median_abs_rel_error'])} | "
               f"{pct(e['prior_median_abs_rel_error'])} | {pct(e['prior_max_abs_rel_error'])} | `{e['source']}` |")
        assert row in doc, row


def test_rewriting_efficiency_keeps_the_part_origins(tmp_path):
    """validation/calibrate_published.py rewrites [efficiency] through catalog.replace_efficiency."""
    from moesim.catalog import replace_efficiency

    p = tmp_path / "h100-sxm.toml"
    p.write_text((ROOT / "hwprofiles/h100-sxm.toml").read_text())
    replace_efficiency(p, load_profile("h100-sxm").efficiency)
    e = load_profile(str(p)).efficiency
    assert (e.compute_origin, e.comm_origin) == ("transferred", "calibrated")


def test_calibrate_marks_the_fitted_part_calibrated():
    from moesim.calibrate import calibrate
    from moesim.cases import load_cases

    cases = load_cases(ROOT / "validation/data/cpu-host-calib.json").cases
    prof = prior_profile(load_profile("cpu-host"))
    fitted = calibrate(cases, prof, ("compute.gemm_compute_fraction",), starts=0).profile
    assert (fitted.efficiency.compute_origin, fitted.efficiency.comm_origin) == ("calibrated", "prior")
