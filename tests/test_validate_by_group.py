"""``moesim validate --by KEY``: the shipped model's errors per group of cases.

Every figure is recomputed here from the per-case errors of the same run (the validate report's
rows), so the test checks the grouping and the statistics, not the model. Tolerance: exact
(the same floats, medians of the same lists)."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import pytest

from moesim.accuracy import GROUP_KEYS, by_group, group_of
from moesim.cases import load_cases
from moesim.cli import run
from moesim.errors import MoesimError
from moesim.validate import validate

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
FILES = [DATA / "published-calibration.json", DATA / "published-e2e-training.json"]


@pytest.fixture(scope="module")
def result():
    files = [load_cases(p) for p in FILES]
    cases = tuple(c for f in files for c in f.cases)
    report = validate(files[0].__class__("x", "", cases, ()))
    return files, cases, report


@pytest.mark.parametrize("by", GROUP_KEYS)
def test_groups_partition_the_predicted_cases_and_their_medians(result, by):
    files, cases, report = result
    file_of = {c.id: str(p) for p, f in zip(FILES, files) for c in f.cases}
    groups = by_group(cases, report.cases, by, file_of)
    ok = {p.id: p.rel_error for p in report.cases if p.status == "ok"}
    assert sum(g.n for g in groups) == len(ok)  # every predicted case in exactly one group
    case_of = {c.id: c for c in cases}
    for g in groups:
        errs = [e for i, e in ok.items() if case_of[i].kind == g.kind
                and ("in-sample" if case_of[i].role == "calibration" else "out-of-sample") == g.sample
                and group_of(case_of[i], by, file_of) == g.group]
        assert g.n == len(errs) and g.median_abs_rel_error == median(abs(e) for e in errs)
        assert g.signed_median_rel_error == median(errs) and g.max_abs_rel_error == max(abs(e) for e in errs)
        assert g.within_15 == sum(abs(e) <= 0.15 for e in errs)


def test_group_values(result):
    files, cases, _ = result
    by_id = {c.id: c for c in cases}
    row = by_id["megatron-bridge-25.11-gpt-oss-120b-b200-64gpu-bf16"]
    assert group_of(row, "hardware") == "b200" and group_of(row, "model") == "gpt-oss-120b"
    assert group_of(row, "stack") == "megatron"  # the stack its predictor prices (case_stack)
    gb = by_id["megatron-bridge-25.11-gpt-oss-120b-gb200-64gpu-bf16"]
    assert group_of(gb, "stack") == "megatron-cudagraph"  # the GB200 recipes' graphs
    kernel = next(c for c in cases if c.kind == "gemm")
    assert group_of(kernel, "stack") == "-" and group_of(kernel, "source") == kernel.group
    with pytest.raises(MoesimError, match="--by"):
        group_of(row, "colour")


def test_cli_by_tables_and_json(capsys):
    assert run(["validate", *map(str, FILES), "--by", "hardware", "--by", "file", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["by"]) == {"hardware", "file"}
    files = {g["group"] for g in data["by"]["file"]}
    assert files == {str(p) for p in FILES}
    assert run(["validate", str(FILES[1]), "--by", "stack"]) == 0
    out = capsys.readouterr().out
    assert "errors by stack" in out and "megatron-cudagraph" in out and "within 15%" in out
    with pytest.raises(SystemExit) as err:  # argparse: one readable line naming the choices, exit 2
        run(["validate", str(FILES[1]), "--by", "colour"])
    assert err.value.code == 2 and "invalid choice: 'colour'" in capsys.readouterr().err
