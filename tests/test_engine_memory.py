"""The serving engine's share of device memory and its cap on running sequences
(moesim/data/stacks.toml ``memory_fraction`` / ``memory_fraction_tiers`` / ``max_running_seqs``):
the stack resolves its share by engine size, the analytic planner and the DES replica size the KV
cache with the same share, a maximum-load run fills that cache up to the scheduler's cap, a
stated ``engine.max_num_seqs`` is honoured and reported, and the launch lines carry the share the
plan assumed.

Tolerances: shares and caps are table values and integer arithmetic, compared exactly; the
analytic and DES capacities are the same memory model read two ways (bytes per sequence per
device vs tokens per replica), so they agree to one sequence per device (the floor of each)."""
from __future__ import annotations

import pytest

from moesim.case_inputs import case_stack
from moesim.catalog import load_model
from moesim.des.serving.deployment import DEFAULT_MEMORY_FRACTION, kv_capacity_tokens
from moesim.errors import MoesimError
from moesim.planner import serving_policy
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate
from moesim.planner.launch import Role, memory_fraction, sglang, vllm
from moesim.planner.scenario import scenario_from_dict
from moesim.planner.space import serving_space
from moesim.specs.serving_features import inflight_context_tokens
from moesim.specs.software_stack import SoftwareStack
from moesim.step.stacks import serving_memory_fraction, stack_table

MIXTRAL = load_model("mixtral-8x7b")


def _scenario(stack: str = "vllm", engine: dict | None = None, hardware: str = "h100-sxm", prompt: int = 1000,
              output: int = 1000):
    data = {"kind": "serving", "name": "mem", "model": "mixtral-8x7b", "hardware": [hardware], "max_devices": 8,
            "workload": {"prompt_len": prompt, "output_len": output, "target_output_tokens_per_s": 1.0,
                         "dtype": "fp8"},
            "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6},
            "search": {"devices_per_replica": [2], "batch_per_device": [64], "tp": [2], "pp": [1]},
            "verify": {"top_n": 0}, "stack": stack}
    if engine is not None:
        data["engine"] = engine
    return scenario_from_dict(data)


TP2 = Candidate("h100-sxm", 2, tp=2, dp=1, ep=1, batch=64)


@pytest.mark.parametrize("stack, devices, want", [
    ("vllm", 1, 0.9), ("vllm", 8, 0.9), ("vllm-rocm", 8, 0.9), ("vllm-v0", 4, 0.9),
    # SGLang 0.4.x mem_fraction_static by tp_size: the largest tier the engine reaches
    ("sglang", 1, 0.88), ("sglang", 2, 0.87), ("sglang", 3, 0.87), ("sglang", 4, 0.85), ("sglang", 8, 0.81),
    ("sglang", 12, 0.81), ("sglang", 16, 0.79), ("sglang", 64, 0.79), ("sglang-rocm", 8, 0.81),
    ("auto", 8, 0.81),  # auto serves as sglang
    ("trtllm", 8, None), ("megatron", 8, None),  # TensorRT-LLM fills a share of what the weights leave (kv_free_fraction)
])
def test_share_by_stack_and_engine_size(stack, devices, want):
    assert serving_memory_fraction(stack, devices) == want


def test_caps_by_stack():
    t = stack_table()
    caps = {s: t.explicit(s, "decode").max_running_seqs for s in ("vllm", "vllm-rocm", "vllm-v0", "sglang")}
    assert caps == {"vllm": 1024, "vllm-rocm": 256, "vllm-v0": 256, "sglang": None}


@pytest.mark.parametrize("field, value", [
    ("memory_fraction_tiers", [[0, 0.8]]), ("memory_fraction_tiers", [[4, 1.2]]),
    ("memory_fraction", 0.0), ("memory_fraction", 1.5), ("max_running_seqs", 0),
])
def test_bad_stack_values_name_the_field(field, value):
    base = stack_table().explicit("vllm", "decode").model_dump()
    with pytest.raises(Exception, match=field):
        SoftwareStack.model_validate({**base, field: value})


