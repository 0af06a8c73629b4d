"""FP8 core attention under an FP8 KV cache (moesim/specs/software_stack.py ``fp8_kv_core`` and
``fp8_kv_context``, moesim/step/setup.py ``LayerSetup.core_dtype``): TensorRT-LLM's generation MLA
kernels quantize the query to FP8 and run FP8 MQA on Blackwell; its context attention runs as FP8
FMHA (MLA always, other kinds with quantized projections) on FP8 tensor-core GPUs; elsewhere the
core keeps its precision rule.

Tolerances: the wiring tests compare the same closed form evaluated twice (rel 1e-12); the
step-level test only asserts a direction and an upper bound that follows from the formula."""
from __future__ import annotations

import pytest

from moesim.catalog import load_model, load_profile
from moesim.compute.attention import core_s_per_token_key
from moesim.specs import Deployment
from moesim.step import Decode, estimate
from moesim.step.layer import attention_ops, make_setup
from moesim.step.setup import native_fp4
from moesim.step.stacks import stack_table

DSV3 = load_model("deepseek-v3")
QWEN = load_model("qwen3-235b-a22b")
B200 = load_profile("b200")
H200 = load_profile("h200-sxm")


def _dep(hw=B200, stack="trtllm", kv="fp8", **kw):
    return Deployment(hardware=hw, devices=4, dp=4, ep=4, attention_layout="dp", dtype="fp4" if native_fp4(hw) else "fp8",
                      kv_dtype=kv, stack=stack, **kw)


def _without_fp8_core():
    """The trtllm stack with fp8_kv_core switched off in decode (everything else as shipped)."""
    s = stack_table().get("trtllm")
    return s.model_copy(update={"decode": s.decode.model_copy(update={"fp8_kv_core": "none"})})


def test_the_shipped_trtllm_decode_runs_mla_in_fp8_on_blackwell_only():
    assert stack_table().get("trtllm").decode.fp8_kv_core == "mla"
    assert make_setup(DSV3, _dep(), "decode").core_dtype == "fp8"
    # not on Hopper (no source for its kernels), not with a BF16 cache, not for GQA, not for
    # engines that dequantize the cache (vLLM), not when the run states its own
    assert make_setup(DSV3, _dep(hw=H200), "decode").core_dtype is None
    assert make_setup(DSV3, _dep(kv="bf16"), "decode").core_dtype is None
    assert make_setup(QWEN, _dep(), "decode").core_dtype is None
    assert make_setup(DSV3, _dep(stack="vllm"), "decode").core_dtype is None
    assert make_setup(DSV3, _dep(attention_dtype="bf16"), "decode").core_dtype == "bf16"
    assert make_setup(DSV3, _dep(stack=_without_fp8_core()), "decode").core_dtype is None


def test_the_core_attention_of_a_layer_is_priced_at_the_fp8_peak():
    # attention_ops' core part is the per-key slope x tokens x keys: at core_dtype fp8 here
    setup = make_setup(DSV3, _dep(), "decode")
    tokens, ctx = 384.0, 1500.0
    core = attention_ops(setup, tokens, ctx, 3)[2]
    slope = core_s_per_token_key(B200, DSV3, phase="decode", tp=1, dtype=setup.projection_dtype, kv_dtype="fp8",
                                 core_dtype="fp8", device_fraction=setup.device_fraction)
    assert core == pytest.approx(slope * tokens * ctx, rel=1e-12)
    # the same slope at bf16: the compute branch halves (B200 fp8 peak = 2 x bf16), floored by the KV stream
    bf16 = core_s_per_token_key(B200, DSV3, phase="decode", tp=1, dtype=setup.projection_dtype, kv_dtype="fp8",
                                core_dtype="bf16", device_fraction=setup.device_fraction)
    assert B200.peak_flops("fp8") == pytest.approx(2 * B200.peak_flops("bf16"), rel=1e-12)
    assert bf16 / 2 <= slope < bf16


def _faster_by_at_most_half_the_attention(model, work, without):
    """FP8 core on (shipped) against ``without`` (the rule switched off): only the core's compute
    branch changes, and it at most halves (B200 fp8 peak = 2 x bf16); the projections, the experts
    and every other term are the same."""
    on = estimate(model, _dep(), work, check_memory=False).breakdown()
    off = estimate(model, _dep(stack=without), work, check_memory=False).breakdown()
    assert on.attention_s < off.attention_s
    assert off.attention_s - on.attention_s <= 0.5 * off.attention_s
    assert on.experts_s == pytest.approx(off.experts_s, rel=1e-12)
    assert on.step_time_s < off.step_time_s


