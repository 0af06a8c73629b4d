"""The planner's memo is an object keyed by content: a profile recalibrated in-process changes the
next plan, and the evaluator's cache can be seen and cleared; drops are never free."""
from __future__ import annotations

import shutil
from pathlib import Path

from numpy.testing import assert_allclose

from moesim.calibrate import with_params
from moesim.catalog import load_model, load_profile, replace_efficiency
from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner import serving_policy as sp
from moesim.planner.costs import deployment_of
from moesim.planner.plan import plan
from moesim.planner.scenario import load_scenario, scenario_from_dict
from moesim.step import Decode, estimate

PROFILES = Path(__file__).resolve().parents[1] / "hwprofiles"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _scenario(hw_path: str):
    return scenario_from_dict({
        "model": "deepseek-v3", "hardware": [hw_path],
        "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
        "slo": {"tpot_s": 0.4},
        "search": {"devices_per_replica": [8], "batch_per_device": [16], "tp": [1], "attention_layouts": ["dp"]},
        "verify": {"top_n": 0},
    })


def test_recalibrated_profile_changes_the_next_plan(tmp_path):
    path = tmp_path / "h200-sxm.toml"
    shutil.copy(PROFILES / "h200-sxm.toml", path)
    sc = _scenario(str(path))
    evaluator = AnalyticEvaluator()  # one evaluator (one cache) for both plans
    before = plan(sc, evaluator, executor="inline").ranked[0].evaluation.step_time_s
    assert len(evaluator.cache) > 0
    # recalibrate in-process: GEMMs reach a quarter of the memory bandwidth they did
    hw = load_profile(str(path))
    slow = with_params(hw, {"compute.gemm_memory_fraction": hw.efficiency.compute.gemm_memory_fraction / 4})
    replace_efficiency(path, slow.efficiency)
    after = plan(sc, evaluator, executor="inline").ranked[0].evaluation.step_time_s
    # second path: the step model asked directly with the recalibrated profile
    m = load_model("deepseek-v3")
    top = plan(sc, evaluator, executor="inline").ranked[0]
    c, mode = top.candidate, sp.overlaps_of(top.evaluation.detail)["decode"]  # decode overlap chosen (auto)
    direct = estimate(m, deployment_of(c, sc, m, overlap=mode), Decode(16, 1200, "uniform"),
                      check_memory=False).step_time_s[0]
    assert after > 1.5 * before
    assert_allclose(after, direct, rtol=1e-12)
    evaluator.cache.clear()
    assert len(evaluator.cache) == 0


def test_capacity_factor_half_is_not_ranked_first_for_free():
    # moesim plan examples/train_mixtral_8x22b.toml --set 'search.capacity_factors=[0.5, 1.0, 2.0]'
    # with one layout: before, CF 0.5 ranked first (50% of tokens dropped, same time and cost)
    sc = load_scenario(EXAMPLES / "train_mixtral_8x22b.toml")
    sc = sc.model_copy(update={"hardware": ("h100-sxm",), "search": sc.search.model_copy(update={
        "devices": (1024,), "tp": (2,), "pp": (4,), "capacity_factors": (0.5, 1.0, 2.0)})})
    r = plan(sc, executor="inline")
    assert [x.candidate.capacity_factor for x in r.ranked] == [2.0]
    assert all(x.evaluation.drop_fraction == 0.0 for x in r.ranked)
    # a user who allows drops gets the faster, lossier deployments, each showing its drops
    loose = sc.model_copy(update={"limits": sc.limits.model_copy(update={"max_drop_fraction": 1.0})})
    ranked = plan(loose, executor="inline").ranked
    by_cf = {x.candidate.capacity_factor: x.evaluation for x in ranked}
    assert by_cf[0.5].drop_fraction > by_cf[1.0].drop_fraction > by_cf[2.0].drop_fraction
    assert by_cf[0.5].step_time_s < by_cf[2.0].step_time_s
    assert ranked[0].candidate.capacity_factor == 0.5  # cheapest once the user allows its drops


def test_equal_cost_ties_break_by_quality_then_latency():
    from moesim.planner.evaluation import Candidate, Evaluation
    from moesim.planner.rank import Ranked, rank

    def r(cf, drop, lat):
        ev = Evaluation(candidate=Candidate("x", 8, capacity_factor=cf), drop_fraction=drop)
        return Ranked(ev, 1, 8, 1, 10.0, 1.0, lat)

    # the key string "cf0.5" < "cf1" < "cf2" would put the lossiest first; quality goes first
    out = rank([r(0.5, 0.3, 0.01), r(2.0, 0.0, 0.02), r(1.0, 0.0, 0.015)])
    assert [x.candidate.capacity_factor for x in out] == [1.0, 2.0, 0.5]


def test_old_drop_limit_key_is_a_readable_error():
    import pytest

    from moesim.errors import MoesimError

    with pytest.raises(MoesimError, match="limits.max_drop_fraction"):
        scenario_from_dict({
            "model": "deepseek-v3", "hardware": ["h200-sxm"],
            "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
            "slo": {"tpot_s": 0.2}, "search": {"max_drop_fraction": 0.01},
        })


def test_serving_candidate_over_the_drop_limit_is_set_aside_unpriced():
    from moesim.planner.evaluation import Candidate
    from moesim.planner.rank import judge_serving

    sc = scenario_from_dict({
        "model": "deepseek-v3", "hardware": ["h200-sxm"],
        "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
        "slo": {"tpot_s": 0.2},
    })
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16, capacity_factor=1.0)
    ev = AnalyticEvaluator().evaluate([c], sc)[0]
    assert ev.reason == "drops_too_many" and ev.drop_fraction > 0 and ev.tpot_s is None
    out = judge_serving(ev, sc, AnalyticEvaluator().hardware("h200-sxm"))
    assert out.miss_ratio == 1.0 + ev.drop_fraction  # limit 0
    # allowed: the same candidate is priced, with the same step and drops
    loose = sc.model_copy(update={"limits": sc.limits.model_copy(update={"max_drop_fraction": 1.0})})
    priced = AnalyticEvaluator().evaluate([c], loose)[0]
    assert priced.ok and priced.tpot_s is not None
    assert (priced.step_time_s, priced.drop_fraction) == (ev.step_time_s, ev.drop_fraction)


def test_whatif_capacity_factor_moves_time_and_drops():
    from moesim.planner.whatif import what_if

    sc = _scenario("h200-sxm")
    res = what_if(sc, {"routing.capacity_factor": 1.0, "limits.max_drop_fraction": 1.0})
    d = {x.metric: x for x in res.deltas}
    assert d["parallelism"].base == d["parallelism"].changed  # one layout: the same deployment, capped
    assert d["drop_fraction"].base == 0.0 and d["drop_fraction"].changed > 0.01
    assert d["tpot_s"].changed < d["tpot_s"].base  # capped expert rows: a faster step