def test_the_analytic_batch_limit_is_the_share_of_memory_in_closed_form():
    sc = _scenario("vllm")
    mem = serving_policy.serving_memory(TP2, sc, MIXTRAL, PlanCache())
    assert mem.fraction == 0.9 and mem.budget_bytes == pytest.approx(0.9 * mem.capacity_bytes, rel=1e-12)
    b = mem.max_batch()
    assert b == int((0.9 * mem.capacity_bytes - mem.fixed_bytes) // mem.kv_bytes_per_seq) and b > 0
    assert mem.fits(b) and not mem.fits(b + 1)
    # a smaller share holds fewer sequences: SGLang's 0.87 at two devices
    small = serving_policy.serving_memory(TP2, _scenario("sglang"), MIXTRAL, PlanCache())
    assert small.fraction == 0.87 and small.max_batch() < b


@pytest.mark.parametrize("stack", ["vllm", "sglang"])
def test_analytic_and_des_size_the_same_cache(stack):
    sc = _scenario(stack)
    cache = PlanCache()
    mem = serving_policy.serving_memory(TP2, sc, MIXTRAL, cache)
    dep = cache.deployment(TP2, sc, MIXTRAL)
    tokens = kv_capacity_tokens(MIXTRAL, dep)  # the DES replica's cache, at the stack's share
    assert tokens == kv_capacity_tokens(MIXTRAL, dep, memory_fraction=serving_memory_fraction(stack, 2))
    context = inflight_context_tokens(sc.workload)
    # one attention group (tp=2 over 2 devices) holds tokens / context sequences; the planner's
    # batch counts sequences per device, so the replica holds max_batch x 2 (each floor costs < 1 per device)
    assert abs(tokens / context - 2 * mem.max_batch()) <= 2.0


def test_des_and_analytic_default_share_where_the_stack_states_none():
    # an engine stack that states no share (eager PyTorch serving): both paths take 0.9 of the device
    sc = _scenario("eager")
    cache = PlanCache()
    dep = cache.deployment(TP2, sc, MIXTRAL)
    assert kv_capacity_tokens(MIXTRAL, dep) == kv_capacity_tokens(MIXTRAL, dep, memory_fraction=DEFAULT_MEMORY_FRACTION)
    mem = serving_policy.serving_memory(TP2, sc, MIXTRAL, cache)
    assert mem.fraction == DEFAULT_MEMORY_FRACTION
    assert abs(kv_capacity_tokens(MIXTRAL, dep) / inflight_context_tokens(sc.workload) - 2 * mem.max_batch()) <= 2.0
    with pytest.raises(MoesimError, match="memory_fraction"):
        kv_capacity_tokens(MIXTRAL, dep, memory_fraction=1.5)
    with pytest.raises(MoesimError, match="kv_free_fraction"):
        kv_capacity_tokens(MIXTRAL, dep, kv_free_fraction=0.0)


@pytest.mark.parametrize("stated", [None, 0.8])
def test_trtllm_sizes_one_cache_in_the_screen_the_engine_limits_and_the_des(stated):
    """TensorRT-LLM fills kv_cache_free_gpu_mem_fraction of what the weights leave (the stack's
    0.95, or the stated setting): the analytic budget, trtllm-bench's whole-request KV bound and
    the DES replica's cache are that one share, in closed form."""
    from moesim.planner.trtllm_engine import trtllm_limits

    sc = _scenario("trtllm", engine=None if stated is None else {"kv_cache_free_gpu_mem_fraction": stated})
    f = 0.95 if stated is None else stated
    assert serving_policy.kv_free_fraction(sc) == f
    cache = PlanCache()
    mem = serving_policy.serving_memory(TP2, sc, MIXTRAL, cache)
    assert mem.fraction is None and mem.free_fraction == f
    room = f * (mem.capacity_bytes - mem.weight_bytes)
    assert mem.budget_bytes - mem.fixed_bytes == pytest.approx(room, rel=1e-12)
    assert mem.max_batch() == int(room // mem.kv_bytes_per_seq)
    dep = cache.deployment(TP2, sc, MIXTRAL)
    per_token = mem.kv_bytes_per_seq / (2 * inflight_context_tokens(sc.workload))  # bytes per token per device
    des = kv_capacity_tokens(MIXTRAL, dep, kv_free_fraction=f)
    assert des == int(room // per_token)  # one attention group of tp=2: the device's tokens are the group's
    assert serving_policy.replica_cost(TP2, sc, MIXTRAL, cache).kv_capacity_tokens == des  # the planner's DES cost
    assert trtllm_limits(TP2, sc, MIXTRAL, cache).kv_seqs == int(room / per_token // 2000)  # whole P + L requests
    # the analytic batch at the mean in-flight context and the DES cache agree to one sequence per device
    assert abs(des / inflight_context_tokens(sc.workload) - 2 * mem.max_batch()) <= 2.0
    assert "of the memory the weights leave" in mem.shortfall_reason(mem.max_batch() + 1)


def test_a_stack_states_one_kind_of_share():
    base = stack_table().explicit("vllm", "decode").model_dump()
    with pytest.raises(Exception, match="kv_free_fraction"):
        SoftwareStack.model_validate({**base, "kv_free_fraction": 0.9})
    assert stack_table().explicit("trtllm", "decode").kv_free_fraction == 0.95
    assert stack_table().explicit("trtllm-engine", "decode").kv_free_fraction == 0.95


def test_max_load_fills_the_cache_up_to_the_cap():
    cache = PlanCache()
    # vLLM V1 (1024 per rank) on a long context: the cache binds
    long = _scenario("vllm", prompt=8000, output=2000)
    fill = serving_policy.serving_memory(TP2, long, MIXTRAL, cache).max_batch()
    assert fill < 1024 // 2 and serving_policy.max_load_batch(TP2, long, MIXTRAL, cache) == fill
    # short context: the V0 scheduler's 256 per engine binds, over the tp=2 devices of one rank
    short = _scenario("vllm-v0", prompt=100, output=100)
    assert serving_policy.serving_memory(TP2, short, MIXTRAL, cache).max_batch() > 128
    assert serving_policy.max_load_batch(TP2, short, MIXTRAL, cache) == 256 // 2
    # a stated max_num_seqs replaces the default; SGLang states no cap of its own
    stated = _scenario("vllm", engine={"max_num_seqs": 40}, prompt=100, output=100)
    assert serving_policy.max_load_batch(TP2, stated, MIXTRAL, cache) == 20
    sg = _scenario("sglang", prompt=100, output=100)
    assert serving_policy.max_load_batch(TP2, sg, MIXTRAL, cache) == \
        serving_policy.serving_memory(TP2, sg, MIXTRAL, cache).max_batch()


def test_a_stated_max_num_seqs_rejects_a_larger_plan_and_is_reported():
    sc = _scenario("vllm", engine={"max_num_seqs": 100})
    big = Candidate("h100-sxm", 2, tp=2, dp=1, ep=1, batch=64)  # 128 sequences on one rank
    why = serving_policy.engine_rejection(big, sc, MIXTRAL, PlanCache())
    assert why is not None and "max_num_seqs 100" in why and "128" in why
    ok = Candidate("h100-sxm", 2, tp=2, dp=1, ep=1, batch=32)
    assert serving_policy.engine_rejection(ok, sc, MIXTRAL, PlanCache()) is None
    line = serving_policy.engine_summary(ok, sc, MIXTRAL, PlanCache())
    assert line.startswith("engine (batched_prefill scheduler") and "max_num_seqs 100 (stated)" in line
    # under TensorRT-LLM the vLLM limit is not read, and the line says whose limit it is
    tr = _scenario("trtllm", engine={"max_num_seqs": 100})
    assert serving_policy.unused_engine_keys(tr) == ("max_num_seqs",)
    assert "vLLM/SGLang limit" in serving_policy.engine_summary(ok, tr, MIXTRAL, PlanCache())


def test_bad_max_num_seqs_names_the_field():
    with pytest.raises(MoesimError, match="max_num_seqs"):
        _scenario("vllm", engine={"max_num_seqs": 0})


@pytest.mark.parametrize("framework, hardware, want", [
    ("vLLM 0.7.4.dev181+gf35f8e22 (CUDA)", "h200-sxm", "vllm-v0"), ("vLLM v0.6.3", "h100-sxm", "vllm-v0"),
    ("vLLM 0.8.5", "h100-sxm", "vllm"), ("vLLM v0.11.0", "h200-sxm", "vllm"), ("vLLM", "h200-sxm", "vllm"),
    ("vLLM 0.7.3", "mi300x", "vllm-rocm"),  # the ROCm builds keep their own stack
])
def test_vllm_before_0_8_runs_the_v0_stack(framework, hardware, want):
    assert case_stack({"framework": framework}, hardware, "decode") == want


@pytest.mark.parametrize("stack, devices, want", [("sglang", 8, "0.81"), ("sglang", 2, "0.87"), ("vllm", 8, "0.9"),
                                                  ("trtllm", 8, "0.9")])
def test_launch_lines_carry_the_share_the_plan_assumed(stack, devices, want):
    sc = _scenario(stack)
    role = Role(name="colocated", hardware="h100-sxm", replicas=1, devices=devices, tp=devices, ep=1,
                redundant_experts=0, token_budget_per_rank=8192, max_seqs_per_rank=128)
    assert f"{memory_fraction(role, sc):g}" == want
    assert f"--mem-fraction-static {want}" in sglang(role, sc)
    assert f"--gpu-memory-utilization {want}" in vllm(role, sc)


@pytest.mark.parametrize("hw, want", [
    ("h100-sxm", 1024), ("h200-sxm", 1024), ("b200", 1024), ("mi300x", 1024),  # >= 70 GiB, not an A100
    ("a100-sxm-80gb", 256),  # named A100: vLLM's small branch whatever its 80 GB
    (None, 1024),  # no GPU given: the large-GPU default
])
def test_vllm_running_sequence_default_follows_the_gpu(hw, want):
    """vLLM V1's EngineArgs.get_batch_defaults: max_num_seqs 1024 on a GPU of at least 70 GiB whose
    name does not contain 'a100', 256 otherwise (moesim/data/stacks.toml [vllm])."""
    from moesim.catalog import load_profile

    stack = stack_table().explicit("vllm", "decode")
    assert stack.running_seqs_default(load_profile(hw) if hw else None) == want
    # engines without a GPU branch keep one default everywhere
    assert stack_table().explicit("vllm-v0", "decode").running_seqs_default(load_profile("a100-sxm-80gb")) == 256


def test_a_small_gpu_takes_the_small_default_by_memory():
    from moesim.catalog import load_profile

    h100 = load_profile("h100-sxm")
    small = h100.model_copy(update={"memory": h100.memory.model_copy(update={"hbm_GB": 48.0, "runtime_MiB": None})})
    assert small.hbm_bytes / 2**30 < 70
    assert stack_table().explicit("vllm", "decode").running_seqs_default(small) == 256


def test_the_planner_caps_vllm_on_a100_at_its_default():
    """Under maximum load the planner's vLLM batch on A100 is capped at 256 running sequences per
    attention rank (a model whose KV cache would hold more), on H100 at 1024."""
    from moesim.catalog import load_model

    model = load_model("olmoe-1b-7b")
    for hw, cap in (("a100-sxm-80gb", 256), ("h100-sxm", 1024)):
        sc = scenario_from_dict({
            "kind": "serving", "name": "cap", "model": "olmoe-1b-7b", "hardware": [hw], "max_devices": 1,
            "workload": {"prompt_len": 128, "output_len": 128, "target_output_tokens_per_s": 1.0, "dtype": "bf16"},
            "slo": {"tpot_s": 1.0},
            "search": {"devices_per_replica": [1], "batch_per_device": [8], "tp": [1], "pp": [1]},
            "verify": {"top_n": 0}, "stack": "vllm"}, source="test")
        (c,) = serving_space(sc, model).candidates
        assert serving_policy.serving_memory(c, sc, model, PlanCache()).max_batch() > cap
        assert serving_policy.max_load_batch(c, sc, model, PlanCache()) == cap


@pytest.mark.parametrize("update", [{"max_running_seqs_small": 256, "large_gpu_min_GiB": None},
                                    {"max_running_seqs_small": 0}, {"large_gpu_min_GiB": -1.0}])
def test_bad_gpu_branch_values_name_the_field(update):
    base = stack_table().explicit("vllm", "decode").model_dump()
    with pytest.raises(Exception, match="max_running_seqs_small|large_gpu_min_GiB"):
        SoftwareStack.model_validate({**base, **update})
