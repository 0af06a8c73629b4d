"""Mixed-precision GEMMs (weights stored in another format than the math) and the served-as-stored
rule for checkpoints that ship their experts in their own format (GPT-OSS: MXFP4 experts, BF16
elsewhere; TensorRT-LLM examples/models/core/gpt_oss/README.md, "MoE Support Matrix").
"""
from __future__ import annotations

import numpy as np
import pytest

from moesim.catalog import load_model, load_profile
from moesim.compute.gemm import roofline_time
from moesim.compute.grouped import grouped_gemm_time
from moesim.des.layer import simulate_layers
from moesim.specs import Deployment, bytes_per_element
from moesim.step import pricing
from moesim.step.elementwise import QUANT_BYTES, elementwise_bytes, gemm_input_parts
from moesim.step.layer import layer_ops, make_setup, stack_time
from moesim.step.setup import expert_gemm_dtypes, projection_dtype

B200 = load_profile("b200")
H200 = load_profile("h200-sxm")
GPT_OSS = load_model("gpt-oss-120b")
QWEN = load_model("qwen3-30b-a3b")
MX4 = bytes_per_element("mxfp4")  # 0.5 + 1/32


def test_weight_dtype_none_is_the_one_dtype_gemm():
    """Stating the math dtype as the weight dtype changes nothing (exact)."""
    from moesim.compute.gemm import gemm_time_arrays

    m, n, k = np.array([1, 64, 4096]), 5120, 2880
    t0, by0, _ = gemm_time_arrays(B200, m, n, k, "fp8")
    t1, by1, _ = gemm_time_arrays(B200, m, n, k, "fp8", weight_dtype="fp8")
    assert np.array_equal(t0, t1) and np.array_equal(by0, by1)


def test_mixed_gemm_streams_the_weights_at_their_format_and_computes_at_the_math_peak():
    """Closed forms. Decode-shaped (m = 1, weight-bound): the HBM bytes are m k e_a + k n e_w +
    m n e_out with e_w the MXFP4 bytes (both operands fit once: no L2 re-reads at m = 1), so the
    time falls with the weight bytes. Prefill-shaped (m = n = k = 8192, math-bound): the time is
    the math dtype's, not the weight format's (within 2%: only the operand loads differ), and the
    roofline floor of the mixed GEMM holds."""
    from moesim.compute.gemm import gemm_time_arrays

    n, k = 5760, 2880
    _, byts, bound = gemm_time_arrays(B200, 1, n, k, "fp8", weight_dtype="mxfp4")
    assert float(byts) == pytest.approx(1 * k * 1.0 + k * n * MX4 + 1 * n * 2.0, rel=1e-12)
    t_mixed = float(gemm_time_arrays(B200, 1, n, k, "fp8", weight_dtype="mxfp4")[0])
    assert t_mixed < float(gemm_time_arrays(B200, 1, n, k, "fp8")[0])
    big = 8192
    t_mx = float(gemm_time_arrays(B200, big, big, big, "fp8", weight_dtype="mxfp4")[0])
    assert t_mx == pytest.approx(float(gemm_time_arrays(B200, big, big, big, "fp8")[0]), rel=0.02)
    assert t_mx > 1.5 * float(gemm_time_arrays(B200, big, big, big, "fp4")[0])  # FP8-rate MMA, not FP4's
    assert t_mx >= 2.0 * big ** 3 / B200.peak_flops("fp8")
    assert float(roofline_time(B200, big, big, big, "fp8", weight_dtype="mxfp4")) <= t_mx


def test_mixed_grouped_gemm_bytes_closed_form():
    """Grouped GEMM: rows read at the math dtype, each non-empty group's weights at the stored format."""
    m_G = np.array([3, 0, 5, 1])
    n, k = 5760, 2880
    est = grouped_gemm_time(B200, m_G, n, k, "fp8", weight_dtype="mxfp4")
    stored_rows = float((np.ceil(m_G / B200.efficiency.compute.gemm_tile_m) * B200.efficiency.compute.gemm_tile_m).sum())
    assert est.bytes == pytest.approx(stored_rows * k * 1.0 + 3 * k * n * MX4 + stored_rows * n * 2.0, rel=1e-12)
    one = grouped_gemm_time(B200, m_G, n, k, "fp8")
    assert est.bytes < one.bytes and est.time_s < one.time_s


def test_expert_dtype_rule_follows_the_support_matrix():
    """MXFP4 experts: MXFP8 math on Blackwell (native FP4 MMA), BF16 on Hopper (simulated mxfp4,
    HGMMA); a bf16 run keeps bf16 math; training trains its own weights; a model without a stored
    expert format runs one dtype."""
    assert expert_gemm_dtypes(GPT_OSS, B200, "fp4") == ("fp8", "mxfp4")
    assert expert_gemm_dtypes(GPT_OSS, B200, "fp8") == ("fp8", "mxfp4")
    assert expert_gemm_dtypes(GPT_OSS, H200, "fp8") == ("bf16", "mxfp4")
    assert expert_gemm_dtypes(GPT_OSS, H200, "bf16") == ("bf16", "mxfp4")
    assert expert_gemm_dtypes(GPT_OSS, B200, "bf16", phase="train") == ("bf16", None)
    assert expert_gemm_dtypes(QWEN, B200, "fp4") == ("fp4", None)
    dep = Deployment(hardware=B200, devices=1, dtype="fp4")
    assert projection_dtype(GPT_OSS, dep) == "bf16"  # the checkpoint's attention is BF16
    assert projection_dtype(GPT_OSS, dep, "train") == "fp4"
    assert projection_dtype(QWEN, dep) == "fp4"
    assert projection_dtype(GPT_OSS, Deployment(hardware=B200, devices=1, dtype="fp4", attention_dtype="fp8")) == "fp8"


