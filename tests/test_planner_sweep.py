"""Sweeps: streaming to JSONL, resume without redoing work, failures reported, Dask == local."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from moesim.errors import MoesimError
from moesim.planner.plan import plan
from moesim.planner.scenario import scenario_from_dict, scenario_model
from moesim.planner.space import serving_space
from moesim.planner.sweep import MIN_PARALLEL, grouped_chunks, run_sweep
from moesim.planner.testing import ClosedFormEvaluator

SCENARIO = scenario_from_dict({
    "name": "sweep", "model": "deepseek-v3", "hardware": ["slow-gpu", "fast-gpu"],
    "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 20000},
    "slo": {"tpot_s": 0.05},
    "search": {"devices_per_replica": [8, 16, 32, 64], "batch_per_device": [4, 16, 64, 256]},
})
CANDS = serving_space(SCENARIO, scenario_model(SCENARIO)).candidates


@dataclass(frozen=True)
class Counting(ClosedFormEvaluator):
    """Closed-form evaluator that records each candidate key it evaluates (in-process only)."""

    log: list = None

    def evaluate(self, candidates, scenario):
        self.log.extend(c.key() for c in candidates)
        return super().evaluate(candidates, scenario)


def test_space_is_large_enough_to_chunk():
    assert len(CANDS) == 2 * 4 * 4 * 4  # hw x devices x (dp + tp 2, 4, 8) x batches


def test_results_stream_and_resume_without_redoing(tmp_path):
    path = tmp_path / "sweep.jsonl"
    full = run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(), executor="inline")

    class Stop(Exception):
        pass

    seen = []

    def interrupt(results):
        seen.append(len(results))
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(), executor="inline", results_path=path,
                  chunk_size=20, on_chunk=interrupt)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 40  # fingerprint + two chunks of 20, streamed before the interruption
    log: list = []
    resumed = run_sweep(CANDS, SCENARIO, Counting(log=log), executor="inline", results_path=path, chunk_size=20)
    done_first = {json.loads(x)["key"] for x in lines[1:]}
    assert len(log) == len(CANDS) - 40 and not done_first & set(log)
    assert resumed == full
    # a second rerun evaluates nothing
    log.clear()
    assert run_sweep(CANDS, SCENARIO, Counting(log=log), executor="inline", results_path=path) == full
    assert log == []


def test_torn_last_line_is_redone(tmp_path):
    path = tmp_path / "sweep.jsonl"
    run_sweep(CANDS[:10], SCENARIO, ClosedFormEvaluator(), executor="inline", results_path=path)
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # cut the last record short, as a crash would
    log: list = []
    run_sweep(CANDS[:10], SCENARIO, Counting(log=log), executor="inline", results_path=path)
    assert log == [CANDS[9].key()]


def test_results_of_another_scenario_are_refused(tmp_path):
    path = tmp_path / "sweep.jsonl"
    run_sweep(CANDS[:4], SCENARIO, ClosedFormEvaluator(), executor="inline", results_path=path)
    other = scenario_from_dict({**SCENARIO.to_dict(), "name": "other"})
    with pytest.raises(MoesimError, match="another scenario"):
        run_sweep(CANDS[:4], other, ClosedFormEvaluator(), executor="inline", results_path=path)


def test_failed_configuration_is_reported_not_fatal():
    bad = CANDS[5].key()
    evs = run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(fail_keys=(bad,)), executor="inline", chunk_size=16)
    failed = [e for e in evs if e.status == "error"]
    assert [e.candidate.key() for e in failed] == [bad]
    assert "planted failure" in failed[0].detail
    r = plan(SCENARIO, ClosedFormEvaluator(fail_keys=(bad,)), executor="inline")
    assert {g.reason: g.count for g in r.rejected}["error"] == 1 and r.feasible


def test_local_processes_equal_inline():
    inline = run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(), executor="inline")
    local = run_sweep(CANDS, SCENARIO, ClosedFormEvaluator(), executor="local", workers=2, chunk_size=32)
    assert local == inline


@dataclass(frozen=True)
class Keyed(ClosedFormEvaluator):
    """Closed-form evaluator asking the sweep to keep candidates of one EP size in one chunk."""

    @staticmethod
    def chunk_key(c):
        return c.ep


def test_grouped_chunks_hand_case():
    # groups by ep: 8 -> 3 candidates, 16 -> 2, 32 -> 1; two bins: {8} and {16, 32}
    cands = [CANDS[0].__class__("x", n, ep=n, batch=b) for n, b in ((8, 1), (16, 1), (8, 2), (32, 1), (16, 2), (8, 4))]
    chunks = grouped_chunks(cands, 100, 2, Keyed.chunk_key)
    assert sorted(sorted(c.ep for c in ch) for ch in chunks) == [[8, 8, 8], [16, 16, 32]]
    # a size limit of 2 cuts the ep-8 group; every candidate lands exactly once
    small = grouped_chunks(cands, 2, 2, Keyed.chunk_key)
    assert max(map(len, small)) <= 2 and sorted(c.key() for ch in small for c in ch) == sorted(c.key() for c in cands)


def test_grouped_local_processes_equal_inline(monkeypatch):
    from moesim.planner import sweep

    inline = run_sweep(CANDS, SCENARIO, Keyed(), executor="inline")
    assert len(CANDS) < MIN_PARALLEL  # a sweep this small runs inline by default; force the grouped path
    monkeypatch.setattr(sweep, "MIN_PARALLEL", 64)
    assert run_sweep(CANDS, SCENARIO, Keyed(), executor="local", workers=2) == inline


def test_dask_equals_local():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        dask = plan(SCENARIO, ClosedFormEvaluator(), executor="dask", address=cluster.scheduler_address,
                    chunk_size=16)
    local = plan(SCENARIO, ClosedFormEvaluator(), executor="local", workers=2, chunk_size=16)
    assert dask.to_dict()["candidates"] == local.to_dict()["candidates"]
    assert dask.to_dict()["rejected"] == local.to_dict()["rejected"]
    assert dask.answer == local.answer


def test_dask_needs_an_address():
    with pytest.raises(MoesimError, match="--address"):
        run_sweep(CANDS[:2], SCENARIO, ClosedFormEvaluator(), executor="dask")
