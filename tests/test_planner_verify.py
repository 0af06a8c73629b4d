"""Serving-DES verification: the replica decision and its interval (moesim/planner/verify.py),
worked by hand with a closed-form stand-in for the simulator, and the choice of what to verify."""
from __future__ import annotations

import math

import pytest

import moesim.planner.verify as V
from moesim.planner.evaluation import Candidate, Evaluation
from moesim.planner.plan import verify_targets
from moesim.planner.rank import Ranked
from moesim.planner.scenario import scenario_from_dict

SC = scenario_from_dict({
    "model": "deepseek-v3", "hardware": ["h200-sxm"], "max_devices": 64,
    "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 20000},
    "slo": {"tpot_s": 0.05}, "verify": {"seeds": 2},
})  # target: 20,000 / 500 = 40 req/s


def _fake_probe(half: float, calls: list):
    """p99 TPOT = 0.01 s + 0.001 s x per-replica rate, with half-width ``half`` (one seed)."""
    def probe(system, scenario, replicas, rate, lengths):
        calls.append(replicas)
        return V.Probe(replicas, rate, 1, {"tpot_s": 0.01 + 0.001 * rate}, {"tpot_s": half}, None, None)
    return probe


@pytest.mark.parametrize("r0", [1, 2, 5])
def test_walk_finds_smallest_replica_count(monkeypatch, r0):
    # lambda(R) = 40 / R: R=1 -> TPOT 0.050 (met: <= 0.05), so R* = 1 from any start
    calls = []
    monkeypatch.setattr(V, "probe", _fake_probe(0.0, calls))
    best, probes = V.decide_replicas(None, SC, r0, 8, None)
    assert best == 1 and calls == list(range(r0, 0, -1))


def test_walk_up_and_stop_once_decided(monkeypatch):
    # tighter SLO 0.02 s: TPOT(40/R) = 0.01 + 0.04 / R <= 0.02 needs R >= 4; from R0 = 2: 2, 3, 4
    calls = []
    monkeypatch.setattr(V, "probe", _fake_probe(0.0, calls))
    sc = SC.model_copy(update={"slo": SC.slo.model_copy(update={"tpot_s": 0.02})})
    best, _ = V.decide_replicas(None, sc, 2, 8, None)
    assert best == 4 and calls == [2, 3, 4]
    # the probe limit: at most MAX_PROBES loads, never past max_devices (64 / 8 = 8 replicas)
    sc2 = SC.model_copy(update={"slo": SC.slo.model_copy(update={"tpot_s": 0.0101})})
    calls.clear()
    assert V.decide_replicas(None, sc2, 1, 8, None)[0] is None and len(calls) == V.MAX_PROBES


def test_probe_status_hand_cases():
    slo = SC.slo  # tpot 0.05
    p = lambda v, h: V.Probe(1, 1.0, 1, {"tpot_s": v}, {"tpot_s": h}, None, None)  # noqa: E731
    assert p(0.04, 0.005).status(slo) == "met"          # 0.045 <= 0.05
    assert p(0.048, 0.005).status(slo) == "unsure"      # 0.043..0.053 straddles
    assert p(0.048, 0.005).point_met(slo)
    assert p(0.056, 0.005).status(slo) == "missed"      # 0.051 > 0.05
    assert p(0.04, math.nan).status(slo) == "unsure"    # no interval: never confidently met
    assert p(math.inf, math.nan).status(slo) == "missed"  # unfinished requests


def test_interval_widens_when_unsure(monkeypatch):
    # half-width 0.003: R=1 gives 0.050 +- 0.003 (unsure, point met) -> R* = 1, interval [1, 2]
    monkeypatch.setattr(V, "probe", _fake_probe(0.003, []))
    monkeypatch.setattr(V, "_system", lambda ev, sc, m, cache: None)
    ev = Evaluation(candidate=Candidate("h200-sxm", 8, batch=32), tokens_per_s=30000.0)
    v = V.verify_with_des(ev, SC, None)
    assert (v.replicas, v.replicas_ci) == (1, (1, 2))
    assert v.max_request_rate_per_s == pytest.approx(40.0) and v.rate_ci_low == pytest.approx(20.0)


def test_verify_targets_one_per_hardware_in_rank_order():
    def rk(hw, cost, b):
        return Ranked(Evaluation(candidate=Candidate(hw, 8, batch=b)), 1, 8, 1, cost, 0.0, 0.01)

    ranked = [rk("a", 1, 8), rk("a", 1, 16), rk("b", 2, 8), rk("a", 3, 32), rk("c", 4, 8)]
    assert [(r.candidate.hardware, r.candidate.batch) for r in verify_targets(ranked, 2)] == [("a", 8), ("b", 8)]
    assert len(verify_targets(ranked, 5)) == 3 and verify_targets(ranked, 0) == []
