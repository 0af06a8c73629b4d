"""Expert/dense FFN and attention times: closed forms and orderings."""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.compute.attention import attention_decode_time, attention_prefill_time, causal_keys
from moesim.compute.ffn import dense_ffn_time, expert_ffn_time
from moesim.compute.grouped import grouped_gemm_time
from moesim.errors import SpecError

H800 = load_profile("h800-sxm")
DSV3 = load_model("deepseek-v3")


def test_expert_ffn_sums_parts_and_grows_with_imbalance():
    even = expert_ffn_time(H800, DSV3, [256] * 32, tokens=1024, dtype="fp8")
    assert_allclose(even.total_s, even.router_s + even.gate_up_s + even.activation_s + even.down_s
                    + even.shared_s, rtol=1e-12)
    # gate/up is the grouped GEMM n = 2F = 4096, k = D = 7168 (hand-built here)
    assert_allclose(even.gate_up_s, grouped_gemm_time(H800, [256] * 32, 4096, 7168, "fp8").time_s, rtol=1e-12)
    hot = expert_ffn_time(H800, DSV3, [256 * 16] + [256 * 16 // 31] * 31, tokens=1024, dtype="fp8")
    assert hot.total_s > even.total_s


def test_dense_ffn_tp_split():
    one = dense_ffn_time(H800, DSV3, 4096, "fp8", tp=1)
    eight = dense_ffn_time(H800, DSV3, 4096, "fp8", tp=8)
    assert eight.total_s < one.total_s
    with pytest.raises(SpecError):
        dense_ffn_time(H800, DSV3, 4096, "fp8", tp=7)


def test_causal_keys_closed_form():
    assert causal_keys(4, None) == 10  # 1 + 2 + 3 + 4
    assert causal_keys(6, 2) == 3 + 4 * 2  # first two positions 1 + 2, then 2 keys each


def test_decode_attention_reads_mla_latent():
    # 64 sequences x 4096 cached tokens x (512 + 64) latent x 2 bytes
    t = attention_decode_time(H800, DSV3, 64, 4096)
    assert t.core_bytes == 64 * 4096 * 576 * 2
    longer = attention_decode_time(H800, DSV3, 64, 8192)
    assert longer.core_s > t.core_s


def test_prefill_attention_quadratic_flops():
    # MLA prefill: 2 x 128 heads x (192 + 128) FLOPs per query-key pair
    t = attention_prefill_time(H800, DSV3, 1, 4096)
    assert_allclose(t.core_flops, 4096 * 4097 / 2 * 2 * 128 * 320, rtol=1e-12)
    t2 = attention_prefill_time(H800, DSV3, 1, 8192)
    assert t2.core_flops / t.core_flops > 3.9
