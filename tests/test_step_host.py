"""Host issue time (measured op counts), FP8 quantization traffic, the training critical stage,
and the step model's use of moesim.compute.attention."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.catalog import load_model, load_profile
from moesim.compute.attention import attention_block_s, attention_prefill_time
from moesim.step.elementwise import gemm_input_elements
from moesim.step.host import (ATTENTION_EXTRA_OPS, OP_COUNTS, PRE_SYNC_OP_COUNTS, attention_variant,
                               dispatch_syncs_host, layer_host_pre_s, layer_host_s, layer_op_count)
from moesim.specs import Deployment
from moesim.step.layer import LayerOps, layer_ops, make_setup, stack_time
from moesim.step.schedule import serial_time, two_microbatch_time
from moesim.step.stacks import stack_table

OP_FILE = Path(__file__).resolve().parents[1] / "validation" / "data" / "op-counts.json"
H100 = load_profile("h100-sxm")
MIXTRAL = load_model("mixtral-8x7b")
DSV3 = load_model("deepseek-v3")
DSV2_LITE = load_model("deepseek-v2-lite")


def _eager(host_us: float):
    """The ``eager`` stack (every phase eager) at ``host_us`` per operator."""
    return stack_table().with_values({"megatron.train.host_op_us": host_us}).inline("eager", "train")


def _sglang(host_us: float):
    """The ``sglang`` stack (eager prefill at ``host_us``, CUDA-graph decode)."""
    return stack_table().with_values({"sglang.prefill.host_op_us": host_us}).inline("sglang", "prefill")


def test_op_counts_literal_is_the_measured_file():
    # provenance: the library's literal must equal what validation/count_ops.py measured
    data = json.loads(OP_FILE.read_text())
    assert "TorchDispatchMode" in data["method"] and data["torch_version"]
    assert OP_COUNTS["dense"] == data["dense_layer"]
    moe = data["moe_layer"]
    assert OP_COUNTS["moe"] == {"forward": moe["forward"], "backward": moe["backward"]}
    assert OP_COUNTS["shared_experts"] == {"forward": moe["shared_experts_forward"],
                                           "backward": moe["shared_experts_backward"]}


def test_mla_and_pre_sync_counts_literal_is_the_measured_file():
    # provenance: MLA's extra operators and the pre-sync counts equal what count_ops measured
    data = json.loads(OP_FILE.read_text())
    assert PRE_SYNC_OP_COUNTS == data["pre_sync"]
    assert ATTENTION_EXTRA_OPS["gqa"] == {"forward": 0, "backward": 0}
    for key in ("mla", "mla_no_q_lora"):
        mla = data[key]
        assert ATTENTION_EXTRA_OPS[key] == mla["extra_vs_gqa"]
        # the measured MLA layers are the GQA layers plus the extra, dense and MoE, total and P
        for p in ("forward", "backward"):
            assert mla["dense_layer"][p] == OP_COUNTS["dense"][p] + ATTENTION_EXTRA_OPS[key][p]
            assert mla["moe_layer"][p] == OP_COUNTS["moe"][p] + ATTENTION_EXTRA_OPS[key][p]
            for kind in ("dense", "moe"):
                assert mla["pre_sync"][kind][p] == PRE_SYNC_OP_COUNTS[kind][p] + ATTENTION_EXTRA_OPS[key][p]


def test_mla_op_counts_reproduce_with_torch():
    # second engine: re-count the dense MLA layer (exact), its attention block (the P part)
    pytest.importorskip("torch")
    from validation.count_ops import FFN, HIDDEN, count
    from validation.torch_moe import SwiGLU

    got = count(SwiGLU(HIDDEN, 4 * FFN), "mla")
    extra = ATTENTION_EXTRA_OPS["mla"]
    assert (got["forward"], got["backward"]) == (OP_COUNTS["dense"]["forward"] + extra["forward"],
                                                 OP_COUNTS["dense"]["backward"] + extra["backward"])
    assert (got["attention_forward"], got["attention_backward"]) == (
        PRE_SYNC_OP_COUNTS["dense"]["forward"] + extra["forward"],
        PRE_SYNC_OP_COUNTS["dense"]["backward"] + extra["backward"])


def test_reference_mla_attention_matches_the_equations():
    # the counted MLA layer computes DeepSeek-V2 eqs. 37-47: softmax(q k^T / sqrt(nope + rope)) v
    # with q = [q_C ; RoPE(q_R)], k = [k_C ; RoPE(k_R)], written out here with einsum; fp32 atol 1e-5
    torch = pytest.importorskip("torch")
    from validation import count_ops as co

    torch.manual_seed(1)
    layer = co.MLALayer(torch.nn.Identity())
    T, H, N, R, V = co.TOKENS, co.HEADS, co.MLA_NOPE, co.MLA_ROPE, co.MLA_V
    x = torch.randn(T, co.HIDDEN)

    def norm(z, w):
        return z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def rot(z):  # rotate pair (i, i + R/2) by angle pos x 10000^(-2i/R)
        ang = torch.arange(T).float()[:, None] * 10000.0 ** (-torch.arange(0, R, 2).float() / R)
        c, s = ang.cos(), ang.sin()
        if z.dim() == 3:
            c, s = c[:, None], s[:, None]
        a, b = z[..., : R // 2], z[..., R // 2:]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    q = layer.q_b(norm(layer.q_a(x), layer.q_a_norm)).view(T, H, N + R)
    c_kv, k_r = layer.kv_a(x).split([co.MLA_KV_LORA, R], -1)
    kv = layer.kv_b(norm(c_kv, layer.kv_a_norm)).view(T, H, N + V)
    q = torch.cat([q[..., :N], rot(q[..., N:])], -1)
    k = torch.cat([kv[..., :N], rot(k_r)[:, None].expand(T, H, R)], -1)
    s = torch.einsum("thd,uhd->htu", q, k) / (N + R) ** 0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.einsum("htu,uhv->thv", s.softmax(-1), kv[..., N:]).reshape(T, H * V)
    assert torch.allclose(layer.attend(x), want, atol=1e-5)


def test_op_counts_reproduce_with_torch():
    # second engine: re-count the dense layer with the reference torch layer (exact)
    pytest.importorskip("torch")
    from validation.count_ops import FFN, HIDDEN, count
    from validation.torch_moe import SwiGLU

    got = count(SwiGLU(HIDDEN, 4 * FFN))
    assert (got["forward"], got["backward"]) == (OP_COUNTS["dense"]["forward"], OP_COUNTS["dense"]["backward"])


def test_layer_op_count_hand_cases():
    # Mixtral has no shared experts: 86 - 6 forward, 98 - 11 backward (op-counts.json)
    assert layer_op_count(MIXTRAL, moe=True, backward=False) == 80
    assert layer_op_count(MIXTRAL, moe=True, backward=True) == 87
    # DeepSeek-V3 (MLA with q compression): + 25 forward, + 43 backward (op-counts.json "mla")
    assert attention_variant(DSV3) == "mla" and attention_variant(MIXTRAL) == "gqa"
    assert layer_op_count(DSV3, moe=True, backward=False) == 86 + 25
    assert layer_op_count(DSV3, moe=False, backward=True) == 62 + 43
    # DeepSeek-V2-Lite (q_lora_rank 0): + 18 forward, + 27 backward ("mla_no_q_lora")
    assert attention_variant(DSV2_LITE) == "mla_no_q_lora"
    assert layer_op_count(DSV2_LITE, moe=False, backward=False) == 35 + 18


def test_graph_decode_pays_one_launch_per_step():
    # SGLang replays decode from one CUDA graph per step: 5 us over DeepSeek-V3's 61 layers,
    # whatever the per-operator cost (moesim/data/stacks.toml); exact arithmetic, rel 1e-12
    st = _sglang(100.0)
    assert layer_host_s(H100, DSV3, moe=True, phase="decode", stack=st) == pytest.approx(5e-6 / 61, rel=1e-12)
    assert layer_host_s(H100, DSV3, moe=True, phase="prefill", stack=st) == pytest.approx(111 * 100e-6, rel=1e-12)
    # MLA's extra operators are all attention, before the sync: 62 + 25 forward, 32 + 43 backward
    assert layer_host_pre_s(H100, DSV3, moe=True, phase="prefill", stack=st) == pytest.approx(87 * 100e-6, rel=1e-12)
    assert layer_host_pre_s(H100, DSV3, moe=True, phase="train", backward=True, stack=_eager(100.0)) == pytest.approx(
        75 * 100e-6, rel=1e-12)
    assert layer_host_pre_s(H100, DSV3, moe=True, phase="decode", stack=st) == pytest.approx(5e-6 / 61, rel=1e-12)


def _mixtral_layer(stack, tokens: float) -> LayerOps:
    dep = Deployment(hardware=H100, devices=8, devices_per_domain=8, dp=8, ep=8, dtype="bf16", stack=stack)
    setup = make_setup(MIXTRAL, dep, "prefill", "balanced")
    return layer_ops(setup, 0, tokens, 512.0)


def test_host_bound_small_layer_gpu_bound_large_layer_crossover():
    # Hand derivation: the forward host time of a Mixtral MoE layer is 80 ops x h (62 before the
    # token-count sync: hP, 18 after: hX). One layer alone, host and device starting together,
    # with the sync (moesim/step/schedule.py eqs. 1-2): P ends at max(P, hP); the host waits for
    # it, then issues X while D runs: time = max(P, hP) + max(D + X, hX) + C. Choose h so the
    # layer's GPU time equals its host time at T = 1024 tokens; GPU time grows with T (host time
    # does not), so T = 128 is host-bound in P and T = 8192 GPU-bound everywhere (time = GPU).
    gpu_1024 = _mixtral_layer(_sglang(0.0), 1024).gpu_s
    h_us = gpu_1024 / 80 * 1e6
    hw = _sglang(h_us)
    at = _mixtral_layer(hw, 1024)
    assert at.host_s == pytest.approx(at.gpu_s, rel=1e-9) and at.host_sync
    assert at.host_pre_s == pytest.approx(62 * h_us * 1e-6, rel=1e-12)
    small, large = _mixtral_layer(hw, 128), _mixtral_layer(hw, 8192)
    assert small.pre_s < small.host_pre_s
    hand = small.host_pre_s + max(small.dispatch_s + small.ffn_s, small.host_post_s) + small.combine_s
    assert small.time_s == pytest.approx(hand, rel=1e-12)
    assert large.pre_s > large.host_pre_s and large.dispatch_s + large.ffn_s > large.host_post_s
    assert large.time_s == pytest.approx(large.gpu_s, rel=1e-12)
    # the stack: the host issues the large layer's P (62 h) while the small layer's D X C run,
    # then the large layer is GPU-bound, so the stack takes small.time_s + large.gpu_s
    assert stack_time([small, large], "none")[0] == pytest.approx(small.time_s + large.gpu_s, rel=1e-12)


def test_serial_schedule_sync_hand_worked():
    # Two layers, P = 3, hP = 1, X = 0, hX = 2, D = C = 0 (units). Without the sync the host runs
    # ahead: host 3 per layer = GPU 3 per layer, total max(6, 6) = 6. With it, per layer the host
    # waits for P (3) and only then issues X's operators (2): 2 x (3 + 2) = 10.
    args = ([3, 3], [0, 0], [0, 0], [0, 0])
    assert serial_time(*args, hP_L=1, hX_L=2, sync_L=False) == pytest.approx(6.0, rel=1e-12)
    assert serial_time(*args, hP_L=1, hX_L=2, sync_L=True) == pytest.approx(10.0, rel=1e-12)
    # no host time: the plain sum of P + D + X + C
    assert serial_time([1, 2], [3, 4], [5, 6], [7, 8]) == 36.0


def test_two_microbatch_sync_hand_worked():
    # One layer, P = 2, D = X = C = 1, hP = 0, hX = 3. Without the sync (hand, in host order):
    # P0 0-2, D0 2-3, P1 2-4, D1 4-5; X0 issued 0-3 runs 4-5, C0 5-6; X1 issued 3-6 ends 6,
    # C1 6-7 -> 7. With it the host waits for P0 (2) and P1 (4): X0 issued 4-7 ends 7, C0 7-8,
    # X1 issued 7-10 ends 10, C1 10-11 -> 11.
    one = ([2.0], [1.0], [1.0], [1.0])
    assert two_microbatch_time(*one, hP_L=0.0, hX_L=3.0, sync_L=False) == pytest.approx(7.0, rel=1e-12)
    assert two_microbatch_time(*one, hP_L=0.0, hX_L=3.0, sync_L=True) == pytest.approx(11.0, rel=1e-12)
    # host time 0: exactly the recurrence without a host (P0 0-2, D0 2-3, P1 2-4, D1 4-5, X0 4-5,
    # C0 5-6, X1 5-6, C1 6-7), whatever the sync: the host above was hidden without the sync
    assert two_microbatch_time(*one, sync_L=True) == two_microbatch_time(*one) == 7.0


def test_dispatch_sync_only_where_the_dispatcher_has_it():
    # normal-mode dispatch of an MoE layer with EP in an eager forward pass: sync
    assert dispatch_syncs_host(True, 32, "normal", "prefill") and dispatch_syncs_host(True, 8, "normal", "train")
    # no sync: low-latency kernels (fixed buffers), decode (CUDA graphs), EP 1, dense, backward
    assert not dispatch_syncs_host(True, 32, "low_latency", "prefill")
    assert not dispatch_syncs_host(True, 32, "normal", "decode")
    assert not dispatch_syncs_host(True, 1, "normal", "train")
    assert not dispatch_syncs_host(False, 8, "normal", "train")
    assert not dispatch_syncs_host(True, 8, "normal", "train", backward=True)


def test_pre_sync_op_count_reproduces_with_torch():
    # second engine: in the reference layer's program order the first data-dependent-shape
    # operator (nonzero, a host sync on a GPU) is launch 62 of 86 (exact)
    torch = pytest.importorskip("torch")
    from validation import count_ops as co

    seq = []

    class Seq(co.OpCounter):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seq.append(func.overloadpacket.__name__.rstrip("_"))
            return super().__torch_dispatch__(func, types, args, kwargs)

    cfg = co.MoEConfig(hidden=co.HIDDEN, expert_ffn=co.FFN, num_experts=8, top_k=2,
                       num_shared_experts=1, shared_expert_ffn=co.FFN)
    torch.manual_seed(0)
    layer = co.Layer(co.MoEBlock(cfg, impl="grouped_mm"))
    x = torch.randn(co.TOKENS, co.HIDDEN)
    with Seq():
        layer(x)
    launches = [o for o in seq if o not in co.VIEW_OPS]
    assert len(launches) == OP_COUNTS["moe"]["forward"]
    assert launches.index("nonzero") + 1 == PRE_SYNC_OP_COUNTS["moe"]["forward"]


def test_two_microbatch_floored_by_host_of_both_halves():
    # no sync, host-bound: the host issues 2 micro-batches x 2 layers x 1 ms of P operators; the
    # last P1 is issued at 4 ms, then X0 and X1 (0.1 ms each, no host time) run: 4.2 ms (hand)
    op = LayerOps(attention_s=1e-4, experts_s=1e-4, host_s=1e-3, host_pre_s=1e-3)
    assert stack_time([op, op], "two_microbatch")[0] == pytest.approx(2 * 2 * 1e-3 + 2e-4, rel=1e-12)


def test_fp8_gemm_input_elements_hand_count():
    # Mixtral: D + heads x v_dim + k (D + F) = 4096 + 32 x 128 + 2 (4096 + 14336) (hand)
    assert gemm_input_elements(MIXTRAL, moe=True, tp=1) == 4096 + 32 * 128 + 2 * (4096 + 14336)


def test_training_critical_stage_counts_backward():
    # DeepSeek-V3 on pp 16: fifteen 4-layer stages and a 1-layer stage with the LM head. The
    # head stage has the longer forward (head fwd+bwd counted there) but a 4-layer stage has the
    # longer forward + backward, which is what paces 1F1B.
    # The critical stage is reported through the LM head: its time is counted only when the
    # critical stage is the last one.
    from moesim.step import Training, estimate

    work = Training(128, 4096, 1, "balanced")
    dep = Deployment(hardware=H100, devices=128, devices_per_domain=8, pp=16, dp=8, ep=8, dtype="fp8",
                     stack=_eager(0.0), mtp_layers=0)
    st = estimate(DSV3, dep, work, check_memory=False).breakdown()
    assert st.embedding_head_s == 0.0  # a 4-layer stage paces 1F1B, not the 1-layer head stage
    # with DeepSeek-V3's MTP module trained (the default) the last stage holds 1 layer + the MTP
    # layer + two head passes and paces instead (tests/test_train_mtp.py)
    assert estimate(DSV3, dep.with_(mtp_layers=None), work, check_memory=False).breakdown().embedding_head_s > 0.0
    # 61 one-layer stages: the last carries layer 60 and the head, so it is the slowest
    dep61 = dep.with_(devices=488, pp=61)  # (MTP off, as above)
    last = estimate(DSV3, dep61, work, check_memory=False).breakdown()
    assert last.embedding_head_s > 0.0


def test_attention_block_equals_compute_prefill_core_when_compute_bound():
    # second path: attention_block_s over tokens x mean causal keys = attention_prefill_time
    # (same projections, core FLOPs batch x S (S+1)/2 x per-key); rtol 1e-9
    S, b = 4096, 2
    ref = attention_prefill_time(H100, MIXTRAL, b, S, dtype="bf16")
    got = attention_block_s(H100, MIXTRAL, tokens=b * S, context=(S + 1) / 2, phase="prefill", tp=1, dtype="bf16")
    assert got == pytest.approx(ref.total_s, rel=1e-9)


def test_host_bound_step_names_host_and_components_add_up():
    from moesim.step import Prefill, estimate

    def prefill(stack):
        dep = Deployment(hardware=H100, devices=8, devices_per_domain=8, dp=8, ep=8, attention_layout="dp",
                         dtype="bf16", stack=stack)
        return estimate(MIXTRAL, dep, Prefill(128, 1), check_memory=False).breakdown()

    slow = prefill(_sglang(1000.0))
    # 32 layers x 80 ops x 1 ms of host per 128-token pass: the device waits for the host
    assert slow.bottleneck == "host"
    assert slow.host_issue_s == pytest.approx(32 * 80 * 1e-3, rel=1e-12)
    assert 0 < slow.host_s < slow.host_issue_s
    # overlap none: component times (host = the device's wait for the host) add up to the step
    assert sum(slow.components().values()) == pytest.approx(slow.step_time_s, rel=1e-9)
    fast = prefill(_sglang(0.0))
    assert fast.host_s == 0.0 and fast.bottleneck != "host"
    assert slow.to_dict()["components_s"]["host_s"] == slow.host_s
