"""Training communication outside the layers (moesim/step/train_comm.py): data-parallel groups
placed as Megatron orders ranks, FSDP per-layer collectives, pipeline P2P; and the two new
Deployment fields (sharding, attention_dtype) through the step and the case path.

Closed forms are the alpha-beta ring of moesim/comm/collectives.py written out by hand; they
use the same achievable bandwidths, so they must agree to rounding (rtol 1e-9)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.compute.attention import attention_block_s, core_s_per_token_key, kernel_keys_per_query
from moesim.compute.memory import stage_params
from moesim.specs import Deployment
from moesim.step import Training, estimate, train_comm
from moesim.step.layer import layer_ops, make_setup
from moesim.step.training import _p2p_mb
from moesim.validate import CaseInputs

TIGHT = 1e-9  # same formula, same inputs: only float rounding differs


def _nic(hw):
    eff = hw.efficiency.comm
    return hw.scale_out.bandwidth_Bps * eff.scale_out_bandwidth_fraction, eff.scale_out_latency_us * 1e-6


def test_expert_dp_group_of_ep8_on_8gpu_nodes_runs_over_the_nics():
    """EP 8 fills an 8-GPU node, so the expert-DP group (stride etp x ep = 8) has one member per
    node: a flat ring over the NICs, (n - 1) / n x bytes / B_nic + (n - 1) alpha_nic."""
    hw = load_profile("b200")
    dep = Deployment(hardware=hw, devices=64, dp=64, ep=8)
    nbytes = 1e9
    bw, alpha = _nic(hw)
    want = 7 / 8 * nbytes / bw + 7 * alpha
    assert_allclose(train_comm.group_collective_s(dep, "reduce_scatter", nbytes, 8, 8), want, rtol=TIGHT)


def test_dense_dp_group_of_stride_one_is_the_hierarchical_ring():
    """Stride 1 (tp = 1): 8 members per 8-GPU node, the hierarchical collective of the
    consecutive-rank topology (the behaviour before groups were placed), at the algorithm the
    step model prices every collective with (``auto``)."""
    from moesim.comm.collectives import collective_time
    from moesim.comm.topology import build_topology

    hw = load_profile("h100-sxm")
    dep = Deployment(hardware=hw, devices=64, dp=64, ep=8)
    want = collective_time(build_topology(hw, 64, 8), "all_gather", 2e9, 64, algorithm="auto").time_s
    assert_allclose(train_comm.group_collective_s(dep, "all_gather", 2e9, 64, 1), want, rtol=TIGHT)


def test_dp_collectives_sum_the_dense_and_expert_groups():
    hw = load_profile("b200")
    model = load_model("gpt-oss-120b")
    dep = Deployment(hardware=hw, devices=64, dp=64, ep=8)
    base, experts = stage_params(model, dep.parallelism)[0]
    c = train_comm.dp_collectives(dep, base, experts)
    bw, alpha = _nic(hw)
    expert_rs = 7 / 8 * experts * 2.0 / bw + 7 * alpha  # bf16 gradients, one member per node
    dense_rs = train_comm.group_collective_s(dep, "reduce_scatter", base * 2.0, 64, 1)
    assert_allclose(c.reduce_scatter_s, expert_rs + dense_rs, rtol=TIGHT)


def test_p2p_transfer_over_the_nic_when_stages_sit_in_different_nodes():
    """PP 2 on 16 GPUs (dp 8): adjacent stages are 8 ranks apart, one node each: latency +
    mb x seq x hidden x 2 B / B_nic."""
    hw = load_profile("h100-sxm")
    dep = Deployment(hardware=hw, devices=16, dp=8, pp=2, ep=8, vpp=24)
    bw, alpha = _nic(hw)
    tokens, hidden = 2 * 4096, 2048
    assert_allclose(train_comm.p2p_transfer_s(dep, tokens, hidden), alpha + tokens * hidden * 2.0 / bw, rtol=TIGHT)


def test_p2p_transfer_over_nvlink_when_the_pipeline_fits_one_domain():
    hw = load_profile("h100-sxm")
    dep = Deployment(hardware=hw, devices=8, dp=2, pp=4)
    eff = hw.efficiency.comm
    bw, alpha = hw.scale_up.bandwidth_Bps * eff.scale_up_bandwidth_fraction, eff.scale_up_latency_us * 1e-6
    assert_allclose(train_comm.p2p_transfer_s(dep, 4096, 4096), alpha + 4096 * 4096 * 2.0 / bw, rtol=TIGHT)


def test_p2p_exposure_blocking_without_interleaving_hidden_behind_a_chunk_with_it():
    """vpp 1: 2 transfers per micro-batch, exposed in full; vpp v: each of the 2v transfers
    exposed only past one chunk (F / v or B / v) of compute."""
    model = load_model("qwen3-30b-a3b")
    hw = load_profile("h100-sxm")
    tokens = np.array([8192.0])
    plain = Deployment(hardware=hw, devices=16, dp=8, pp=2, ep=8)
    t = train_comm.p2p_transfer_s(plain, 8192.0, model.hidden)
    assert_allclose(_p2p_mb(model, plain, tokens, 1.0, 2.0), [2 * t], rtol=TIGHT)
    inter = plain.with_(vpp=4)
    assert_allclose(_p2p_mb(model, inter, tokens, 1.0, 2.0), [0.0], atol=0)  # chunks of 0.25 s >> t
    f, b = 4 * t / 2, 4 * t / 4  # chunks of t / 2 and t / 4: exposed t / 2 and 3 t / 4 per chunk
    assert_allclose(_p2p_mb(model, inter, tokens, f, b), [4 * (t / 2 + 3 * t / 4)], rtol=TIGHT)


def test_fsdp_exposure_closed_form():
    """max(0, comm - compute) + comm / layers (the first layer's gather is never hidden)."""
    assert_allclose(train_comm.fsdp_exposed_s(3.0, 1.0, 10), 2.0 + 0.3, rtol=TIGHT)
    assert_allclose(train_comm.fsdp_exposed_s(1.0, 3.0, 10), 0.1, rtol=TIGHT)


def _train(dep, model, mb=2, gbs=None):
    gbs = gbs or mb * dep.dp
    return estimate(model, dep, Training(gbs, 4096, mb), check_memory=False).breakdown(0)


def test_fsdp_step_prices_per_layer_collectives_and_shards_memory():
    """TPU v6e-256 Mixtral 8x7B with FSDP over all chips: no per-step DP collective, the
    per-micro-batch collectives in dp_comm_s, and the weights/grads/optimizer sharded (per-chip
    memory a small fraction of the zero1 footprint)."""
    model = load_model("mixtral-8x7b")
    hw = load_profile("tpu-v6e")
    z1 = Deployment(hardware=hw, devices=256, dp=256, recompute="full")
    fs = z1.with_(sharding="fsdp")
    a, b = _train(z1, model, mb=4), _train(fs, model, mb=4)
    assert b.memory_GiB < 0.25 * a.memory_GiB
    base, experts = stage_params(model, fs.parallelism)[0]
    c = train_comm.dp_collectives(fs, base, experts)
    assert b.dp_comm_s >= (c.all_gather_s * 2 + c.reduce_scatter_s) / model.num_layers * (1 - 1e-9)
    assert fs.data_sharding == "fsdp" and z1.data_sharding == "zero1"
    assert z1.with_(distributed_optimizer=False).data_sharding == "ddp"


def test_sharding_and_attention_dtype_are_validated():
    hw = load_profile("h100-sxm")
    with pytest.raises(ValueError, match="sharding"):
        Deployment(hardware=hw, devices=8, dp=8, sharding="zero9")
    with pytest.raises(ValueError, match="attention_dtype"):
        Deployment(hardware=hw, devices=8, dp=8, attention_dtype="int3")


def test_attention_dtype_prices_projections_and_core_at_their_own_dtype():
    """A BF16-attention, FP8-GEMM deployment: the layer's attention equals attention_block_s with
    bf16 projections and a bf16 core; an FP8 core's per-key slope is F_key / (P_fp8 a_c)."""
    model = load_model("deepseek-v3")
    hw = load_profile("gb200")
    dep = Deployment(hardware=hw, devices=8, dp=8, ep=8, attention_layout="dp", dtype="fp8", attention_dtype="bf16")
    setup = make_setup(model, dep, "prefill")
    ops = layer_ops(setup, 5, 2000.0, 1000.5)
    keys = kernel_keys_per_query(model, 5, 1000.5, "prefill")  # 1000.5 + 63.5: whole 128-key tiles
    assert keys == 1064.0
    want = attention_block_s(hw, model, tokens=2000.0, context=keys, phase="prefill", tp=1, dtype="bf16",
                             core_dtype="bf16") / setup.device_fraction  # the stack's achievable fraction
    assert_allclose(ops.attention_s, want, rtol=TIGHT)
    from moesim.compute.counts import attention_context_flops_per_key

    per_key = attention_context_flops_per_key(model)
    a_c = hw.efficiency.compute.attention_compute_fraction
    assert_allclose(core_s_per_token_key(hw, model, phase="prefill", tp=1, core_dtype="fp8"),
                    per_key / (hw.peak_flops("fp8") * a_c), rtol=TIGHT)


def test_cases_price_fsdp_and_attention_dtype_instead_of_flagging_them():
    from moesim.case_inputs import check_training_flags, flag_not_modelled, SERVING_NOT_MODELLED, training_sharding

    inp = CaseInputs({"fsdp": 256, "global_batch": 3072, "micro_batch": 12}, "training")
    assert training_sharding(inp, 256) == "fsdp"
    check_training_flags(inp, 256)
    assert "fsdp" not in inp.ignored()
    odd = CaseInputs({"fsdp": 64}, "training")
    assert training_sharding(odd, 256) == "fsdp" and "fsdp" in odd.ignored()
    assert training_sharding(CaseInputs({"fsdp": 0}, "training"), 8) is None
    assert "attention_dtype" not in SERVING_NOT_MODELLED


def test_published_serving_rows_read_attention_dtype():
    """The SGLang GB200 BF16-attention prefill row: attention_dtype read and honoured (not in
    ignored_inputs), and the row predicts slower than with attention at the GEMM dtype."""
    from pathlib import Path

    from moesim.cases import load_cases
    from moesim.validate import predict_case

    path = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-e2e-serving.json"
    row = "sglang-gb200-part2-prefill-ep8-bf16-attention-fp8-moe-in2000"
    case = next(c for c in load_cases(path).cases if c.id == row)
    hw = load_profile(case.hardware)
    p = predict_case(case, hw)
    assert p.status == "ok" and "attention_dtype" not in dict(p.ignored_inputs)
    plain = replace(case, inputs={k: v for k, v in case.inputs.items() if k != "attention_dtype"})
    assert predict_case(plain, hw).predicted > p.predicted


def test_kernel_keys_per_query_counts_whole_tiles():
    """GPT-OSS (window 128, 128-key tiles): 256 keys per query on sliding layers (two tiles),
    S(S+1)/2 / S + 63.5 on full layers; decode reads min(context, window) keys."""
    model = load_model("gpt-oss-120b")
    assert model.layer_is_windowed(0) and not model.layer_is_windowed(1)
    ctx = (4096 + 1) / 2
    assert kernel_keys_per_query(model, 0, ctx, "train") == 256.0
    assert kernel_keys_per_query(model, 1, ctx, "train") == ctx + 63.5
    assert kernel_keys_per_query(model, 0, 1000.0, "decode") == 128
    assert kernel_keys_per_query(model, 0, 10.0, "prefill") == 10.0 + 63.5  # shorter than the window


def test_fsdp_micro_batch_closed_form_on_a_tpu_torus():
    """Mixtral 8x7B FSDP over a v6e-256 2D torus: all-gather / reduce-scatter of the bf16
    parameters = (n - 1) / n x bytes / (2 x dims x link x eff) + (n - 1) alpha per buffer, and one
    micro-batch exposes max(0, AG - F) + AG / L + max(0, AG + RS - B) + (AG + RS) / L."""
    from moesim.step.training import _fsdp_mb

    model = load_model("mixtral-8x7b")
    hw = load_profile("tpu-v6e")
    dep = Deployment(hardware=hw, devices=256, dp=256, sharding="fsdp")
    base, experts = stage_params(model, dep.parallelism)[0]
    eff = hw.efficiency.comm
    bw = 2 * hw.ici.torus_dims * hw.ici.link_bandwidth_per_direction_GBps * 1e9 * eff.scale_up_bandwidth_fraction
    n, alpha = 256, eff.scale_up_latency_us * 1e-6
    ag = (n - 1) / n * (base + experts) * 2.0 / bw + 2 * (n - 1) * alpha  # dense and expert buffers: 2 rings
    L, f, b = model.num_layers, 0.5 * ag, 4.0 * ag
    want = (ag - f) + ag / L + 0.0 + 2 * ag / L  # the backward (4 AG) hides AG + RS = 2 AG
    assert_allclose(_fsdp_mb(model, dep, f, b, L), want, rtol=1e-9)
