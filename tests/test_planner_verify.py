"""Serving-DES verification: the replica decision and its interval (moesim/planner/verify.py),
worked by hand with a closed-form stand-in for the simulator, the choice of what to verify, and
the overload test (a backlog that grows over the window is missed whatever the percentiles say).

Tolerances: the backlog's time averages are exact arithmetic on hand-built requests (1e-12); on a
replica of affine iteration cost the DES's backlog growth is compared with the queueing closed
form (1 - mu / lambda) x arrivals (mu: every iteration carries the budget B, B / (a + b B) tokens/s
over P + L tokens per request) within 10% (the first-token slot, the warm-up transient and
Poisson noise: 0-4% when recorded over three seeds), and below a tenth of the overload
threshold at 0.8 mu (|growth| 0.1-0.3 against a threshold of ~970 when recorded)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

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


def test_backlog_time_averages_by_hand():
    from moesim.des.serving.metrics import backlog, waiting_mean

    arr = np.array([0.0, 1.0, 2.0, 3.0])
    first = np.array([0.5, 3.0, np.nan, np.inf])  # the last two never get a token
    # over [0, 4]: 0.5 + 2 + 2 + 1 = 5.5 request-seconds of waiting
    assert_allclose(waiting_mean(arr, first, 0.0, 4.0), 5.5 / 4.0, rtol=1e-12)
    assert_allclose(waiting_mean(arr, first, 2.0, 3.0), (1.0 + 1.0) / 1.0, rtol=1e-12)
    # window [0, 4]: second quarter [1, 2] waits 1 (request 1); last quarter [3, 4]: requests 2, 3
    b = backlog(arr, first, np.zeros(4, bool), 0.0, 4.0)
    assert_allclose([b["early"], b["late"], b["growth"], b["arrivals_between"]], [1.0, 2.0, 1.0, 2.0], rtol=1e-12)
    # a rejected request does not wait (it is a miss of its own)
    rej = np.array([False, False, True, False])
    assert_allclose(backlog(arr, first, rej, 0.0, 4.0)["late"], 1.0, rtol=1e-12)


def test_overload_threshold_by_hand():
    slo = SC.slo  # tpot 0.05 only
    p = lambda g, a: V.Probe(1, 1.0, 1, {"tpot_s": 0.01}, {"tpot_s": 0.001}, None, None, (g, a))  # noqa: E731
    # threshold max(3 sqrt(A), 0.1 A): A 100 -> 30; A 10,000 -> 1,000
    assert not p(30.0, 100.0).overloaded and p(30.1, 100.0).overloaded
    assert not p(1000.0, 1e4).overloaded and p(1000.1, 1e4).overloaded
    assert p(2000.0, 1e4).status(slo) == "missed" and not p(2000.0, 1e4).point_met(slo)
    assert p(-50.0, 1e4).status(slo) == "met"  # a shrinking backlog is the warm-up draining
    assert V.Probe(1, 1.0, 1, {"tpot_s": 0.01}, {"tpot_s": 0.001}, None, None).status(slo) == "met"
    assert p(2000.0, 1e4).to_dict()["backlog"] == {"growth": 2000.0, "arrivals_between": 1e4, "overloaded": True}


def test_probe_span_covers_a_loose_ttft_limit_and_enough_arrivals():
    def sc(slo, duration=60.0):
        return SC.model_copy(update={"slo": SC.slo.model_copy(update=slo),
                                     "verify": SC.verify.model_copy(update={"duration_s": duration})})
    # TTFT 2 s: 10 x 2 = 20 s < 60 s; 100 req/s gives 6,000 arrivals in 60 s
    assert V.probe_duration_s(sc({"ttft_s": 2.0}), 100.0) == 60.0
    assert V.probe_duration_s(sc({"ttft_s": 60.0}), 100.0) == 600.0   # 10 TTFT limits
    assert V.probe_duration_s(sc({"e2e_s": 30.0}), 100.0) == 300.0    # e2e bounds the first token
    assert V.probe_duration_s(sc({}), 10.0) == 200.0                  # 2,000 arrivals at 10 req/s
    assert V.probe_duration_s(sc({}), 0.1) == 600.0                   # at most 10 durations
    assert V.probe_duration_s(sc({"ttft_s": 1e6}), 100.0) == 600.0    # a limit that is no limit


def test_des_backlog_growth_follows_the_queueing_closed_form():
    from moesim.des.serving.arrivals import LengthDist, synthetic
    from moesim.des.serving.cost import LinearCost
    from moesim.des.serving.replica import SchedulerConfig
    from moesim.des.serving.system import Pool, ServingSystem, simulate

    a, b, B, P, L = 0.01, 1e-5, 2048, 400, 100
    system = ServingSystem(colocated=Pool(LinearCost(a, b), 1, SchedulerConfig(B, 2000, True)))
    mu = B / (a + b * B) / (P + L)  # requests/s of a saturated replica: 134.4
    for rho in (0.8, 1.3):
        reqs = synthetic("poisson", rho * mu, 200, LengthDist.fixed(P), LengthDist.fixed(L), 1)
        bk = simulate(system, reqs, warmup_s=20.0, window_end_s=200.0, max_time_s=800.0).backlog
        probe = V.Probe(1, rho * mu, 1, {}, {}, None, None, (bk["growth"], bk["arrivals_between"]))
        arrivals = bk["arrivals_between"]
        if rho > 1:  # an overloaded replica keeps 1 - mu / lambda of its arrivals waiting
            assert_allclose(bk["growth"], (1.0 - 1.0 / rho) * arrivals, rtol=0.10)
        else:        # one that keeps up has a stationary backlog, far inside the threshold
            assert abs(bk["growth"]) < 0.1 * max(3.0 * math.sqrt(arrivals), 0.1 * arrivals)
        assert probe.overloaded == (rho > 1)


def test_a_loose_ttft_limit_does_not_pass_an_overloaded_replica():
    """One A100 under vLLM serving Qwen3-30B-A3B with 8,000-token prompts and 50 output tokens
    sustains ~1.44 requests/s (its prompts fill vLLM's A100 budget of 2,048 tokens per iteration):
    500 output tokens/s need 7 replicas. With p50 TTFT <= 60 s a 60-s probe passed 3 replicas at
    3.33 requests/s (the queue grew by 1.9 requests/s, but the median wait stayed under 60 s in
    the window); the longer span and the backlog test miss it."""
    from moesim.planner.plan import plan

    sc = scenario_from_dict({
        "kind": "serving", "name": "a100-long-prompts", "model": "qwen3-30b-a3b", "hardware": ["a100-sxm-80gb"],
        "max_devices": 16, "stack": "vllm", "modes": ["colocated"],
        "workload": {"prompt_len": 8000, "output_len": 50, "target_output_tokens_per_s": 500, "dtype": "bf16"},
        "slo": {"percentile": 50, "tpot_s": 1.0, "ttft_s": 60.0},
        "search": {"devices_per_replica": [1], "batch_per_device": [16], "tp": [1], "pp": [1]},
        "verify": {"top_n": 1, "duration_s": 60, "seeds": 2}}, source="test")
    result = plan(sc, executor="inline")
    v = result.answer.verification
    assert v.replicas >= 7, v.probes
    # the walk's probes below the answer were missed because their backlog grew
    below = [p for p in v.probes if p["replicas"] < v.replicas]
    assert below and all(p["backlog"]["overloaded"] for p in below)
    assert any(f"{v.replicas - 1} replicas do not keep up" in n for n in v.notes)


def test_an_overloaded_decode_pool_grows_the_backlog_its_prefill_pool_does_not_see():
    """Disaggregated: prefill keeps up (first tokens come at once) while the decode pool, 20
    sequences of 100 tokens at 10 ms per step, sustains 20 requests/s. At 30 requests/s the
    requests queue for a decode slot after their first token: the backlog (waiting to decode)
    keeps 1 - 20 / 30 of the arrivals, the first-token wait alone stays flat."""
    from moesim.des.serving.arrivals import LengthDist, synthetic
    from moesim.des.serving.cost import LinearCost
    from moesim.des.serving.metrics import backlog
    from moesim.des.serving.replica import SchedulerConfig
    from moesim.des.serving.system import KVTransfer, Pool, ServingSystem, simulate

    system = ServingSystem(prefill=Pool(LinearCost(0.001, 1e-7), 1, SchedulerConfig(8192, 256)),
                           decode=Pool(LinearCost(0.01, 0.0), 1, SchedulerConfig(8192, 20)),
                           transfer=KVTransfer(1e12, 0.0))
    for rate, overloaded in ((14.0, False), (30.0, True)):
        reqs = synthetic("poisson", rate, 200, LengthDist.fixed(100), LengthDist.fixed(100), 2)
        r = simulate(system, reqs, warmup_s=20.0, window_end_s=200.0, max_time_s=1000.0)
        bk = r.backlog
        pr = r.per_request
        arr = np.asarray(pr["arrival_s"])
        first_only = backlog(arr, arr + np.asarray(pr["ttft_s"]), np.zeros(len(arr), bool), 20.0, 200.0)
        assert abs(first_only["growth"]) < 3.0 * math.sqrt(first_only["arrivals_between"])
        probe = V.Probe(1, rate, 1, {}, {}, None, None, (bk["growth"], bk["arrivals_between"]))
        assert probe.overloaded == overloaded
        if overloaded:  # 1 - mu / lambda of the arrivals (tolerance: the module docstring's 10%)
            assert_allclose(bk["growth"], (1.0 - 20.0 / rate) * bk["arrivals_between"], rtol=0.10)
