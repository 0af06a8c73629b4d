"""Properties of the co-located serving policy (issue 15: a monotone, stable search), seeded grids.

- the prefill interval K the policy chooses has the smallest TPOT (most tokens/s, S / TPOT) of
  every K in [1, k_max] meeting the same TPOT and TTFT limits, so no longer K gives more;
- a looser SLO never costs more; a finer batch grid never costs more and never changes the
  answer by more than one grid step;
- the TTFT margin: Poisson quantiles are exact, the spread term vanishes at the median.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import poisson

from moesim.catalog import load_model
from moesim.des.serving.cost import GridCost, LinearCost
from moesim.planner import serving_policy as sp
from moesim.planner import trtllm_engine as te
from moesim.planner.evaluation import Candidate
from moesim.planner.plan import plan
from moesim.planner.scenario import scenario_from_dict


def _scenario(tpot=0.05, ttft=2.0, batches=(16, 64, 256), percentile=99, **extra):
    data = {"kind": "serving", "name": "prop", "model": "qwen3-30b-a3b", "hardware": ["h100-sxm", "b200"],
            "max_devices": 64,
            "workload": {"prompt_len": 1000, "output_len": 300, "target_output_tokens_per_s": 20000, "dtype": "fp8",
                         "kv_dtype": "fp8"},
            "slo": {"percentile": percentile, "tpot_s": tpot, "ttft_s": ttft},
            "search": {"devices_per_replica": [1, 2], "batch_per_device": list(batches), "tp": [1], "pp": [1],
                       "attention_layouts": ["dp"]},
            "verify": {"top_n": 0}}
    data.update(extra)
    return scenario_from_dict(data)


def _costs():
    """Iteration costs with different shapes: affine (a fixed cost per mixed iteration, as eager
    host time), and a grid over a prefill whose per-token cost rises and falls (tile steps),
    so TPOT(K) is not monotone."""
    yield LinearCost(fixed_s=0.05, per_token_s=2e-6, per_context_token_s=1e-9)
    yield LinearCost(fixed_s=0.002, per_token_s=8e-6)

    def prefill(t: int) -> float:
        return 0.004 + 3e-6 * t + 0.002 * math.sin(math.log2(t))

    def decode(b: int, ctx: float) -> float:
        return 0.006 + 2e-5 * b + 2e-9 * b * ctx

    yield GridCost(prefill_fn=prefill, decode_fn=decode, kv_capacity_tokens=10**8, kv_bytes_per_token=1.0,
                   devices=8, points_per_octave=1)


@pytest.mark.parametrize("cost_i", range(3))
def test_chosen_interval_has_the_most_tokens_per_s_of_every_feasible_interval(cost_i):
    cost = list(_costs())[cost_i]
    c = Candidate("h100-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    s = sp.planned_seqs(c)
    checked = 0
    for tpot, ttft, pct in itertools.product((None, 0.01, 0.03, 0.1), (None, 0.5, 2.0, 8.0), (50, 99)):
        if tpot is None and ttft is None:
            continue
        sc = _scenario(tpot=tpot, ttft=ttft, percentile=pct)
        decode = cost.decode_time_s(s, sc.workload.prompt_len + sc.workload.output_len / 2)
        got = sp.choose(cost, c, sc, decode)
        k_max = sp.max_steps(c, sc)
        feasible = [e for e in (sp.estimate(cost, c, sc, decode, k) for k in range(1, k_max + 1))
                    if (tpot is None or e.tpot_s <= tpot) and (ttft is None or e.ttft_s <= ttft)]
        if not feasible:
            continue
        checked += 1
        assert (tpot is None or got.tpot_s <= tpot) and (ttft is None or got.ttft_s <= ttft)
        best = min(e.tpot_s for e in feasible)
        # NOTE: rtol 1e-9: the brute-force scan prices the same closed form (same GridCost nodes)
        assert got.tpot_s <= best * (1 + 1e-9)
        longer = [e for e in feasible if e.steps > got.steps]
        assert all(got.output_tokens_per_s >= e.output_tokens_per_s * (1 - 1e-9) for e in longer)
        # ties go to the smaller K (the smaller TTFT)
        assert got.steps == min(e.steps for e in feasible if e.tpot_s <= best * (1 + 1e-12))
    assert checked >= 6


def test_ttft_grows_with_the_interval():
    """The bisection for the largest K meeting TTFT relies on TTFT rising with K."""
    c = Candidate("h100-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=16)
    sc = _scenario()
    for cost in _costs():
        d = cost.decode_time_s(sp.planned_seqs(c), 1150.0)
        t = [sp.estimate(cost, c, sc, d, k).ttft_s for k in range(1, sp.max_steps(c, sc) + 1)]
        assert all(b >= a for a, b in zip(t, t[1:]))


def _cost(result) -> float:
    return result.answer.usd_per_hour if result.answer is not None else math.inf


@pytest.mark.parametrize("limits", [((0.05, 2.0), (0.08, 2.0)), ((0.05, 2.0), (0.05, 6.0)),
                                    ((0.03, 1.0), (0.1, 10.0))])
def test_looser_slo_never_costs_more(limits):
    (t1, f1), (t2, f2) = limits
    tight = _cost(plan(_scenario(tpot=t1, ttft=f1), executor="inline"))
    loose = _cost(plan(_scenario(tpot=t2, ttft=f2), executor="inline"))
    assert loose <= tight


def test_finer_batch_grid_changes_the_answer_by_at_most_one_grid_step():
    coarse = plan(_scenario(batches=(16, 64, 256)), executor="inline")
    fine = plan(_scenario(batches=(16, 32, 64, 128, 256)), executor="inline")
    assert _cost(fine) <= _cost(coarse)  # a superset of candidates
    # the coarse grid holds a batch within a factor 4 (its step) below the fine answer's; a
    # replica at a quarter of the batch serves at least a quarter of the tokens/s (TPOT never
    # grows when the batch shrinks), so it needs at most 4x the replicas, rounded up
    a = fine.answer
    per_replica = a.usd_per_hour / a.replicas
    assert _cost(coarse) <= math.ceil(4 * a.replicas) * per_replica + 1e-9


@pytest.mark.parametrize("mean", [0.01, 0.3, 1.0, 4.7, 20.0, 49.9, 50.1, 333.0, 4096.0])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.999])
def test_poisson_quantile_is_exact(mean, q):
    assert sp.poisson_quantile(mean, q) == int(poisson.ppf(q, mean))  # scipy: exact, second engine


def test_prompt_tokens_quantile():
    # median, fixed lengths: the count's median, never below the fluid mean n P
    assert sp.prompt_tokens_quantile(2.0, 1000, 0.5) == 2000.0
    assert sp.prompt_tokens_quantile(0.2, 1000, 0.5) == 200.0
    # p99 of Poisson(2) is 6 prompts (hand: P(N <= 5) = 0.983, P(N <= 6) = 0.9955)
    assert sp.prompt_tokens_quantile(2.0, 1000, 0.99) == 6000.0
    # lognormal sigma 0.8: CV^2 = e^0.64 - 1; spread z_0.99 x P sqrt(6 CV^2) added
    cv2 = math.expm1(0.64)
    want = 6000.0 + 2.3263478740 * 1000 * math.sqrt(6 * cv2)
    assert sp.prompt_tokens_quantile(2.0, 1000, 0.99, cv2) == pytest.approx(want, rel=1e-9)


def test_trtllm_bench_settings_by_hand():
    """TensorRT-LLM tensorrt_llm/bench/build/tuning.py finetune_setting worked by hand: 1,591.4 requests of
    1000 + 1000 tokens: raw_bs 1591.4 -> 256 x ceil(6.22) = 1792; raw tokens 3182.8 -> 256 x
    ceil(12.4) = 3328 (>= 2048); no chunking: max(3328, 1000 + 1792) = 3328."""
    assert te.trtllm_bench_settings(1591.4, 1000, 1000) == (1792, 3328)
    # small: at least 64 sequences and 2048 tokens, then ISL + batch when prompts are long
    assert te.trtllm_bench_settings(10.0, 8192, 1024) == (64, 8192 + 64)
    # caps: 4096 requests, 32768 tokens
    assert te.trtllm_bench_settings(1e6, 1000, 100) == (4096, 32768)


def test_trtllm_limits_and_rejection():
    sc = _scenario(tpot=1e3, ttft=1e6, batches=(1024, 2048), scheduler="trtllm", stack="cuda_graphs",
                   hardware=["b200"], workload={"prompt_len": 1000, "output_len": 1000,
                                                "target_output_tokens_per_s": 1.0, "dtype": "fp4", "kv_dtype": "fp8"})
    from moesim.planner.costs import PlanCache

    m, cache = load_model("qwen3-30b-a3b"), PlanCache()
    c = Candidate("b200", 1, tp=1, dp=1, ep=1, attention_layout="dp", batch=2048)
    lim = te.trtllm_limits(c, sc, m, cache)
    # KV bound: 0.95 of (HBM - weights) over the KV bytes of whole 2000-token requests
    assert lim.max_seqs == min(lim.max_batch_size, lim.kv_seqs, lim.max_num_tokens * 1000 // 2000)
    assert lim.bound in ("max_batch_size", "kv_cache", "max_num_tokens")
    assert 1000 < lim.max_seqs < 2048
    assert "TensorRT-LLM sustains" in sp.engine_rejection(c, sc, m, cache)
    ok = Candidate("b200", 1, tp=1, dp=1, ep=1, attention_layout="dp", batch=1024)
    assert sp.engine_rejection(ok, sc, m, cache) is None
    r = plan(sc, executor="inline")
    assert {e.evaluation.candidate.batch for e in r.ranked} == {1024}
    assert any(g.reason == "exceeds_engine_limits" for g in r.rejected)
    # the default scheduler sets no such limit
    assert sp.engine_rejection(c, _scenario(), m, cache) is None


def test_trtllm_interval_is_one_prompt_per_mixed_iteration():
    """K = L / S_rank (rounded) under TensorRT-LLM: 100 sequences, 1000-token answers -> K = 10."""
    sc = _scenario(tpot=1e3, ttft=1e6, scheduler="trtllm")
    c = Candidate("h100-sxm", 1, tp=1, dp=1, ep=1, attention_layout="dp", batch=100)
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"output_len": 1000})})
    cost = LinearCost(fixed_s=0.01, per_token_s=1e-6)
    lim = te.EngineLimits(512, 4096, 500, 500, "kv_cache")
    assert sp.choose(cost, c, sc, cost.decode_time_s(100, 1500.0), lim).steps == 10


def test_scenario_stack_names_follow_the_deployment_spec():
    from moesim.errors import MoesimError
    from moesim.planner.costs import deployment_of
    from moesim.planner.scenario import deployment_stacks
    from moesim.specs.software_stack import STACK_VENDORS
    from moesim.case_inputs import case_stack
    from moesim.step_cases import case_scheduler

    assert _scenario().stack == "auto"
    for stack in deployment_stacks():
        hw = "h100-sxm" if "nvidia" in STACK_VENDORS[stack] else "mi300x"  # where the stack runs
        sc = _scenario(stack=stack, hardware=[hw])
        c = Candidate(hw, 1, tp=1, dp=1, ep=1, attention_layout="dp", batch=16)
        assert deployment_of(c, sc, load_model("qwen3-30b-a3b")).stack == stack
    with pytest.raises(MoesimError, match="stack = 'tensorflow': allowed: auto, eager"):
        _scenario(stack="tensorflow")
    trt = {"framework": "TensorRT-LLM (PyTorch backend), trtllm-bench throughput"}
    assert case_stack(trt, "b200", "decode") == "trtllm"
    assert case_scheduler(trt) == "trtllm"
    assert case_stack({}, "b200", "decode") == "auto" and case_scheduler({}) == "auto"


def test_stack_without_host_time_never_slows_a_candidate():
    """cuda_graphs pays no host issue time in any phase: TPOT never above the eager default's."""
    from moesim.planner.analytic import AnalyticEvaluator

    c = Candidate("h100-sxm", 1, tp=1, dp=1, ep=1, attention_layout="dp", batch=64)
    auto = AnalyticEvaluator().evaluate([c], _scenario(tpot=1.0, ttft=100.0))[0]
    graphs = AnalyticEvaluator().evaluate([c], _scenario(tpot=1.0, ttft=100.0, stack="cuda_graphs"))[0]
    assert graphs.tpot_s <= auto.tpot_s and graphs.tokens_per_s >= auto.tokens_per_s
    assert np.isfinite(graphs.ttft_s)


def test_slo_no_mode_meets_names_the_closest_of_each_mode():
    """Issue 15, bad input: an SLO no mode can meet answers with each mode's closest candidate and
    what it lacks (exit 2 on the CLI: InfeasibleError)."""
    from moesim.errors import InfeasibleError

    sc = _scenario(tpot=1e-4, ttft=1e-3, modes=["colocated", "disaggregated"],
                   disaggregated={"prefill_devices_per_replica": [1], "decode_devices_per_replica": [1, 2],
                                  "prefill_token_budget_per_rank": [8192], "redundant_slots_per_rank": [0]})
    r = plan(sc, executor="inline")
    assert not r.feasible
    with pytest.raises(InfeasibleError, match=r"co-located: closest is .*, which misses slo .*; disaggregated: "):
        r.require_feasible()
