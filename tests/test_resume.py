"""The --results resume file: stale inputs and corrupt files are refused with the reason, never
mixed in; a torn tail is cut before appending; a second writer is locked out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from moesim import cli
from moesim.catalog import _profiles_dir
from moesim.errors import MoesimError
from moesim.planner.resume import ResultsFile, input_digests
from moesim.planner.scenario import scenario_from_dict, scenario_model
from moesim.planner.space import serving_space
from moesim.planner.sweep import run_sweep
from moesim.planner.testing import ClosedFormEvaluator
from moesim.routing import write_trace

SCENARIO = scenario_from_dict({
    "name": "resume", "model": "deepseek-v3", "hardware": ["slow-gpu", "fast-gpu"],
    "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 20000},
    "slo": {"tpot_s": 0.08},
    "search": {"devices_per_replica": [8, 16], "batch_per_device": [4, 16]},
})
CANDS = serving_space(SCENARIO, scenario_model(SCENARIO)).candidates


def _sweep(path, scenario=SCENARIO, evaluator=None, cands=CANDS):
    return run_sweep(cands, scenario, evaluator or ClosedFormEvaluator(), executor="inline", results_path=path)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]  # every line whole JSON (none glued)


# ---- stale inputs ---------------------------------------------------------------------------------
def _plan_dir(tmp_path: Path) -> Path:
    """A scenario that names its own copy of the h100-sxm profile (and a routing trace) by path."""
    shutil.copy(_profiles_dir() / "h100-sxm.toml", tmp_path / "gpu.toml")
    E = 256  # deepseek-v3's routed experts
    write_trace(tmp_path / "trace.json", E, 8, counts_SE=np.full((1, E), 8))
    (tmp_path / "plan.toml").write_text(
        'name = "stale"\nmodel = "deepseek-v3"\nhardware = ["gpu.toml"]\n'
        '[routing]\nskew = "trace:trace.json"\n'
        "[workload]\nprompt_len = 1000\noutput_len = 200\ntarget_output_tokens_per_s = 20000\n"
        "[slo]\ntpot_s = 0.08\n"
        "[search]\ndevices_per_replica = [16, 32]\nbatch_per_device = [16, 64]\ntp = [1]\n"
        "[verify]\ntop_n = 0\n")
    return tmp_path


def _plan(d: Path, capsys) -> tuple[int, str]:
    rc = cli.run(["plan", str(d / "plan.toml"), "--results", str(d / "r.jsonl"), "--executor", "inline", "--json"])
    return rc, capsys.readouterr().err


def test_changed_profile_content_is_refused(tmp_path, capsys):
    # the defect: halve the profile's HBM bandwidth, resume, and the old layout was kept at the old price
    d = _plan_dir(tmp_path)
    rc, err = _plan(d, capsys)
    assert rc == 0, err
    before = (d / "r.jsonl").read_bytes()
    text = (d / "gpu.toml").read_text()
    assert "hbm_bandwidth_GBps = 3350\n" in text
    (d / "gpu.toml").write_text(text.replace("hbm_bandwidth_GBps = 3350\n", "hbm_bandwidth_GBps = 1675\n"))
    rc, err = _plan(d, capsys)
    assert rc == 2 and "other inputs" in err and "hardware" in err and "gpu.toml" in err
    assert len(err.strip().splitlines()) == 1
    assert (d / "r.jsonl").read_bytes() == before  # a refused file is left untouched


def test_changed_trace_content_is_refused(tmp_path, capsys):
    d = _plan_dir(tmp_path)
    assert _plan(d, capsys)[0] == 0
    E = 256
    write_trace(d / "trace.json", E, 8, counts_SE=np.arange(1, E + 1)[None, :])
    rc, err = _plan(d, capsys)
    assert rc == 2 and "trace" in err and "other inputs" in err


def test_unchanged_inputs_resume_to_the_same_answer(tmp_path, capsys):
    d = _plan_dir(tmp_path)
    assert cli.run(["plan", str(d / "plan.toml"), "--executor", "inline", "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert _plan(d, capsys)[0] == 0
    rc = cli.run(["plan", str(d / "plan.toml"), "--results", str(d / "r.jsonl"), "--executor", "inline", "--json"])
    resumed = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert resumed["answer"] == fresh["answer"] and resumed["candidates"] == fresh["candidates"]


def test_digests_cover_every_named_file(tmp_path):
    d = _plan_dir(tmp_path)
    from moesim.planner.scenario import load_scenario

    keys = set(input_digests(load_scenario(d / "plan.toml"), ClosedFormEvaluator()))
    assert {"scenario", "evaluator", "moesim", "model deepseek-v3"} <= keys
    assert any(k.startswith("hardware ") and k.endswith("gpu.toml") for k in keys)
    assert any(k.startswith("trace ") and k.endswith("trace.json") for k in keys)


def test_another_scenario_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    _sweep(path, cands=CANDS[:4])
    other = scenario_from_dict({**SCENARIO.to_dict(), "name": "other"})
    with pytest.raises(MoesimError, match=r"another scenario.*changed: scenario"):
        _sweep(path, scenario=other, cands=CANDS[:4])


# ---- corrupt files --------------------------------------------------------------------------------
def _written(tmp_path) -> Path:
    path = tmp_path / "r.jsonl"
    _sweep(path)
    return path


@pytest.mark.parametrize("header, match", [
    ("{not json", "not a moesim results file"),
    ('{"fingerprint": "0123456789abcdef"}', "not a moesim results file"),  # version 1 header
    ('{"format": "moesim.plan-results", "version": 99}', "version 99"),
    ('"a string"', "not a moesim results file"),
    ("\xff\xfe binary", "not a moesim results file"),
])
def test_unreadable_header_is_refused(tmp_path, header, match):
    path = _written(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(header + "\n" + "".join(lines[1:]), errors="surrogateescape")
    before = path.read_bytes()
    with pytest.raises(MoesimError, match=match):
        _sweep(path)
    assert path.read_bytes() == before


def test_two_headers_are_refused(tmp_path):
    # two runs on one file wrote two fingerprint lines: every later resume crashed
    path = _written(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[:1] + lines[3:]))
    with pytest.raises(MoesimError, match="line 4 is a second header"):
        _sweep(path)


@pytest.mark.parametrize("record", ['{"key": "x"}', "[1, 2]", "garbage", '{"candidate": 5, "key": "y"}'])
def test_corrupt_record_is_refused(tmp_path, record):
    path = _written(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + record + "\n" + "".join(lines[2:]))
    with pytest.raises(MoesimError, match="line 3 is .*corrupt"):
        _sweep(path)


def test_record_with_a_foreign_key_is_refused(tmp_path):
    path = _written(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[1])
    row["key"] = "another|candidate"
    path.write_text(lines[0] + json.dumps(row) + "\n" + "".join(lines[2:]))
    with pytest.raises(MoesimError, match="does not match its candidate"):
        _sweep(path)


def test_torn_tail_is_cut_before_appending(tmp_path):
    # the defect: a torn last line was glued to the next record and stayed corrupt
    path = _written(tmp_path)
    full = _lines(path)
    text = path.read_text()
    path.write_text(text[:-30])
    log: list = []

    class Counting(ClosedFormEvaluator):
        def evaluate(self, candidates, scenario):
            log.extend(c.key() for c in candidates)
            return super().evaluate(candidates, scenario)

    _sweep(path, evaluator=Counting())
    assert log == [CANDS[-1].key()]
    again = _lines(path)  # parses line by line: nothing glued
    assert len(again) == len(full) and again[-1]["key"] == CANDS[-1].key()
    _sweep(path)  # and it resumes cleanly again


def test_torn_header_of_ours_is_rewritten(tmp_path):
    path = _written(tmp_path)
    header = path.read_text().splitlines()[0]
    path.write_text(header[:20])
    assert _sweep(path) == run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(), executor="inline")
    assert len(_lines(path)) == 1 + len(CANDS)


def test_a_file_that_is_not_ours_is_never_truncated(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes, no newline at the end")
    with pytest.raises(MoesimError, match="not a moesim results file"):
        _sweep(path)
    assert path.read_text() == "my notes, no newline at the end"


def test_second_writer_is_locked_out(tmp_path):
    path = tmp_path / "r.jsonl"
    first = ResultsFile(path, input_digests(SCENARIO, ClosedFormEvaluator()))
    try:
        with pytest.raises(MoesimError, match="another moesim run is writing"):
            _sweep(path)
    finally:
        first.close()
    _sweep(path)  # free again once the first writer is done
    assert len(_lines(path)) == 1 + len(CANDS)


def test_failed_run_leaves_no_new_results_file(tmp_path):
    class Interrupted(ClosedFormEvaluator):
        def evaluate(self, candidates, scenario):
            raise KeyboardInterrupt

    path = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _sweep(path, evaluator=Interrupted())
    assert not path.exists()


@pytest.mark.parametrize("where, match", [("", "is a directory"), ("missing/r.jsonl", "does not exist")])
def test_bad_results_path_is_refused(tmp_path, where, match):
    with pytest.raises(MoesimError, match=match):
        _sweep(tmp_path / where if where else tmp_path)


def test_changed_model_file_is_refused(tmp_path):
    from moesim.catalog import _PRESETS_DIR

    model = tmp_path / "model.toml"
    shutil.copy(_PRESETS_DIR / "deepseek-v3.toml", model)
    scenario = scenario_from_dict({**SCENARIO.to_dict(), "model": str(model)})
    path = tmp_path / "r.jsonl"
    _sweep(path, scenario=scenario, cands=CANDS[:4])
    _sweep(path, scenario=scenario, cands=CANDS[:4])  # same bytes: resumes
    model.write_text(model.read_text().replace("top_k = 8", "top_k = 6"))
    with pytest.raises(MoesimError, match=r"changed: model .*model\.toml"):
        _sweep(path, scenario=scenario, cands=CANDS[:4])
