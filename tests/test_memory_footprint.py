"""Memory footprint: published weight sizes, KV bytes per token, fit and shortfall, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from numpy.testing import assert_allclose

from moesim import cli, units
from moesim.catalog import load_model, load_profile
from moesim.compute.counts import param_counts
from moesim.compute.memory import kv_bytes_per_token, memory_footprint
from moesim.specs import Parallelism

DSV3 = load_model("deepseek-v3")
H100 = load_profile("h100-sxm")
EP8 = Parallelism(tp=1, dp=8, ep=8, attention_layout="dp")
HAS_H200 = (Path(__file__).resolve().parent.parent / "hwprofiles" / "h200-sxm.toml").is_file()


def test_dsv3_fp8_weights_total_about_671_GB():
    # DeepSeek-V3 ships ~671B parameters in FP8 (1 byte each): ~671 GB (DSV3 README_WEIGHTS).
    assert_allclose(param_counts(DSV3).total * 1.0 / 1e9, 671, rtol=0.03)


def test_dsv3_fp8_does_not_fit_on_8_h100():
    # 8 x 80 GB = 640 GB < 671 GB: with EP 8 each GPU holds 32 of 256 experts of 58 MoE layers
    # (~82 GB) plus the replicated attention/dense/embedding (~17 GB) -> ~99 GB > 80 GB.
    fp = memory_footprint(DSV3, H100, EP8, weight_dtype="fp8")
    assert not fp.fits
    assert fp.shortfall_GiB > 10
    assert "short by" in fp.reason
    assert fp.kv_tokens_fit == 0


@pytest.mark.skipif(not HAS_H200, reason="hwprofiles/h200-sxm.toml not written yet (another developer)")
def test_dsv3_fp8_fits_on_8_h200():
    h200 = load_profile("h200-sxm")
    fp = memory_footprint(DSV3, h200, EP8, weight_dtype="fp8")
    assert fp.fits and fp.shortfall_GiB == 0
    assert fp.kv_tokens_fit > 100_000  # ~40 GB free / 68.6 KiB per token


def test_mla_kv_bytes_per_token_per_layer():
    # MLA caches the latent (kv_lora_rank) and the shared rope key (qk_rope_head_dim):
    # (512 + 64) x 2 bytes (bf16) = 1152 bytes per token per layer; TP does not split it.
    one = kv_bytes_per_token(DSV3, EP8, "bf16", range(1))
    assert one == (512 + 64) * 2
    assert kv_bytes_per_token(DSV3, Parallelism(tp=8), "fp8", range(1)) == 576
    assert kv_bytes_per_token(DSV3, EP8, "bf16") == 61 * 1152


def test_gqa_kv_split_over_tp():
    mixtral = load_model("mixtral-8x7b")  # 8 KV heads x 128: 2 x 8 x 128 x 2 B = 4096 B/layer
    assert kv_bytes_per_token(mixtral, Parallelism(tp=1), "bf16", range(1)) == 4096
    assert kv_bytes_per_token(mixtral, Parallelism(tp=8), "bf16", range(1)) == 512
    # tp 16 > 8 KV heads: each rank still holds one whole head
    assert kv_bytes_per_token(mixtral, Parallelism(tp=16, dp=1), "bf16", range(1)) == 512


def test_training_states_and_recompute_order():
    mixtral = load_model("mixtral-8x7b")
    par = Parallelism(tp=2, dp=4, ep=8, pp=1)
    kwargs = dict(mode="train", weight_dtype="bf16", micro_batch=1, seq_len=4096)
    none = memory_footprint(mixtral, H100, par, recompute="none", **kwargs)
    sel = memory_footprint(mixtral, H100, par, recompute="selective", **kwargs)
    act = memory_footprint(mixtral, H100, par, recompute="selective", recompute_modules=("layernorm", "moe_act"),
                           **kwargs)
    full = memory_footprint(mixtral, H100, par, recompute="full", **kwargs)
    # Megatron's default selective (core_attn) stores what none stores: flash attention keeps no
    # score matrix; layernorm + moe_act drop the norms and the routed activation outputs
    assert none.activation_bytes == sel.activation_bytes > act.activation_bytes > full.activation_bytes > 0
    # gradients: 4 B per local parameter (fp32 main_grad) = 2 x the bf16 weight bytes
    assert_allclose(none.gradient_bytes, 2 * none.weight_bytes, rtol=1e-12)
    # distributed optimizer: 12 B/param sharded -> less than 12 B x local params
    assert none.optimizer_bytes < 6 * none.weight_bytes
    no_dist = memory_footprint(mixtral, H100, par, distributed_optimizer=False, **kwargs)
    assert_allclose(no_dist.optimizer_bytes, 6 * no_dist.weight_bytes, rtol=1e-12)


def test_cli_memory_json(capsys):
    hw = "h200-sxm" if HAS_H200 else "h100-sxm"
    code = cli.run(["memory", "--model", "deepseek-v3", "--hw", hw, "--devices", "8", "--tp", "1",
                    "--ep", "8", "--dtype", "fp8", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is HAS_H200
    assert data["kv_bytes_per_token"] == 61 * 1152


def test_cli_memory_bad_input(capsys):
    assert cli.run(["memory", "--model", "deepseek-v3", "--hw", "h100-sxm", "--devices", "8",
                    "--ep", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error:") and "\n" not in err


def test_sharding_levels_hand_worked():
    """ZeRO levels (arXiv 1910.02054 Fig. 1) on DeepSeek-V3, 512 x tpu-v5p, EP 64, DP 512:
    per-device params (base, experts) from stage_params; dense state shards over dp = 512,
    expert state over expert-dp = 512 / 64 = 8. Hand derivation of each term, rtol 1e-12."""
    from moesim.compute.memory import ADAM_STATE_BYTES, GRAD_BYTES, stage_params
    from moesim.specs import bytes_per_element

    model, hw = load_model("deepseek-v3"), load_profile("tpu-v5p")
    par = Parallelism(dp=512, ep=64)
    (base, experts), = stage_params(model, par)
    wb = bytes_per_element(model.weight_dtype)  # the preset's weight dtype (fp8 for DeepSeek-V3)
    fp = {s: memory_footprint(model, hw, par, mode="train", sharding=s, recompute="full")
          for s in ("ddp", "zero1", "zero2", "zero3", "fsdp")}
    sharded = base / 512 + experts / 8
    assert_allclose(fp["ddp"].optimizer_bytes, ADAM_STATE_BYTES * (base + experts), rtol=1e-12)
    assert_allclose(fp["zero1"].optimizer_bytes, ADAM_STATE_BYTES * sharded, rtol=1e-12)
    assert_allclose(fp["zero1"].gradient_bytes, GRAD_BYTES * (base + experts), rtol=1e-12)
    assert_allclose(fp["zero2"].gradient_bytes, GRAD_BYTES * sharded, rtol=1e-12)
    unit = 2 * (base + experts) / model.num_layers
    assert_allclose(fp["zero3"].weight_bytes, (sharded + unit) * wb, rtol=1e-12)
    assert fp["zero3"].total_bytes == fp["fsdp"].total_bytes
    # the default is the distributed optimizer (zero1), as before
    default = memory_footprint(model, hw, par, mode="train", recompute="full")
    assert default.total_bytes == fp["zero1"].total_bytes
    # FSDP fits a v5p chip (95 GB) where ZeRO-1 needs ~147 GiB
    assert fp["fsdp"].fits and not fp["zero1"].fits
    assert fp["ddp"].total_bytes > fp["zero1"].total_bytes > fp["zero2"].total_bytes > fp["zero3"].total_bytes
