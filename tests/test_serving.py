"""Serving simulation checked against closed forms (LinearCost: iteration = a + b x tokens).

Expected values come from hand derivations stated next to each assert.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.des.serving.arrivals import LengthDist, Requests, arrival_times, read_trace, synthetic
from moesim.des.serving.capacity import max_sustainable_rate
from moesim.des.serving.cost import LinearCost, grid_bracket
from moesim.des.serving.replica import SchedulerConfig
from moesim.des.serving.system import KVTransfer, Pool, ServingSystem, simulate
from moesim.errors import MoesimError, SpecError
from moesim.specs import SLO

A, B = 0.01, 1e-5  # seconds per iteration, seconds per token


def _one(prompt, output, arrival=0.0):
    return Requests(np.array([arrival]), np.array([prompt]), np.array([output]))


def _coloc(cost=None, budget=2048, max_seqs=256, replicas=1, balancer="least_loaded", chunked=True):
    cost = cost or LinearCost(A, B)
    return ServingSystem(colocated=Pool(cost, replicas, SchedulerConfig(budget, max_seqs, chunked)),
                         balancer=balancer)


# ---- hand-worked single requests --------------------------------------------------------------
def test_single_request_exact():
    # prefill 100 tokens: a + 100 b; then 4 decode iterations of 1 token: a + b each.
    r = simulate(_coloc(LinearCost(0.01, 0.001)), _one(100, 5))
    assert_allclose(r.ttft_s.mean, 0.01 + 0.1, rtol=1e-12)
    assert_allclose(r.tpot_s.mean, 0.011, rtol=1e-12)
    assert_allclose(r.e2e_s.mean, 0.11 + 4 * 0.011, rtol=1e-12)


def test_chunked_prefill_splits_by_budget():
    # 2500 prompt tokens, budget 1000: chunks 1000, 1000, 500 -> 3 a + 2500 b.
    r = simulate(_coloc(LinearCost(0.01, 0.001), budget=1000), _one(2500, 1))
    assert_allclose(r.ttft_s.mean, 3 * 0.01 + 2.5, rtol=1e-12)
    # unchunked: one iteration of the whole prompt (longer than the budget, runs alone)
    r = simulate(_coloc(LinearCost(0.01, 0.001), budget=1000, chunked=False), _one(2500, 1))
    assert_allclose(r.ttft_s.mean, 0.01 + 2.5, rtol=1e-12)


def test_disaggregated_single_request_transfer():
    # prefill a + 100 b; transfer latency + 100 x 1000 B / 1e6 B/s = 0.001 + 0.1; 3 decodes.
    pc = LinearCost(0.01, 0.001, kv_bytes_per_token=1000.0)
    dc = LinearCost(0.02, 0.001)
    sysd = ServingSystem(prefill=Pool(pc), decode=Pool(dc), transfer=KVTransfer(1e6, 0.001))
    r = simulate(sysd, _one(100, 4))
    assert_allclose(r.ttft_s.mean, 0.11, rtol=1e-12)
    assert_allclose(r.e2e_s.mean, 0.11 + 0.101 + 3 * 0.021, rtol=1e-12)
    assert_allclose(r.tpot_s.mean, (0.101 + 3 * 0.021) / 3, rtol=1e-12)


# ---- queueing checks --------------------------------------------------------------------------
def test_low_load_ttft_is_one_prefill():
    # At 0.05 req/s a request almost never waits: median TTFT = a + b x 512.
    reqs = synthetic("poisson", 0.05, 4000, LengthDist.fixed(512), LengthDist.fixed(16), 1)
    r = simulate(_coloc(), reqs)
    assert_allclose(r.ttft_s.p50, A + B * 512, rtol=1e-9)


def test_littles_law():
    # L (time-average in system, from the observer) = lambda x W (mean sojourn): within 2%.
    lens = LengthDist("lognormal", 300, 0.6)
    reqs = synthetic("poisson", 8.0, 3000, lens, LengthDist("lognormal", 100, 0.6), 2)
    r = simulate(_coloc(), reqs, warmup_s=100.0, window_end_s=3000.0)
    ll = r.littles_law
    assert ll["mean_in_system"] > 5  # a loaded system, not a trivial one
    assert_allclose(ll["mean_in_system"], ll["arrival_rate_per_s"] * ll["mean_e2e_s"], rtol=0.02)


def test_saturation_throughput_matches_closed_form():
    # Overloaded with budget Bt: every iteration carries Bt tokens and lasts a + b Bt; a request
    # uses P + O - 1 token slots and yields O output tokens:
    # max output rate = O x Bt / ((a + b Bt) (P + O - 1)).
    P, O, Bt = 400, 100, 2048
    expected = O * Bt / ((A + B * Bt) * (P + O - 1))
    rate = 2.0 * expected / O  # twice the capacity in requests/s
    reqs = synthetic("poisson", rate, 200, LengthDist.fixed(P), LengthDist.fixed(O), 3)
    r = simulate(_coloc(budget=Bt, max_seqs=2048), reqs, warmup_s=20.0, window_end_s=200.0)
    assert_allclose(r.output_tokens_per_s, expected, rtol=0.05)


def test_p99_non_decreasing_with_load():
    # Common random numbers: the same seed at a higher rate is the same pattern compressed.
    P, O = 400, 100
    cap = 2048 / ((A + B * 2048) * (P + O - 1))
    p99 = []
    for frac in (0.3, 0.6, 0.8, 0.9):
        reqs = synthetic("poisson", frac * cap, 300, LengthDist.fixed(P), LengthDist.fixed(O), 4)
        r = simulate(_coloc(), reqs)
        p99.append((r.ttft_s.p99, r.e2e_s.p99))
    for (t0, e0), (t1, e1) in zip(p99, p99[1:]):
        assert t1 >= t0 and e1 >= e0


def test_disaggregated_tpot_insensitive_to_prefill_bursts():
    # Long prompts in bursts stall co-located decoding (chunks share iterations) but not a
    # separate decode pool: its TPOT stays at the decode iteration time.
    prompt, out = LengthDist.fixed(6000), LengthDist.fixed(64)
    pc = LinearCost(0.01, 2e-5, kv_bytes_per_token=1e4)
    dc = LinearCost(0.01, 2e-5)
    res = {}
    for cv in (1.0, 4.0):
        reqs = synthetic("gamma", 4.0, 600, prompt, out, 5, cv=cv)
        dis = ServingSystem(prefill=Pool(pc, 1, SchedulerConfig(8192, 256)),
                            decode=Pool(dc, 1, SchedulerConfig(2048, 1024)), transfer=KVTransfer(1e11))
        col = ServingSystem(colocated=Pool(dc, 1, SchedulerConfig(8192, 1024)))
        res[cv] = simulate(dis, reqs).tpot_s.p99, simulate(col, reqs).tpot_s.p99
    (dis1, col1), (dis4, col4) = res[1.0], res[4.0]
    assert dis4 / dis1 < 1.10          # decode pool: bursts barely move p99 TPOT
    assert col4 / col1 > 1.10          # co-located: they do
    assert dis4 < 0.5 * col4


def test_kv_limit_preempts_and_never_overflows():
    # KV of 3000 tokens; 6 requests of 400 + 400 cannot all stay: preemption (recompute).
    cost = LinearCost(A, B, kv_capacity_tokens=3000)
    reqs = Requests(np.zeros(6), np.full(6, 400), np.full(6, 400))
    r = simulate(_coloc(cost, budget=2048, max_seqs=64), reqs, window_end_s=1.0, samples=1000)
    assert r.completed == 6 and r.preemptions > 0
    assert r.kv_utilization["colocated"]["max"] <= 1.0


def test_request_larger_than_kv_is_rejected():
    cost = LinearCost(A, B, kv_capacity_tokens=1000)
    reqs = Requests(np.array([0.0, 1.0]), np.array([900, 10]), np.array([200, 10]))
    r = simulate(_coloc(cost), reqs)
    assert r.rejected == 1 and r.completed == 1


def test_balancers():
    reqs = synthetic("poisson", 50.0, 60, LengthDist.fixed(200), LengthDist.fixed(50), 6)
    for name in ("round_robin", "least_loaded"):
        r = simulate(_coloc(replicas=3, balancer=name), reqs)
        assert r.completed == len(reqs)
    # round robin over 2 replicas with simultaneous identical requests: both prefill at once
    r = simulate(_coloc(replicas=2, balancer="round_robin"), Requests(np.zeros(2), np.full(2, 100), np.full(2, 1)))
    assert_allclose(r.ttft_s.p99, A + 100 * B, rtol=1e-12)


# ---- randomness -------------------------------------------------------------------------------
def test_same_seed_same_results_and_seed_cis_cover():
    lens = LengthDist("lognormal", 300, 0.6)
    out = LengthDist("lognormal", 100, 0.6)
    run = lambda s: simulate(_coloc(), synthetic("poisson", 8.0, 1000, lens, out, s))
    a, b, c = run(7), run(7), run(8)
    assert a.to_dict() == b.to_dict()
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        x, y = getattr(a, name), getattr(c, name)
        assert x.mean != y.mean
        assert abs(x.mean - y.mean) <= x.mean_ci95 + y.mean_ci95  # intervals overlap
        assert abs(x.mean - y.mean) <= 2 * max(x.mean_ci95, y.mean_ci95)


def test_arrivals_poisson_gamma_not_truncated():
    rng = np.random.default_rng(0)
    t = arrival_times("poisson", 20.0, 2000.0, rng)  # 40,000 expected: many chunks
    assert_allclose(len(t), 40000, rtol=0.02)  # Poisson count sd = 200 (0.5%)
    assert t[-1] <= 2000.0 and t[-1] > 1999.0
    g = np.diff(arrival_times("gamma", 20.0, 2000.0, np.random.default_rng(1), cv=3.0))
    assert_allclose(g.std() / g.mean(), 3.0, rtol=0.1)
    assert_allclose(g.mean(), 1 / 20.0, rtol=0.1)


def test_lengths():
    rng = np.random.default_rng(0)
    x = LengthDist("lognormal", 1000, 0.5).sample(100000, rng)
    assert_allclose(x.mean(), 1000, rtol=0.01)  # E[L] = mean by construction of mu
    y = LengthDist("lognormal", 1000, 1.0, max_tokens=2000).sample(10000, rng)
    assert y.max() <= 2000 and y.min() >= 1
    e = LengthDist("empirical", values=(10, 20), weights=(3, 1)).sample(40000, rng)
    assert_allclose((e == 10).mean(), 0.75, rtol=0.02)
    with pytest.raises(SpecError):
        LengthDist.fixed(0)


def test_trace_replay(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_time_s,prompt_len,output_len\n0.5,100,5\n0.0,200,3\n")
    r = read_trace(csv)
    assert r.arrival_s_Q.tolist() == [0.0, 0.5] and r.prompt_Q.tolist() == [200, 100]
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"arrival_time_s": i, "prompt_len": 10, "output_len": 2}) for i in range(3)))
    assert len(read_trace(jl)) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_time_s,prompt_len\n0,1\n")
    with pytest.raises(MoesimError, match="output_len"):
        read_trace(bad)


def test_max_sustainable_rate_brackets_the_slo():
    P, O = 400, 100
    cap = 2048 / ((A + B * 2048) * (P + O - 1))  # saturation request rate (closed form)
    slo = SLO(ttft_s=0.2)
    s = max_sustainable_rate(_coloc(), LengthDist.fixed(P), LengthDist.fixed(O), slo,
                             duration_s=200.0, seed=0, start_rate_per_s=1.0, rel_tol=0.05)
    assert 0.5 * cap < s.rate_per_s < cap
    assert s.upper_rate_per_s - s.rate_per_s <= 0.05 * s.upper_rate_per_s
    assert any(not f for _, f in s.trials) and any(f for _, f in s.trials)


def test_grid_bracket():
    for x in (1, 2, 3, 5, 7, 11, 100, 1000, 4097):
        lo, hi = grid_bracket(x, 1)
        assert lo <= x <= hi and hi <= 2 * lo
    assert grid_bracket(64, 1) == (64, 64)


def test_bad_inputs():
    with pytest.raises(SpecError):
        SchedulerConfig(token_budget=10, max_seqs=20)
    with pytest.raises(SpecError):
        ServingSystem()
    with pytest.raises(SpecError):
        arrival_times("poisson", -1.0, 10.0, np.random.default_rng(0))
