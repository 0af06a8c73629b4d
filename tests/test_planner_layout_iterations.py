"""The planner's many-at-a-time step model (``moesim.step.vectorized.LayoutIterations``) and the
replica cost built on it give the scalar step model's own numbers.

Expected values: ``decode_iteration`` / ``prefill_iteration`` called one at a time (the scalar
model, the reference), and ``from_deployment``'s GridCost (the DES's own replica cost). rtol
1e-9: only the summation order over layers differs (one layer-model call per layer kind, the
schedule on arrays), so agreement is to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.des.serving.deployment import from_deployment
from moesim.planner import serving_policy as sp
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict
from moesim.specs import Cluster, Parallelism
from moesim.step import decode_iteration, prefill_iteration
from moesim.step.vectorized import LayoutIterations

M = load_model("deepseek-v3")
# a DP-attention layout, a TP-attention layout across two nodes, a TPU slice with redundant experts
LAYOUTS = [
    ("h200-sxm", 8, Parallelism(tp=1, dp=8, ep=8, attention_layout="dp")),
    ("b200", 16, Parallelism(tp=8, dp=2, ep=16, attention_layout="tp")),
    ("tpu-v5p", 48, Parallelism(tp=1, dp=48, ep=48, attention_layout="dp", redundant_experts=32)),
]
FIELDS = ("step_time_s", "attention_s", "dispatch_s", "experts_s", "combine_s", "exposed_comm_s", "host_s",
          "memory_GiB", "model_flops_per_step_per_device", "expert_imbalance")


@pytest.mark.parametrize("hw_name,n,par", LAYOUTS)
@pytest.mark.parametrize("overlap", ["two_microbatch", "none"])
def test_decode_breakdowns_equal_decode_iteration(hw_name, n, par, overlap):
    hw, cl = load_profile(hw_name), Cluster(hardware=hw_name, devices=n)
    it = LayoutIterations(M, hw, cl, par, overlap=overlap)
    batches = [0.5, 1, 3, 16, 100, 256]  # fractional (a replica batch over many devices) and large
    for ctx in (1, 2250):
        for b, bd in zip(batches, it.decode(batches, ctx)):
            ref = decode_iteration(M, hw, cl, par, batch_per_device=b, context=ctx, overlap=overlap, check_memory=False)
            assert_allclose([getattr(bd, f) for f in FIELDS], [getattr(ref, f) for f in FIELDS], rtol=1e-9)
            assert bd.bottleneck == ref.bottleneck


@pytest.mark.parametrize("hw_name,n,par", LAYOUTS)
def test_prefill_times_equal_prefill_iteration(hw_name, n, par):
    hw, cl = load_profile(hw_name), Cluster(hardware=hw_name, devices=n)
    S, per = [2000, 2000, 64, 1, 512], [1.0, 0.01, 3.0, 5.0, 40.0]
    for overlap in ("two_microbatch", "none"):  # eager prefill: host issue time in the schedule
        got = LayoutIterations(M, hw, cl, par, overlap=overlap).prefill(S, per)
        ref = [prefill_iteration(M, hw, cl, par, prompt_len=s, prompts_per_device=p, overlap=overlap,
                                 check_memory=False).step_time_s for s, p in zip(S, per)]
        assert_allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize("name", ["gpt-oss-120b", "mixtral-8x7b"])
def test_windowed_attention_layers_decode(name):
    # sliding-window layers attend to min(context, window) keys: contexts below and above it
    m, hw, cl = load_model(name), load_profile("h100-sxm"), Cluster(hardware="h100-sxm", devices=8)
    par = Parallelism(tp=2, dp=4, ep=8 if m.moe and m.moe.num_experts % 8 == 0 else 1, attention_layout="tp")
    it = LayoutIterations(m, hw, cl, par, overlap="two_microbatch")
    for ctx in (100, 70_000):
        for b, bd in zip([2, 32], it.decode([2, 32], ctx)):
            ref = decode_iteration(m, hw, cl, par, batch_per_device=b, context=ctx, overlap="two_microbatch",
                                   check_memory=False)
            assert_allclose([getattr(bd, f) for f in FIELDS], [getattr(ref, f) for f in FIELDS], rtol=1e-9)


def test_pipeline_layouts_fall_back_to_the_scalar_model():
    hw, cl = load_profile("h100-sxm"), Cluster(hardware="h100-sxm", devices=16)
    par = Parallelism(tp=1, pp=2, dp=8, ep=8, attention_layout="dp")
    bd = LayoutIterations(M, hw, cl, par, overlap="two_microbatch").decode([4], 1000)[0]
    ref = decode_iteration(M, hw, cl, par, batch_per_device=4, context=1000, overlap="two_microbatch",
                           check_memory=False)
    assert bd == ref  # the very same call


def test_replica_cost_equals_from_deployment():
    sc = scenario_from_dict({
        "model": "deepseek-v3", "hardware": ["h200-sxm"],
        "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
        "slo": {"tpot_s": 0.1},
    })
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    sp._COSTS.clear()
    sp._NODES.clear()
    sp._ITERS.clear()
    sp.prefetch([c], sc, M)
    fast = sp.replica_cost(c, sc, M)
    hw = load_profile("h200-sxm")
    ref = from_deployment(M, hw, Cluster(hardware="h200-sxm", devices=8), c.parallelism(), dtype="fp8",
                          kv_dtype="bf16", overlap="two_microbatch", prefill_overlap=sp.prefill_overlap(c, sc, M),
                          prompt_len_hint=1000)
    assert fast.kv_capacity_tokens == ref.kv_capacity_tokens and fast.kv_bytes_per_token == ref.kv_bytes_per_token
    cases = [(1000, 1, 128, 1200.0), (5000, 5, 128, 1200.0), (0, 0, 100, 900.0), (3000, 3, 0, 0.0)]
    assert_allclose([fast.mixed_time_s(*a) for a in cases], [ref.mixed_time_s(*a) for a in cases], rtol=1e-9)
    assert_allclose(fast.decode_time_s(77, 3000.0), ref.decode_time_s(77, 3000.0), rtol=1e-9)


def test_bad_batch_is_a_spec_error():
    from moesim.errors import SpecError

    hw, cl = load_profile("h200-sxm"), Cluster(hardware="h200-sxm", devices=8)
    it = LayoutIterations(M, hw, cl, Parallelism(tp=1, dp=8, ep=8, attention_layout="dp"))
    with pytest.raises(SpecError, match="batch_per_device"):
        it.decode([4, 0], 100)
    with pytest.raises(SpecError, match="prompt_len"):
        it.prefill([100], [0.0])
    assert np.isfinite(it.prefill([100], [1.0])).all()


def test_planner_evaluations_equal_the_scalar_composition():
    # a sample of candidates (two layouts, three batches): decode from decode_iteration, the mixed
    # iteration from from_deployment's GridCost (the scalar path the planner used before), K from
    # the same closed form; the planner's fast path must give the same verdicts and numbers
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
    sp._COSTS.clear()
    sp._NODES.clear()
    sp._ITERS.clear()
    evs = AnalyticEvaluator().evaluate(cands, sc)
    hw = load_profile("h200-sxm")
    for c, ev in zip(cands, evs):
        cl, par = Cluster(hardware="h200-sxm", devices=8), c.parallelism()
        dec = decode_iteration(M, hw, cl, par, batch_per_device=c.batch, context=950, overlap="two_microbatch",
                               check_memory=False)
        ref_cost = from_deployment(M, hw, cl, par, overlap="two_microbatch",
                                   prefill_overlap=sp.prefill_overlap(c, sc, M), prompt_len_hint=800)
        est = sp.choose(ref_cost, c, sc, dec.step_time_s)
        assert ev.ok and ev.decode_steps_per_prefill == est.steps
        assert_allclose([ev.step_time_s, ev.tpot_s, ev.ttft_s, ev.tokens_per_s],
                        [dec.step_time_s, est.tpot_s, est.ttft_s, est.output_tokens_per_s], rtol=1e-9)
        assert ev.imbalance == dec.expert_imbalance
