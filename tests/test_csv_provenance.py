"""--csv on whatif, compare and pilot: checked before any work, written only on success, with the
provenance columns of plan's CSV; their JSON carries the same columns."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from moesim.cli import run

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--small", "--verify-top", "0", "--set", "hardware=h200-sxm,b300"]
PROVENANCE = ("efficiency_origin", "prior_only", "price_provider", "price_quality", "price_as_of", "price_basis",
              "error_band_kind", "error_band_typical_pct", "error_band_worst_pct", "error_band_sample",
              "error_band_widened_by")


@pytest.mark.parametrize("argv", [
    ["whatif", "default", "--set", "slo.tpot_s=0.04"],
    ["compare", "default", "--dense", "llama3.1-70b"],
    ["pilot", "default"],
])
def test_bad_csv_path_refused_before_any_work(argv, tmp_path, capsys):
    t = time.perf_counter()
    assert run([*argv, *SMALL, "--csv", str(tmp_path / "missing" / "out.csv")]) == 2
    assert time.perf_counter() - t < 2.0  # a plan takes seconds; the refusal comes first (generous bound)
    assert "--csv" in capsys.readouterr().err


def test_csv_not_written_when_the_command_fails(tmp_path, capsys):
    out = tmp_path / "stages.csv"
    train = ROOT / "examples" / "train_mixtral_8x22b.toml"
    assert run(["pilot", str(train), "--csv", str(out)]) == 2  # a pilot needs a serving scenario
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial or temporary file left
    capsys.readouterr()


def test_whatif_json_and_csv_carry_the_same_provenance(tmp_path, capsys):
    out = tmp_path / "w.csv"
    assert run(["whatif", "default", *SMALL, "--set", "slo.tpot_s=0.04", "--csv", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for side in ("base", "changed"):
        cands = data[side]["candidates"]
        assert cands and all(set(PROVENANCE) <= set(c) for c in cands), side
        assert data["provenance"][side]["price_basis"]["basis"] == cands[0]["price_basis"]
        first = next(r for r in rows if r["side"] == side)
        assert first["rank_key"] == cands[0]["rank_key"]
        for k in PROVENANCE:
            assert str(cands[0][k]) == first[k], (side, k)
    # the band is the plan's forecast kind's, widened on a prior-only profile (b300 ships prior-only)
    by_hw = {r["hardware"]: r for r in rows}
    assert by_hw["b300"]["prior_only"] == "True" and float(by_hw["b300"]["error_band_widened_by"]) > 1.0
    assert by_hw["h200-sxm"]["prior_only"] == "False" and float(by_hw["h200-sxm"]["error_band_widened_by"]) == 1.0
    assert float(by_hw["b300"]["error_band_typical_pct"]) > float(by_hw["h200-sxm"]["error_band_typical_pct"])


def test_plan_csv_has_the_shared_provenance_columns(tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert run(["plan", *SMALL, "--csv", str(out)]) == 0
    capsys.readouterr()
    with open(out, newline="") as fh:
        header = next(csv.reader(fh))
    assert header[-len(PROVENANCE):] == list(PROVENANCE)
