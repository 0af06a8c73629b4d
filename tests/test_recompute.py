"""Selective recompute by module (moesim/step/recompute.py): each recomputed module adds its own
forward once per micro-batch, checked against closed forms built from the same layer operations;
the memory model drops what the modules recompute; bad modules are refused naming the field.

Tolerances: rel 1e-9 where the closed form recomputes the step model's own arithmetic (float
rounding only)."""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.cli import run
from moesim.compute.memory import activation_elements_per_token_layer
from moesim.errors import MoesimError, SpecError
from moesim.specs import Deployment
from moesim.specs.hardware import Efficiency
from moesim.step import Training, estimate
from moesim.step.elementwise import memory_bound_s
from moesim.step.layer import layer_ops, make_setup
from moesim.step.recompute import up_projection_shapes
from moesim.step import pricing

B200 = load_profile("b200")
QWEN = load_model("qwen3-30b-a3b")   # 48 MoE layers, GQA
DSV3 = load_model("deepseek-v3")     # MLA, 3 dense + 58 MoE layers
WORK = Training(256, 4096, 1)        # 8 devices, dp 8: m = 32 micro-batches of 4096 tokens


def _dep(model=QWEN, **kw) -> Deployment:
    return Deployment(hardware=B200, devices=8, dp=8, ep=8, stack="megatron", **kw)


def _step(dep: Deployment, model=QWEN) -> float:
    return float(estimate(model, dep, WORK, check_memory=False).step_time_s[0])


def _ops(dep: Deployment, model=QWEN, layer: int = 0):
    setup = make_setup(model, dep, "train")
    return setup, layer_ops(setup, layer, 4096.0, (4096 + 1) / 2)   # training.py ctx_N: the causal mean


def test_default_selective_recomputes_the_attention_core_once_per_micro_batch():
    """Megatron-Core's default recompute_modules is ["core_attn"]: the step grows by m x layers x
    the forward attention core, nothing else (one pipeline stage, no overlap)."""
    none, sel = _dep(), _dep(recompute="selective")
    _, op = _ops(none)
    assert_allclose(_step(sel) - _step(none), 32 * QWEN.num_layers * op.attention_core_s, rtol=1e-9)
    assert _step(_dep(recompute="selective", recompute_modules=["core_attn"])) == _step(sel)


def test_layernorm_and_moe_act_are_memory_bound_passes():
    """layernorm: two RMSNorms, read + write D each (4 D x 2 B per token); moe_act: the routed
    experts' gated activation, read 2F + write F per copy; both at the memory-bound bandwidth and
    the stack's device fraction."""
    none = _dep()
    setup, _ = _ops(none)
    f, d, m = setup.device_fraction, QWEN.hidden, QWEN.moe
    norms = memory_bound_s(B200, 4096 * 4 * d * 2.0) / f
    act = memory_bound_s(B200, 4096 * 3 * m.top_k * m.expert_ffn * 2.0) / f
    for modules, per_layer in ((["layernorm"], norms), (["moe_act"], act), (["layernorm", "moe_act"], norms + act)):
        dep = _dep(recompute="selective", recompute_modules=modules)
        assert_allclose(_step(dep) - _step(none), 32 * QWEN.num_layers * per_layer, rtol=1e-9)


