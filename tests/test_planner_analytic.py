"""The real evaluator composes the step and memory models without changing their numbers."""
from __future__ import annotations

import math

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.compute.memory import memory_footprint
from moesim.planner import serving_policy as sp
from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict
from moesim.planner.costs import PlanCache, deployment_of
from moesim.specs import Parallelism
from moesim.step import Decode, Prefill, estimate

SC = scenario_from_dict({
    "model": "deepseek-v3", "hardware": ["h200-sxm"],
    "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
    "slo": {"tpot_s": 0.1},
})


def test_serving_evaluation_matches_step_and_memory_models():
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    ev = AnalyticEvaluator().evaluate([c], SC)[0]
    m, hw = load_model("deepseek-v3"), load_profile("h200-sxm")
    par = Parallelism(tp=1, dp=8, ep=8, attention_layout="dp")
    dep = deployment_of(c, SC, m)
    assert (dep.dtype, dep.kv_dtype, dep.overlap, dep.capacity_factor) == ("fp8", "bf16", "two_microbatch", None)
    ctx = 1000 + 400 // 2
    # search.overlap = auto: the decode step under the faster of the two modes at this batch
    # (serving_policy.decode_steps), which the evaluation names in its detail
    modes = sp.overlaps_of(ev.detail)
    by_mode = {o: estimate(m, dep.with_(overlap=o), Decode(16, ctx), check_memory=False).breakdown()
               for o in ("none", "two_microbatch")}
    assert modes["decode"] == min(by_mode, key=lambda o: by_mode[o].step_time_s)
    dec = by_mode[modes["decode"]]
    # second path: the memory model asked directly for the KV tokens of 16 sequences of ctx tokens
    fp = memory_footprint(m, hw, par, mode="serve", weight_dtype="fp8", kv_dtype="bf16", kv_tokens=16 * ctx)
    assert ev.ok and fp.fits
    assert_allclose(ev.step_time_s, dec.step_time_s, rtol=1e-12)  # same call, same number
    # co-located composition (serving_policy docstring), K from the evaluation: S = 16 x 8 = 128
    # sequences, n = S K / 400 prompts per mixed iteration priced by the DES's GridCost
    k, S = ev.decode_steps_per_prefill, 128
    grid = sp.replica_cost(c, SC, m, PlanCache())
    n = S * k / 400
    # a mixed iteration never takes less than the decode step it contains (serving_policy floor)
    mixed = max(grid.mixed_time_s(round(n * 1000), max(1, round(n)), S, ctx), dec.step_time_s)
    period = mixed + (k - 1) * dec.step_time_s
    assert k >= 1 and ev.tpot_s <= 0.1  # the K of most tokens/s meeting the 100 ms TPOT limit
    assert_allclose(ev.tpot_s, period / k, rtol=1e-12)
    # TTFT at p99: the mixed iteration at the 99th percentile of a period's prompt tokens
    # (Poisson count; fixed lengths), the wait at 0.99 of that period
    from scipy.stats import poisson

    # (Poisson count; fixed lengths), the wait at 0.99 of that period plus the periods the prompts
    # beyond one iteration's budget (8192 per DP rank x 8, less S decode tokens) wait
    tq = max(n, float(poisson.ppf(0.99, n))) * 1000
    room = 8192 * 8 - S
    first = min(tq, room)
    mixed_q = max(grid.mixed_time_s(round(first), max(1, round(first / 1000)), S, ctx), dec.step_time_s)
    spill = math.ceil(tq / room - 1e-9) - 1
    assert_allclose(ev.ttft_s, (0.99 + spill) * (mixed_q + (k - 1) * dec.step_time_s) + mixed_q, rtol=1e-12)
    assert_allclose(ev.tokens_per_s, S / (period / k), rtol=1e-12)
    # the mixed iteration is at least a prefill of its n prompts (same step model, eager host time)
    pf, pf_none = (estimate(m, dep.with_(prefill_overlap=o), Prefill(1000, n / 8), check_memory=False).breakdown()
                   for o in ("two_microbatch", "none"))
    assert mixed >= min(pf.step_time_s, pf_none.step_time_s) * 0.5
    # headroom within the engine's share of HBM: the auto stack serves as SGLang, 0.81 at 8 devices
    assert_allclose(ev.memory_headroom_GiB * 2**30, 0.81 * fp.capacity_bytes - fp.total_bytes, rtol=1e-9)


