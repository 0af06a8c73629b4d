"""The one step estimator over arrays: a batch of points gives each point's batch-of-one answer,
and the planner's replica cost gives ``from_deployment``'s (the serving DES's own).

Expected values: ``estimate`` called on one point at a time (a scalar call is a batch of one).
rtol 1e-9 (exposed comm is a difference of near-equal times): the array path shares the layer model between points of one batch (decode at
context 0 plus the linear core attention), so only rounding differs.
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.des.serving.deployment import from_deployment
from moesim.planner import serving_policy as sp
from moesim.planner.costs import PlanCache, deployment_of
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict
from moesim.specs import Deployment
from moesim.step import Decode, Prefill, Training, estimate

M = load_model("deepseek-v3")
# a DP-attention layout, a TP-attention layout across two nodes, a TPU slice with redundant
# experts, a two-stage pipeline
LAYOUTS = [
    ("h200-sxm", dict(devices=8, dp=8, ep=8, attention_layout="dp")),
    ("b200", dict(devices=16, tp=8, dp=2, ep=16, attention_layout="tp")),
    ("tpu-v5p", dict(devices=48, dp=48, ep=48, attention_layout="dp", redundant_experts=32)),
    ("h100-sxm", dict(devices=16, pp=2, dp=8, ep=8, attention_layout="dp")),
]
FIELDS = ("step_time_s", "attention_s", "dispatch_s", "experts_s", "combine_s", "exposed_comm_s", "host_s",
          "host_issue_s", "embedding_head_s", "memory_GiB", "model_flops_per_step_per_device", "expert_imbalance")


def _dep(hw_name, kw, **more) -> Deployment:
    return Deployment(hardware=load_profile(hw_name), dtype="fp8", **kw, **more)


def _same(got, ref):
    assert_allclose([getattr(got, f) for f in FIELDS], [getattr(ref, f) for f in FIELDS], rtol=1e-9)
    assert got.bottleneck == ref.bottleneck


@pytest.mark.parametrize("hw_name,kw", LAYOUTS)
@pytest.mark.parametrize("overlap", ["two_microbatch", "none"])
def test_decode_array_equals_points(hw_name, kw, overlap):
    dep = _dep(hw_name, kw, overlap=overlap)
    b = np.array([0.5, 1, 3, 16, 100, 256] * 2)  # fractional (a replica batch over many devices) and large
    ctx = np.repeat([1, 2250], 6)
    est = estimate(M, dep, Decode(b, ctx), check_memory=False)
    assert len(est) == b.size
    for i in range(b.size):
        _same(est.breakdown(i), estimate(M, dep, Decode(b[i], ctx[i]), check_memory=False).breakdown())


@pytest.mark.parametrize("hw_name,kw", LAYOUTS)
def test_prefill_array_equals_points(hw_name, kw):
    S, per = np.array([2000, 2000, 64, 1, 512]), np.array([1.0, 0.01, 3.0, 5.0, 40.0])
    for overlap in ("two_microbatch", "none"):  # eager prefill: host issue time in the schedule
        dep = _dep(hw_name, kw, overlap=overlap)
        est = estimate(M, dep, Prefill(S, per), check_memory=False)
        for i in range(S.size):
            _same(est.breakdown(i), estimate(M, dep, Prefill(S[i], per[i]), check_memory=False).breakdown())


def test_training_array_equals_points():
    mix = load_model("mixtral-8x22b")
    dep = Deployment(hardware=load_profile("h100-sxm"), devices=64, tp=2, pp=4, dp=8, ep=8, recompute="selective")
    work = Training([256, 512, 256], [4096, 2048, 4096], [1, 2, 2])
    est = estimate(mix, dep, work, check_memory=False)
    for i in range(3):
        one = Training(work.global_batch[i], work.seq_len[i], work.micro_batch[i])
        _same(est.breakdown(i), estimate(mix, dep, one, check_memory=False).breakdown())


@pytest.mark.parametrize("name", ["gpt-oss-120b", "mixtral-8x7b"])
def test_windowed_attention_layers_decode(name):
    # sliding-window layers attend to min(context, window) keys: contexts below and above it
    m = load_model(name)
    ep = 8 if m.moe and m.moe.num_experts % 8 == 0 else 1
    dep = Deployment(hardware=load_profile("h100-sxm"), devices=8, tp=2, dp=4, ep=ep, overlap="two_microbatch")
    est = estimate(m, dep, Decode([2, 32, 2, 32], [100, 100, 70_000, 70_000]), check_memory=False)
    for i, (b, c) in enumerate([(2, 100), (32, 100), (2, 70_000), (32, 70_000)]):
        _same(est.breakdown(i), estimate(m, dep, Decode(b, c), check_memory=False).breakdown())
    # below the window the windowed layers see the whole context: the step grows with it
    assert est.step_time_s[2] > est.step_time_s[0]


def test_bad_points_are_spec_errors():
    from moesim.errors import SpecError

    with pytest.raises(SpecError, match="batch_per_device"):
        Decode([4, 0], 100)
    with pytest.raises(SpecError, match="prompts_per_device"):
        Prefill([100], [0.0])
    with pytest.raises(SpecError, match="prompt_len"):
        Prefill([100.5], [1.0])
    with pytest.raises(SpecError, match="batch_per_device/context"):
        Decode([1, 2, 3], [100, 200])
    with pytest.raises(SpecError, match="skew"):
        Decode(1, 100, "zipf:-1")
    with pytest.raises(SpecError, match="global_batch"):
        estimate(M, _dep(*LAYOUTS[0]), Training(100, 4096, 3))


SC = scenario_from_dict({
    "model": "deepseek-v3", "hardware": ["h200-sxm"],
    "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
    "slo": {"tpot_s": 0.1},
})


def test_replica_cost_equals_from_deployment():
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    cache = PlanCache()
    sp.prefetch([c], SC, M, cache)
    fast = sp.replica_cost(c, SC, M, cache)
    dep = deployment_of(c, SC, M, overlap=sp.decode_overlap(c, SC, M, cache),
                        prefill_overlap=sp.prefill_overlap(c, SC, M, cache))
    ref = from_deployment(M, dep, prompt_len_hint=1000)
    assert fast.kv_capacity_tokens == ref.kv_capacity_tokens and fast.kv_bytes_per_token == ref.kv_bytes_per_token
    cases = [(1000, 1, 128, 1200.0), (5000, 5, 128, 1200.0), (0, 0, 100, 900.0), (3000, 3, 0, 0.0)]
    assert_allclose([fast.mixed_time_s(*a) for a in cases], [ref.mixed_time_s(*a) for a in cases], rtol=1e-12)
    assert_allclose(fast.decode_time_s(77, 3000.0), ref.decode_time_s(77, 3000.0), rtol=1e-12)


def test_planner_evaluations_equal_the_composition():
    # decode from the step model, the mixed iteration from from_deployment's GridCost, K from the
    # same closed form: the planner's memoized path gives the same verdicts and numbers
    from dataclasses import replace

    from moesim.planner.analytic import AnalyticEvaluator

    sc = scenario_from_dict({
        "model": "deepseek-v3", "hardware": ["h200-sxm"],
        "workload": {"prompt_len": 800, "output_len": 300, "target_output_tokens_per_s": 5000},
        "slo": {"tpot_s": 0.06},
    })
    base = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp")
    cands = [replace(base, batch=b) for b in (2, 24, 64)] + [
        Candidate("h200-sxm", 8, tp=8, dp=1, ep=8, attention_layout="tp", batch=b) for b in (2, 24)]
    evs = AnalyticEvaluator().evaluate(cands, sc)
    cache = PlanCache()
    for c, ev in zip(cands, evs):
        dep = deployment_of(c, sc, M, overlap=sp.overlaps_of(ev.detail)["decode"])  # the decode overlap chosen (auto)
        dec = estimate(M, dep, Decode(c.batch, 950), check_memory=False).breakdown()
        ref_cost = from_deployment(M, dep.with_(prefill_overlap=sp.prefill_overlap(c, sc, M, cache)),
                                   prompt_len_hint=800)
        est = sp.choose(ref_cost, c, sc, dec.step_time_s)
        assert ev.ok and ev.decode_steps_per_prefill == est.steps
        assert_allclose([ev.step_time_s, ev.tpot_s, ev.ttft_s, ev.tokens_per_s],
                        [dec.step_time_s, est.tpot_s, est.ttft_s, est.output_tokens_per_s], rtol=1e-12)
        assert ev.imbalance == dec.expert_imbalance
