"""The stack's device fraction slows compute-bound kernels only: the KV-cache stream of decode
attention runs at the profile's decode-attention bandwidth fraction whatever the stack
(moesim/compute/attention.py ``core_s_per_token_key``, docs/accuracy.md "Device fraction and
memory-bound kernels"). Closed forms; tolerances are float rounding (rel 1e-12)."""
import math

import pytest

from moesim.catalog import load_model, load_profile
from moesim.compute.attention import attention_context_flops_per_key, core_s_per_token_key
from moesim.specs.common import bytes_per_element

F = 0.5


def _parts(hw, model, tp, kv_dtype="bf16"):
    eff = hw.efficiency.compute
    t_flops = attention_context_flops_per_key(model, mla_absorbed=True) / tp / (
        hw.peak_flops("bf16") * eff.attention_compute_fraction)
    share = 1 if model.attention.kind == "mla" else 1 / tp
    t_bytes = model.kv_elements_per_token() * bytes_per_element(kv_dtype) * share / (
        hw.hbm_bandwidth_Bps * eff.attention_memory_fraction)
    return t_flops, t_bytes


@pytest.mark.parametrize("model_name,hw_name,tp", [("qwen3-30b-a3b", "b200", 1), ("deepseek-v3", "h200-sxm", 8),
                                                   ("mixtral-8x7b", "h100-sxm", 2)])
def test_decode_core_after_the_fraction_is_max_of_compute_over_f_and_bytes(model_name, hw_name, tp):
    hw, model = load_profile(hw_name), load_model(model_name)
    t_flops, t_bytes = _parts(hw, model, tp)
    got = core_s_per_token_key(hw, model, phase="decode", tp=tp, dtype="bf16", kv_dtype="bf16",
                               device_fraction=F) / F  # the caller's division (layer.at_device_fraction)
    assert math.isclose(got, max(t_flops / F, t_bytes), rel_tol=1e-12)
    # at fraction 1 the slope is the plain roofline
    assert math.isclose(core_s_per_token_key(hw, model, phase="decode", tp=tp, dtype="bf16", kv_dtype="bf16"),
                        max(t_flops, t_bytes), rel_tol=1e-12)


def test_memory_bound_gqa_decode_core_does_not_move_with_the_fraction():
    hw, model = load_profile("b200"), load_model("qwen3-30b-a3b")  # GQA: ~4 flops per KV byte, memory-bound
    t_flops, t_bytes = _parts(hw, model, 1)
    assert t_bytes > t_flops / F
    slow = core_s_per_token_key(hw, model, phase="decode", tp=1, device_fraction=F) / F
    assert math.isclose(slow, t_bytes, rel_tol=1e-12)


def test_prefill_core_is_divided_by_the_fraction():
    hw, model = load_profile("h100-sxm"), load_model("mixtral-8x7b")
    one = core_s_per_token_key(hw, model, phase="prefill", tp=1)
    assert math.isclose(core_s_per_token_key(hw, model, phase="prefill", tp=1, device_fraction=F) / F, one / F,
                        rel_tol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_out_of_range_is_an_error_naming_it(bad):
    with pytest.raises(ValueError, match="device_fraction"):
        core_s_per_token_key(load_profile("b200"), load_model("qwen3-30b-a3b"), phase="decode", tp=1,
                             device_fraction=bad)


def test_long_context_decode_step_attention_is_not_slowed_by_the_stack():
    """A KV-bound decode step (qwen3-30b-a3b, 1 x B200, 94 sequences) under the trtllm stack
    (fraction < 1): going from 1,000 to 17,000 cached tokens adds exactly the bandwidth-bound
    KV stream of the extra 16,000 keys per sequence and layer, not that divided by the fraction."""
    from moesim.specs.deployment import Deployment
    from moesim.step import Decode, estimate
    from moesim.step.stacks import device_fraction

    hw, model = load_profile("b200"), load_model("qwen3-30b-a3b")
    assert device_fraction("trtllm", "decode") < 1.0
    dep = Deployment(hardware=hw, devices=1, tp=1, ep=1, dp=1, dtype="fp8", kv_dtype="fp8", stack="trtllm")

    def attention(ctx):
        return estimate(model, dep, Decode(batch_per_device=94, context=ctx), check_memory=False).breakdown(0).attention_s

    _, t_bytes = _parts(hw, model, 1, kv_dtype="fp8")
    closed = t_bytes * 94 * 16000 * model.num_layers
    assert math.isclose(attention(17000) - attention(1000), closed, rel_tol=1e-9)


def _step(stack, workload, kv_dtype="fp8"):
    from moesim.specs.deployment import Deployment
    from moesim.step import estimate

    hw, model = load_profile("b200"), load_model("qwen3-30b-a3b")
    dep = Deployment(hardware=hw, devices=1, tp=1, ep=1, dp=1, dtype="fp8", kv_dtype=kv_dtype, stack=stack)
    return estimate(model, dep, workload, check_memory=False).breakdown(0)


def test_decode_step_splits_at_the_rule_kv_stream_not_divided_the_rest_divided():
    """One decode step (qwen3-30b-a3b, 1 x B200, 94 sequences at 17,000 cached tokens) under the
    trtllm stack (fraction f < 1) against a stack at fraction 1 (cuda_graphs; graph-captured like
    trtllm decode, so host terms do not enter these device columns). Closed form of the rule:
    attention = (attention_at_1 - KV stream) / f + KV stream, the KV stream being
    layers x sequences x keys x KV bytes per key / (HBM x attention_memory_fraction); the experts'
    grouped GEMMs and the router divided by f, although the experts here stream their weights
    (~6 rows per expert, roofline share 1): the evidence keeps them in the fraction
    (docs/accuracy.md "Device fraction and memory-bound kernels"). rel 1e-9: float sums."""
    from moesim.step import Decode
    from moesim.step.stacks import device_fraction

    f = device_fraction("trtllm", "decode")
    assert f < 1.0 and device_fraction("cuda_graphs", "decode") == 1.0
    hw, model = load_profile("b200"), load_model("qwen3-30b-a3b")
    _, t_bytes = _parts(hw, model, 1, kv_dtype="fp8")
    kv = t_bytes * 94 * 17000 * model.num_layers
    one, slow = (_step(s, Decode(batch_per_device=94, context=17000)) for s in ("cuda_graphs", "trtllm"))
    assert kv < one.attention_s  # the projections and launch are the rest
    assert math.isclose(slow.attention_s, (one.attention_s - kv) / f + kv, rel_tol=1e-9)
    assert math.isclose(slow.experts_s, one.experts_s / f, rel_tol=1e-9)
    assert math.isclose(slow.router_s, one.router_s / f, rel_tol=1e-9)


def test_prefill_step_gemms_and_attention_are_divided_by_the_fraction():
    """A compute-bound prefill step (8,192 tokens): attention and the experts' GEMMs are both
    divided by the fraction (rel 1e-9). A BF16 KV cache: under an FP8 one trtllm's context
    attention also changes precision (fp8_kv_context, tests/test_fp8_kv_core.py)."""
    from moesim.step import Prefill
    from moesim.step.stacks import device_fraction

    f = device_fraction("trtllm", "prefill")
    assert device_fraction("cuda_graphs", "prefill") == 1.0
    one, slow = (_step(s, Prefill(prompt_len=8192, prompts_per_device=1), kv_dtype="bf16")
                 for s in ("cuda_graphs", "trtllm"))
    assert math.isclose(slow.experts_s, one.experts_s / f, rel_tol=1e-9)
    assert math.isclose(slow.attention_s, one.attention_s / f, rel_tol=1e-9)