@pytest.mark.parametrize("hw,math", [(B200, "fp8"), (H200, "bf16")])
def test_step_model_prices_gpt_oss_experts_as_served(hw, math):
    """The step model's routed experts are the grouped GEMMs at the rule's math dtype and MXFP4
    weights (exact: the same pricing call), and its quantization pass skips what runs in BF16
    (the attention projections, and on Hopper the experts)."""
    dep = Deployment(hardware=hw, devices=1, dtype="fp4" if hw is B200 else "fp8")
    setup = make_setup(GPT_OSS, dep, "decode", "balanced")
    m = GPT_OSS.moe
    tokens = 512
    ops = layer_ops(setup, 0, tokens, 2048)
    copies = tokens * m.top_k / m.num_experts
    want = pricing.expert_ffn_s(hw, GPT_OSS, [copies] * m.num_experts, math, m.expert_ffn, layout="token_tiled",
                                weight_dtype="mxfp4")
    assert ops.experts_s * setup.device_fraction == pytest.approx(want, rel=1e-12)
    att, experts, rest = gemm_input_parts(GPT_OSS, True, 1)
    plain = elementwise_bytes(GPT_OSS, True, tokens, 1, "bf16", "decode")
    served = elementwise_bytes(GPT_OSS, True, tokens, 1, dep.dtype, "decode", projection_dtype="bf16",
                               expert_dtype=math)
    quantized = experts if math == "fp8" else 0.0
    assert served - plain == pytest.approx(tokens * (quantized + rest) * QUANT_BYTES["decode"], rel=1e-12)


def test_layer_des_prices_the_served_experts_like_the_analytic_model():
    """Second engine: under balanced routing the layer DES runs the analytic schedule (1%, as
    tests/test_des_layer.py) with the mixed-precision experts."""
    dep = Deployment(hardware=B200, devices=2, dp=2, ep=2, attention_layout="dp", dtype="fp4")
    setup = make_setup(GPT_OSS, dep, "decode", "balanced")
    layers = [0, 1, 2]
    res = simulate_layers(setup, layers=layers, tokens=256, context=2048, overlap="none", steps=2)
    want = stack_time([layer_ops(setup, i, 256, 2048) for i in layers], "none")[0]
    assert res.mean_step_s == pytest.approx(want, rel=0.01)


def test_fused_moe_quantization_writes_the_copies_in_the_gemm_format():
    """TensorRT-LLM's fused MoE (expand + quantize, activation + requantize): closed form of the
    bytes saved per token against the unfused chain at fp4 experts: the k D copies and the k F
    down inputs are written at 0.5 B instead of 2 B, and their separate quantization pass (3 B per
    element: bf16 read, low-precision write) is gone. At bf16 experts nothing changes."""
    m = QWEN.moe
    k, d, f = m.top_k, QWEN.hidden, m.expert_ffn
    plain = elementwise_bytes(QWEN, True, 1.0, 1, "fp4", "decode")
    fused = elementwise_bytes(QWEN, True, 1.0, 1, "fp4", "decode", fused_moe_quant=True)
    saved = (k * d + k * f) * (2.0 - 0.5) + (k * d + k * f) * QUANT_BYTES["decode"]
    assert plain - fused == pytest.approx(saved, rel=1e-12)
    assert elementwise_bytes(QWEN, True, 1.0, 1, "bf16", "decode", fused_moe_quant=True) == \
        elementwise_bytes(QWEN, True, 1.0, 1, "bf16", "decode")
    # expert TP: the group's copies, etp times per owned token
    p8 = elementwise_bytes(QWEN, True, 1.0, 8, "fp4", "decode", etp=8)
    f8 = elementwise_bytes(QWEN, True, 1.0, 8, "fp4", "decode", etp=8, fused_moe_quant=True)
    assert p8 - f8 == pytest.approx((k * d * 8 + k * f) * (2.0 - 0.5 + QUANT_BYTES["decode"]), rel=1e-12)


@pytest.mark.parametrize("stack,fused", [("trtllm", True), ("trtllm-engine", True), ("vllm", False), ("sglang", False)])
def test_only_tensorrt_llm_serving_runs_the_fused_moe_chain(stack, fused):
    """The layer model applies the fused chain under TensorRT-LLM's stacks in serving phases only."""
    from moesim.step.layer import fuses_moe_quant

    dep = Deployment(hardware=B200, devices=1, dtype="fp4", stack=stack)
    assert fuses_moe_quant(make_setup(QWEN, dep, "decode"), True) is fused
    assert fuses_moe_quant(make_setup(QWEN, dep, "decode"), False) is False
    train = Deployment(hardware=B200, devices=1, dtype="fp8", stack=stack)
    assert fuses_moe_quant(make_setup(QWEN, train, "train"), True) is False
