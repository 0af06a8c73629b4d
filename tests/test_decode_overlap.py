"""Decode overlap under ``search.overlap = "auto"`` (moesim/planner/serving_policy.py
``decode_steps`` / ``faster_overlap``): each candidate's decode step runs the faster of none and
two micro-batches at its own batch, and every place that prices the decode step (analytic
evaluator, the replica GridCost the serving DES runs, the disaggregated decode pools) uses that
same choice."""
from __future__ import annotations

import math

import pytest

from moesim.catalog import load_model
from moesim.planner import serving_policy as sp
from moesim.planner import verify
from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate
from moesim.planner.pool_cost import PoolCosts, PoolLayout
from moesim.planner.scenario import scenario_from_dict
from moesim.specs.serving_features import inflight_context_tokens

BATCHES = (16, 64, 256, 512)


def _scenario(overlap: str, **extra):
    data = {"kind": "serving", "name": "ovl", "model": "deepseek-v3", "hardware": ["b200", "h200-sxm"],
            "max_devices": 64,
            "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000,
                         "dtype": "fp8", "kv_dtype": "fp8"},
            "slo": {"tpot_s": 10.0, "ttft_s": 1e3},
            "search": {"devices_per_replica": [8, 32], "batch_per_device": list(BATCHES), "tp": [1],
                       "attention_layouts": ["dp"], "overlap": overlap},
            "verify": {"top_n": 0}}
    data.update(extra)
    return scenario_from_dict(data)


# one node of B200 (NVLink all-to-all) and four nodes of H200 (the all-to-all crosses the NICs)
CANDS = [Candidate(hw, n, tp=1, dp=n, ep=n, attention_layout="dp", batch=b) for hw, n in (("b200", 8), ("h200-sxm", 32))
         for b in BATCHES]


def test_auto_is_never_slower_than_either_fixed_mode():
    """Property over hardware and batches: the auto decode step is the smaller of the two fixed
    modes' steps, exactly one of them (same step-model call), and the evaluation names it."""
    by = {o: AnalyticEvaluator().evaluate(CANDS, _scenario(o)) for o in ("auto", "none", "two_microbatch")}
    picked = set()
    for a, n, t in zip(by["auto"], by["none"], by["two_microbatch"]):
        assert a.ok and n.ok and t.ok, (a.detail, n.detail, t.detail)
        assert a.step_time_s <= min(n.step_time_s, t.step_time_s)
        assert a.step_time_s in (n.step_time_s, t.step_time_s)
        mode = sp.overlaps_of(a.detail)["decode"]
        assert a.step_time_s == {"none": n.step_time_s, "two_microbatch": t.step_time_s}[mode]
        assert sp.overlaps_of(n.detail)["decode"] == "none"
        assert sp.overlaps_of(t.detail)["decode"] == "two_microbatch"
        picked.add(mode)
    # small batches pay the fixed costs twice; large cross-node ones hide the all-to-all
    assert picked == {"none", "two_microbatch"}


def test_des_runs_the_analytic_choice():
    """The replica cost the serving DES check simulates prices its decode iterations under the
    evaluation's decode mode: at the planned batch it is the fixed-mode scenario's GridCost."""
    m = load_model("deepseek-v3")
    sc = _scenario("auto")
    ctx = inflight_context_tokens(sc.workload)
    evs = AnalyticEvaluator().evaluate(CANDS, sc)
    for c, ev in zip(CANDS, evs):
        mode = sp.overlaps_of(ev.detail)["decode"]
        cost = verify._system(ev, sc, m, PlanCache()).colocated.cost
        fixed = sp.replica_cost(c, _scenario(mode), m, PlanCache())
        s = sp.planned_seqs(c)
        assert cost.decode_time_s(s, ctx) == fixed.decode_time_s(s, ctx)
        assert sp.decode_overlap(c, sc, m, PlanCache()) == mode


def test_disaggregated_decode_pool_uses_the_same_rule():
    m = load_model("deepseek-v3")
    sc = _scenario("auto")
    ctx = inflight_context_tokens(sc.workload)
    costs = PoolCosts(sc, m)
    lay = PoolLayout("b200", 8, 1, 8, "dp", 0)
    fixed = {o: PoolCosts(_scenario(o), m) for o in ("none", "two_microbatch")}
    for b in BATCHES:
        t = {o: f.decode_step_s(lay, b, ctx) for o, f in fixed.items()}
        mode = costs.decode_overlap(lay, b, ctx)
        assert mode == min(t, key=t.get) or math.isclose(t["none"], t["two_microbatch"])
        assert costs.decode_step_s(lay, b, ctx) == pytest.approx(min(t.values()), rel=1e-12)


def test_fixed_overlap_is_kept_and_dense_models_never_split():
    m = load_model("deepseek-v3")
    c = CANDS[0]
    assert sp.decode_overlap(c, _scenario("two_microbatch"), m, PlanCache()) == "two_microbatch"
    assert sp.overlap_choices(_scenario("none"), m) == ("none",)
    assert sp.overlap_choices(_scenario("auto"), m) == ("two_microbatch", "none")
    dense = load_model("llama3.1-8b")
    assert sp.overlap_choices(_scenario("auto", model="llama3.1-8b"), dense) == ("none",)


def test_disaggregated_prefill_pool_routes_under_the_scenario_skew():
    """A prefill pool's iterations route under the scenario's routing.skew, as its decode pools
    do (PoolCosts.skew): before, prefill_s priced them uniform. Second path: prefill_stage_s
    asked directly under the skew (same call, exact)."""
    from moesim.planner.pool_cost import prefill_stage_s

    m = load_model("deepseek-v3")
    lay = PoolLayout("b200", 8, 1, 8, "dp", 0)
    uni, skewed = PoolCosts(_scenario("none"), m), PoolCosts(_scenario("none", routing={"skew": "zipf:1.0"}), m)
    t_u, t_z = uni.prefill_s(lay, 8192, 4096), skewed.prefill_s(lay, 8192, 4096)
    dep = skewed.deployment(lay).with_(prefill_overlap="none")
    assert t_z == prefill_stage_s(m, dep, 8192, 4096, None, "zipf:1.0")
    assert t_z > 1.2 * t_u  # Zipf(1) loads the first EP rank far above its share