def test_a_decode_step_gets_faster_by_at_most_half_its_core_attention():
    _faster_by_at_most_half_the_attention(DSV3, Decode(384, 1500), _without_fp8_core())


def _without_fp8_context():
    """The trtllm stack with fp8_kv_context switched off in prefill (everything else as shipped)."""
    s = stack_table().get("trtllm")
    return s.model_copy(update={"prefill": s.prefill.model_copy(update={"fp8_kv_context": False})})


def test_the_shipped_trtllm_context_attention_runs_in_fp8_under_an_fp8_cache():
    assert stack_table().get("trtllm").prefill.fp8_kv_context is True
    # MLA: on Blackwell and Hopper alike (mFP8ContextMLA: sm 90 / 100 / 103 / 120)
    assert make_setup(DSV3, _dep(), "prefill").core_dtype == "fp8"
    assert make_setup(DSV3, _dep(hw=H200), "prefill").core_dtype == "fp8"
    # GQA with quantized projections (the FP8 / NVFP4 attention output): fp8
    assert make_setup(QWEN, _dep(), "prefill").core_dtype == "fp8"
    assert make_setup(QWEN, _dep(hw=H200), "prefill").core_dtype == "fp8"
    # GQA whose projections stay bf16 (gpt-oss ships only its experts quantized; a stated bf16
    # attention): no FP8 output is asked for, so the core keeps its rule
    gpt_oss = load_model("gpt-oss-120b")
    assert make_setup(gpt_oss, _dep(), "prefill").projection_dtype == "bf16"
    assert make_setup(gpt_oss, _dep(), "prefill").core_dtype is None
    # not with a BF16 cache, not on a GPU without FP8 tensor cores, not for other stacks, not when
    # switched off, and a stated attention_dtype wins
    assert make_setup(DSV3, _dep(kv="bf16"), "prefill").core_dtype is None
    a100 = load_profile("a100-sxm-80gb")
    assert "fp8" not in a100.compute.peak_dense_tflops
    assert make_setup(DSV3, Deployment(hardware=a100, devices=4, dp=4, ep=4, attention_layout="dp", dtype="bf16",
                                       kv_dtype="fp8", stack="trtllm"), "prefill").core_dtype is None
    assert make_setup(DSV3, _dep(stack="vllm"), "prefill").core_dtype is None
    assert make_setup(DSV3, _dep(stack="sglang"), "prefill").core_dtype is None
    assert make_setup(DSV3, _dep(stack=_without_fp8_context()), "prefill").core_dtype is None
    assert make_setup(DSV3, _dep(attention_dtype="bf16"), "prefill").core_dtype == "bf16"
    # the TensorRT engines trtllm-bench builds for an FP8 checkpoint (FP8 cache, FP8 context FMHA)
    assert stack_table().get("trtllm-engine").prefill.fp8_kv_context is True
    mixtral = load_model("mixtral-8x7b")
    h100 = load_profile("h100-sxm")
    engine = Deployment(hardware=h100, devices=2, tp=2, ep=1, dtype="fp8", kv_dtype="fp8", stack="trtllm-engine")
    assert make_setup(mixtral, engine, "prefill").core_dtype == "fp8"
    assert make_setup(mixtral, engine, "decode").core_dtype is None


@pytest.mark.parametrize("model", [DSV3, QWEN])
def test_a_prefill_gets_faster_by_at_most_half_its_core_attention(model):
    from moesim.step import Prefill

    # a long prompt: the causal core is a large share of the step
    _faster_by_at_most_half_the_attention(model, Prefill(32768, 1), _without_fp8_context())


def test_moesim_step_says_when_the_core_attention_runs_in_fp8(capsys):
    import json

    from moesim.cli import run

    args = ["step", "--model", "qwen3-30b-a3b", "--hw", "b200", "--devices", "1", "--phase", "prefill",
            "--prompt-len", "4096", "--prompts-per-device", "1", "--dtype", "fp4", "--kv-dtype", "fp8"]
    assert run([*args, "--stack", "trtllm"]) == 0
    assert "attention core       fp8: the stack's context attention kernels under the fp8 KV cache" in capsys.readouterr().out
    assert run([*args, "--stack", "trtllm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention_core_dtype"] == "fp8"
    # an engine that keeps the core in bf16, and a stated attention dtype: no such line
    for extra in (["--stack", "sglang"], ["--stack", "trtllm", "--attention-dtype", "bf16"]):
        assert run([*args, *extra]) == 0
        assert "attention core" not in capsys.readouterr().out
