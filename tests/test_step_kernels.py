"""Device floor of a training layer's non-GEMM kernels (moesim/step/kernels.py) and the
Megatron all-to-all dispatcher's expert sort (moesim/step/elementwise.py ``sort_chunks``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.catalog import load_model, load_profile
from moesim.specs import Deployment
from moesim.step.elementwise import elementwise_bytes, memory_bound_s
from moesim.step.kernels import (ATTENTION_EXTRA_KERNELS, NON_GEMM_KERNELS, SDPA_MATH_LAUNCHES, kernel_floor_s,
                                 non_gemm_kernels)
from moesim.step.layer import layer_ops, make_setup, sorts_chunks
from moesim.step.training import backward_ops

OP_FILE = Path(__file__).resolve().parents[1] / "validation" / "data" / "op-counts.json"
H100 = load_profile("h100-sxm")
MIXTRAL = load_model("mixtral-8x7b")
DSV3 = load_model("deepseek-v3")
QWEN30 = load_model("qwen3-30b-a3b")


def _non_gemm(detail: dict, p: str) -> int:
    ops = detail[f"{p}_ops"]
    return detail[p] - ops.get("mm", 0) - ops.get("_grouped_mm", 0) - SDPA_MATH_LAUNCHES[p]


def test_non_gemm_literal_is_the_measured_file():
    # provenance: launches - mm - _grouped_mm - SDPA math, from validation/data/op-counts.json (exact)
    d = json.loads(OP_FILE.read_text())["detail"]
    for p in ("forward", "backward"):
        assert NON_GEMM_KERNELS["dense"][p] == _non_gemm(d["dense"], p)
        assert NON_GEMM_KERNELS["moe"][p] == _non_gemm(d["moe_grouped_mm"], p)
        assert NON_GEMM_KERNELS["shared_experts"][p] == (_non_gemm(d["moe_grouped_mm"], p)
                                                         - _non_gemm(d["moe_grouped_mm_no_shared"], p))
        for key, pre in (("mla", "mla"), ("mla_no_q_lora", "mla_no_q_lora")):
            extra = ATTENTION_EXTRA_KERNELS[key][p]
            assert _non_gemm(d[f"{pre}_dense"], p) == NON_GEMM_KERNELS["dense"][p] + extra
            assert _non_gemm(d[f"{pre}_moe_grouped_mm"], p) == NON_GEMM_KERNELS["moe"][p] + extra


def test_sdpa_math_launches_reproduce_with_torch():
    # second engine: count F.scaled_dot_product_attention(causal) with the same counter (exact)
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from validation.count_ops import OpCounter

    q, k, v = (torch.randn(4, 64, 16, requires_grad=True) for _ in range(3))
    with OpCounter() as fwd:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(o)
    with OpCounter() as bwd:
        o.backward(grad)
    assert (fwd.launches(), bwd.launches()) == (SDPA_MATH_LAUNCHES["forward"], SDPA_MATH_LAUNCHES["backward"])


def test_non_gemm_kernels_hand_cases():
    # Mixtral (GQA, no shared expert): 66 - 3 forward, 71 - 5 backward (op-counts.json)
    assert non_gemm_kernels(MIXTRAL, moe=True, backward=False) == 63
    assert non_gemm_kernels(MIXTRAL, moe=True, backward=True) == 66
    # DeepSeek-V3 (MLA with q compression, one shared expert): the measured MLA MoE layer, 88 / 108
    assert non_gemm_kernels(DSV3, moe=True, backward=False) == 88
    assert non_gemm_kernels(DSV3, moe=True, backward=True) == 108
    assert non_gemm_kernels(DSV3, moe=False, backward=False) == 19 + 22


def test_kernel_floor_is_count_times_kernel_overhead_in_training_on_gpus():
    # closed form: 63 kernels x the profile's fitted 1.477 us (rtol 1e-12: float arithmetic)
    us = H100.efficiency.compute.kernel_overhead_us * 1e-6
    assert kernel_floor_s(H100, MIXTRAL, True, "train") == pytest.approx(63 * us, rel=1e-12)
    assert kernel_floor_s(H100, MIXTRAL, True, "train", backward=True) == pytest.approx(66 * us, rel=1e-12)
    assert kernel_floor_s(H100, MIXTRAL, True, "prefill") == 0.0  # serving engines: fused kernels, not counted
    assert kernel_floor_s(H100, MIXTRAL, True, "decode") == 0.0
    assert kernel_floor_s(load_profile("tpu-v6e"), MIXTRAL, True, "train") == 0.0  # XLA fusions


def _setup(model, ep: int, phase: str = "train"):
    dep = Deployment(hardware=H100, devices=8, devices_per_domain=8, ep=ep, dp=8, dtype="bf16")
    return make_setup(model, dep, phase, "balanced")


def test_layer_elementwise_carries_the_floor_and_backward_its_own_count():
    # elementwise_s = (bytes / bandwidth + forward floor) / f; backward: (2 x bytes part + backward
    # floor) / f, f the stack's achievable device fraction (moesim/step/layer.py at_device_fraction)
    setup = _setup(QWEN30, ep=8)
    f = setup.device_fraction
    op = layer_ops(setup, 0, 4096.0, 2048.5)
    us = H100.efficiency.compute.kernel_overhead_us * 1e-6
    assert op.kernel_floor_s == pytest.approx(63 * us / f, rel=1e-12)
    streamed = memory_bound_s(H100, elementwise_bytes(QWEN30, True, 4096.0, 1, "bf16", "train", sort_chunks=True))
    assert op.elementwise_s == pytest.approx((streamed + 63 * us) / f, rel=1e-12)
    back = backward_ops(op)
    assert back.elementwise_s == pytest.approx((2 * streamed + 66 * us) / f, rel=1e-12)
    assert back.kernel_floor_s == pytest.approx(66 * us / f, rel=1e-12)


def test_sort_chunks_adds_four_k_d_per_token():
    # Permutation 2 and its inverse: read + write k D twice, 2-byte activations (hand)
    k, d = QWEN30.moe.top_k, QWEN30.hidden
    extra = (elementwise_bytes(QWEN30, True, 10.0, 1, "bf16", "train", sort_chunks=True)
             - elementwise_bytes(QWEN30, True, 10.0, 1, "bf16", "train"))
    assert extra == pytest.approx(10 * 4 * k * d * 2.0, rel=1e-12)


def test_sort_chunks_only_with_megatron_all_to_all_and_several_local_experts():
    assert sorts_chunks(_setup(QWEN30, ep=8), True)  # 128 experts / 8 ranks = 16 local experts
    assert not sorts_chunks(_setup(QWEN30, ep=8), False)  # dense layer
    assert not sorts_chunks(_setup(MIXTRAL, ep=8), True)  # one local expert: Megatron skips the sort
    assert not sorts_chunks(_setup(QWEN30, ep=1), True)  # no all-to-all
    assert not sorts_chunks(_setup(QWEN30, ep=8, phase="prefill"), True)  # serving dispatchers