def test_mla_up_projection_recompute_prices_its_two_gemms_and_frees_the_expanded_qkv():
    """mla_up_proj (DeepSeek-V3): q_b (1536 -> 128 x 192) and kv_b (512 -> 128 x 256) again on
    every layer's 4096 rows; memory keeps the latents instead of the up-projected q, k, v."""
    assert up_projection_shapes(DSV3, 1) == [(128 * 192, 1536), (128 * 256, 512)]
    assert up_projection_shapes(QWEN, 1) == []          # no MLA: nothing to recompute
    # NOTE: priced at the generic prior GEMM rate, where the critical stage is a 16-layer one both
    # times and the closed form below holds to 1e-6. At b200's fitted rate (0.66) the LM head's
    # GEMM makes the last stage (15 layers + head) critical without the recompute and a 16-layer
    # stage with it: the step is the slowest stage, so it grows by less (checked at the end).
    hw = B200.with_efficiency(Efficiency())
    par = dict(hardware=hw, devices=8, pp=4, dp=2, ep=2, stack="megatron")
    none = Deployment(**par)
    up = Deployment(**par, recompute="selective", recompute_modules=["mla_up_proj"])
    setup = make_setup(DSV3, none, "train")
    gemms = sum(pricing.gemm_s(hw, 4096, n, k, setup.projection_dtype) for n, k in up_projection_shapes(DSV3, 1))
    work = Training(64, 4096, 1)                        # m = 32 per pipeline
    t0 = float(estimate(DSV3, none, work, check_memory=False).step_time_s[0])
    t1 = float(estimate(DSV3, up, work, check_memory=False).step_time_s[0])
    # the critical stage holds ceil(61 / 4) = 16 layers (every stage prices the same per layer);
    # the interleaved-1F1B bubble (pp - 1) / vpp x t_max grows with it: (m + pp - 1) micro-batch slots
    per_mb = 16 * gemms / setup.device_fraction
    assert_allclose(t1 - t0, (32 + 3) * per_mb, rtol=1e-6)
    fitted = {k: Deployment(**{**par, "hardware": B200}, **kw) for k, kw in
              (("none", {}), ("up", dict(recompute="selective", recompute_modules=["mla_up_proj"])))}
    crit = {k: estimate(DSV3, d, work, check_memory=False).breakdown() for k, d in fitted.items()}
    assert crit["none"].embedding_head_s > 0 and crit["up"].embedding_head_s == 0
    g_fit = sum(pricing.gemm_s(B200, 4096, n, k, setup.projection_dtype) for n, k in up_projection_shapes(DSV3, 1))
    assert crit["up"].step_time_s - crit["none"].step_time_s < (32 + 3) * 16 * g_fit / setup.device_fraction
    a = DSV3.attention
    saved = (2 * a.num_heads * a.qk_head_dim + a.num_heads * (a.qk_head_dim + a.v_dim)
             - 2 * a.q_lora_rank - 2 * (a.kv_lora_rank + a.qk_rope_head_dim))
    assert_allclose(activation_elements_per_token_layer(DSV3, True, "none")
                    - activation_elements_per_token_layer(DSV3, True, "selective", ("mla_up_proj",)), saved)


def test_dense_mlp_applies_to_dense_layers_and_moe_to_moe_layers():
    """Megatron's "mlp" recomputes a dense MLP submodule (not an MoE layer); "moe" the MoE layer,
    all-to-alls included; "moe" stores only the layer's input."""
    assert _step(_dep(recompute="selective", recompute_modules=["mlp"])) == _step(_dep())  # Qwen3-30B: all MoE
    moe = _step(_dep(recompute="selective", recompute_modules=["moe"]))
    _, op = _ops(_dep())
    assert moe - _step(_dep()) > 32 * QWEN.num_layers * (op.experts_s + op.dispatch_s + op.combine_s)
    assert activation_elements_per_token_layer(QWEN, True, "selective", ("moe",)) < \
        activation_elements_per_token_layer(QWEN, True, "selective", ("moe_act",))


@pytest.mark.parametrize("kw,match", [
    (dict(recompute="none", recompute_modules=["mlp"]), "selective only"),
    (dict(recompute="selective", recompute_modules=["attn"]), "one or more of core_attn"),
    (dict(recompute="selective", recompute_modules=[]), "one or more of"),
])
def test_bad_modules_name_the_field(kw, match):
    with pytest.raises((MoesimError, SpecError, ValueError), match=match):
        _dep(**kw)


def test_spellings_and_cli(capsys):
    """Sources write "up_proj" (the Megatron-Core GB200 guide) for mla_up_proj; the CLI takes a
    comma list and refuses an unknown module with one line naming the field."""
    assert _dep(recompute="selective", recompute_modules="up_proj, moe_act").recompute_modules == \
        ("moe_act", "mla_up_proj")
    args = ["step", "--model", "qwen3-30b-a3b", "--hw", "b200", "--devices", "8", "--ep", "8", "--phase", "train",
            "--global-batch", "256", "--seq-len", "4096", "--recompute", "selective"]
    assert run(args + ["--recompute-modules", "layernorm,moe_act"]) == 0
    capsys.readouterr()
    assert run(args + ["--recompute-modules", "attn"]) == 2
    err = capsys.readouterr().err
    assert "recompute_modules" in err and "core_attn" in err and len(err.strip().splitlines()) == 1


def test_memory_cli_takes_the_modules(capsys):
    """moesim memory: the modules drop their activations (DeepSeek-V3's recipe modules free most
    of the MLA up-projected q, k, v); modules without selective are refused with one line."""
    import json

    base = ["memory", "--model", "deepseek-v3", "--hw", "b200", "--devices", "256", "--pp", "16", "--ep", "8",
            "--mode", "train", "--recompute", "selective", "--json"]
    assert run(base) == 0
    core = json.loads(capsys.readouterr().out)["activation_bytes"]
    assert run(base + ["--recompute-modules", "layernorm,moe_act,mla_up_proj"]) == 0
    mods = json.loads(capsys.readouterr().out)["activation_bytes"]
    assert 0 < mods < 0.6 * core
    assert run(base[:-3] + ["--recompute", "full", "--recompute-modules", "mlp"]) == 2
    assert "selective" in capsys.readouterr().err