def test_does_not_fit_agrees_with_memory_model():
    # DeepSeek-V3 FP8 (~671 GB) does not fit on 8 x h100-sxm (issue 4's memory fact)
    c = Candidate("h100-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=1)
    ev = AnalyticEvaluator().evaluate([c], SC)[0]
    fp = memory_footprint(load_model("deepseek-v3"), load_profile("h100-sxm"),
                          Parallelism(tp=1, dp=8, ep=8, attention_layout="dp"), mode="serve",
                          weight_dtype="fp8", kv_tokens=1200)
    assert ev.reason == "does_not_fit" and not fp.fits
    # short of the engine's share (SGLang's 0.81 at 8 devices): the memory model's shortfall of the
    # whole device plus the 19% the engine leaves
    gib = fp.capacity_bytes / 2**30
    assert ev.memory_headroom_GiB == pytest.approx(-fp.shortfall_GiB - 0.19 * gib, rel=1e-9)
    assert "0.81 share" in ev.detail


def test_unknown_hardware_is_a_user_error():
    from moesim.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="h999"):
        AnalyticEvaluator().hardware("h999")


# Candidates sharing a layout, a second layout (TP attention) and a second hardware: the planner's
# grouped, memoized evaluation must give the step model's own numbers, one deployment at a time.
_CANDS = [
    Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=8),
    Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=32),
    Candidate("h200-sxm", 8, tp=8, dp=1, ep=8, attention_layout="tp", batch=8),
    Candidate("b200", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16),
]


def test_grouped_memoized_evaluation_equals_scalar_step_model():
    evs = AnalyticEvaluator().evaluate(_CANDS, SC)
    again = AnalyticEvaluator().evaluate(_CANDS[::-1], SC)[::-1]  # memo hits, another grouping order
    m = load_model("deepseek-v3")
    for c, ev, ev2 in zip(_CANDS, evs, again):
        assert ev.ok, ev.detail
        mode = sp.overlaps_of(ev.detail)["decode"]  # the decode overlap chosen at this batch (auto)
        dec = estimate(m, deployment_of(c, SC, m, overlap=mode), Decode(c.batch, 1200), check_memory=False).breakdown()
        # rtol 1e-9: the same step-model calls, composed by serving_policy's closed form at the K
        # the evaluation chose (the DES's GridCost for the mixed iteration)
        est = sp.estimate(sp.replica_cost(c, SC, m, PlanCache()), c, SC, dec.step_time_s, ev.decode_steps_per_prefill)
        assert_allclose([ev.step_time_s, ev.tpot_s, ev.ttft_s, ev.tokens_per_s],
                        [dec.step_time_s, est.tpot_s, est.ttft_s, est.output_tokens_per_s], rtol=1e-9)
        assert ev.imbalance == dec.expert_imbalance and ev == ev2


def test_replica_cost_routes_under_the_scenario_skew():
    """The replica's GridCost (the closed form's mixed iterations, the benchmark replay, the DES
    verify) prices its nodes under the scenario's routing.skew, as decode_steps prices the decode
    step: before, its nodes routed uniformly whatever the scenario said. Second path: the step
    model asked directly, per device, under the same skew (the same call: rtol 1e-12)."""
    m = load_model("deepseek-v3")
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    skewed = scenario_from_dict({**SC.model_dump(mode="json"), "routing": {"skew": "zipf:1.0"}})
    cache = PlanCache()
    grid_u, grid_z = sp.replica_cost(c, SC, m, cache), sp.replica_cost(c, skewed, m, cache)
    dep = sp.PlanCache().deployment(c, skewed, m)
    full = dep.with_(overlap=sp.decode_overlap(c, skewed, m, cache),
                     prefill_overlap=sp.prefill_overlap(c, skewed, m, cache))
    ctx = 1200
    direct = estimate(m, full, Decode(128 / 8, ctx, "zipf:1.0"), check_memory=False).step_time_s[0]
    assert_allclose(grid_z.decode_time_s(128, ctx), direct, rtol=1e-12)
    # 4096 prompt tokens: a node of the cost's grid (2^12), so no interpolation between nodes
    pf = estimate(m, full, Prefill(1000, 4096 / 1000 / 8, "zipf:1.0", context=(1000 + 1) / 2),
                  check_memory=False).step_time_s[0]
    assert_allclose(grid_z.prefill_time_s(4096), pf, rtol=1e-12)
    # a Zipf(1) popularity loads the first EP rank far above its share: both passes are slower
    assert grid_z.prefill_time_s(4096) > 1.2 * grid_u.prefill_time_s(4096)
    assert grid_z.decode_time_s(128, ctx) > grid_u.decode_time_s(128, ctx)


def test_scenario_routing_placement_reaches_the_deployment_and_drift_is_refused():
    """routing.placement was accepted and never read by the planner (every candidate ran the
    Deployment's auto rule): it is now the candidate deployment's placement, auto by default (the
    rule as before: load_aware with redundant slots, else contiguous). routing.drift, which the
    planner's step model cannot price, is refused naming the field instead of priced static."""
    from moesim.errors import MoesimError

    m = load_model("deepseek-v3")
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16, redundant_experts=8)
    assert deployment_of(c, SC, m).expert_placement == "load_aware"  # the default keeps the auto rule
    base = SC.model_dump(mode="json")
    rr = scenario_from_dict({**base, "routing": {"skew": "zipf:1.0", "placement": "round_robin"}})
    la = scenario_from_dict({**base, "routing": {"skew": "zipf:1.0", "placement": "load_aware"}})
    assert deployment_of(c, rr, m).expert_placement == "round_robin"
    ctx = 1200
    t = {name: sp.replica_cost(c, s, m, PlanCache()).decode_time_s(128, ctx) for name, s in (("rr", rr), ("la", la))}
    direct = estimate(m, deployment_of(c, rr, m).with_(overlap=sp.decode_overlap(c, rr, m, PlanCache())),
                      Decode(16, ctx, "zipf:1.0"), check_memory=False).step_time_s[0]
    assert_allclose(t["rr"], direct, rtol=1e-12)
    assert t["rr"] != t["la"]  # under a skew, where the replicas sit changes the busiest rank
    with pytest.raises(MoesimError, match=r"routing\.drift = 0\.3: 0 in a plan scenario"):
        scenario_from_dict({**base, "routing": {"drift": 0.3}})


def test_end_to_end_limit_is_judged_by_the_closed_form():
    """slo.e2e_s was read only by the DES verify (top_n candidates): the analytic ranking kept
    candidates whose closed-form end-to-end latency (TTFT + (L - 1) TPOT, rank.end_to_end_s)
    missed it. The same candidate's own figures set the limit on both sides of the line."""
    from moesim.errors import MoesimError
    from moesim.planner.evaluation import HardwareFacts
    from moesim.planner.rank import Rejection, end_to_end_s, judge_serving

    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    ev = AnalyticEvaluator().evaluate([c], SC)[0]
    e2e = end_to_end_s(ev, 400)
    assert_allclose(e2e, ev.ttft_s + 399 * ev.tpot_s, rtol=1e-15)
    facts = HardwareFacts("h200-sxm", 4.0, 8, 140.0)
    base = SC.model_dump(mode="json")
    tight = scenario_from_dict({**base, "slo": {**base["slo"], "e2e_s": 0.99 * e2e}})
    loose = scenario_from_dict({**base, "slo": {**base["slo"], "e2e_s": 1.01 * e2e}})
    out_tight, out_loose = judge_serving(ev, tight, facts), judge_serving(ev, loose, facts)
    assert isinstance(out_tight, Rejection) and out_tight.evaluation.reason == "misses_slo_e2e"
    assert_allclose(out_tight.miss_ratio, 1 / 0.99, rtol=1e-9)
    assert not isinstance(out_loose, Rejection)
    with pytest.raises(MoesimError, match=r"slo\.e2e_s .*co-located plans only"):
        scenario_from_dict({**base, "slo": {**base["slo"], "e2e_s": 30.0}, "modes": ["colocated", "disaggregated"]})
