"""The per-stack expert fraction (moesim/specs/software_stack.py ``expert_fraction``): it divides
the routed experts' grouped-GEMM time on top of the device fraction, nothing else; a dense model
never sees it; the megatron stacks share one value, which a fit recovers from dense and MoE rows;
bad values are refused naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from moesim.catalog import load_model, load_profile
from moesim.errors import SpecError
from moesim.specs import Deployment
from moesim.specs.software_stack import PhaseHost
from moesim.step import Training, estimate
from moesim.step.layer import COMPUTE_OP_FIELDS, LayerOps, at_device_fraction, layer_ops, make_setup
from moesim.step.stacks import expert_fraction, fit_params, stack_table

ROOT = Path(__file__).resolve().parents[1]
MIXTRAL = load_model("mixtral-8x7b")
LLAMA405 = load_model("llama3.1-405b")
H100 = load_profile("h100-sxm")


def _xla(device: float, expert: float):
    """The xla stack (no host issue) with explicit device and expert fractions in every phase."""
    s = stack_table().get("xla")
    return s.model_copy(update={p: s.phase(p).model_copy(update={"device_fraction": device,
                                                                 "expert_fraction": expert})
                                for p in ("train", "prefill", "decode")})


def test_expert_fraction_divides_only_the_experts_closed_form():
    # experts / (f e), every other compute field / f, comm unchanged (exact arithmetic)
    op = LayerOps(attention_s=4.0, attention_comm_s=1.0, elementwise_s=0.5, router_s=0.5, dispatch_s=2.0,
                  experts_s=6.0, shared_experts_s=1.0, combine_s=3.0, attention_core_s=2.0)
    scaled = at_device_fraction(op, 0.8, 0.5)
    assert scaled.experts_s == pytest.approx(6.0 / (0.8 * 0.5), rel=1e-12)
    for k in COMPUTE_OP_FIELDS:
        if k != "experts_s":
            assert getattr(scaled, k) == pytest.approx(getattr(op, k) / 0.8, rel=1e-12), k
    assert (scaled.dispatch_s, scaled.combine_s, scaled.attention_comm_s) == (2.0, 3.0, 1.0)
    assert at_device_fraction(op, 1.0, 1.0) is op


def test_layer_ops_of_a_real_moe_layer_see_the_expert_fraction():
    # Mixtral EP8 training layer: expert fraction 0.5 doubles experts_s (rel 1e-12) and leaves
    # every other field as it was (shared experts are dense GEMMs: unchanged)
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, stack=_xla(1.0, 1.0))
    one = layer_ops(make_setup(MIXTRAL, dep, "train"), 0, 4096.0, 2048.0)
    half = layer_ops(make_setup(MIXTRAL, dep.with_(stack=_xla(1.0, 0.5)), "train"), 0, 4096.0, 2048.0)
    assert one.experts_s > 0 and half.experts_s == pytest.approx(2.0 * one.experts_s, rel=1e-12)
    for k in ("attention_s", "elementwise_s", "router_s", "dispatch_s", "combine_s", "shared_experts_s"):
        assert getattr(half, k) == getattr(one, k), k


def test_a_dense_model_never_sees_the_expert_fraction():
    dep = Deployment(hardware=H100, devices=64, tp=8, pp=8, dp=1, stack=_xla(0.7, 1.0))
    work = Training(global_batch=16, seq_len=8192, micro_batch=1)
    one = estimate(LLAMA405, dep, work, check_memory=False).breakdown(0)
    low = estimate(LLAMA405, dep.with_(stack=_xla(0.7, 0.3)), work, check_memory=False).breakdown(0)
    assert low.step_time_s == one.step_time_s


def test_megatron_stacks_share_one_expert_fraction():
    # shipped at 1.0, not fitted (docs/accuracy.md "Dense rows and the expert fraction"); every
    # training phase runs Megatron's experts, so every stack's train phase takes megatron's value
    t = stack_table()
    assert "megatron.train.expert_fraction" not in fit_params(t)
    assert t.value("megatron.train.expert_fraction") == 1.0
    moved = t.with_values({"megatron.train.expert_fraction": 0.42})
    for name in ("megatron-cudagraph", "sglang", "vllm", "trtllm"):
        assert moved.value(f"{name}.train.expert_fraction") == 0.42
    assert moved.value("megatron.prefill.expert_fraction") == 0.42
    # the serving engines' own phases run one grouped / fused kernel: the prior
    for name in ("sglang", "vllm", "trtllm", "trtllm-engine"):
        for phase in ("prefill", "decode"):
            assert expert_fraction(name, phase) == 1.0


def test_fit_recovers_a_planted_expert_fraction_from_dense_and_moe_rows():
    # synthetic rows: two MoE calibration rows and two dense rows, their measurement replaced by the
    # prediction at a planted megatron (host 40 us/op, device fraction 0.7, expert fraction 0.6), with
    # fit_expert set; the joint fit must recover all three (fraction abs 0.03, host rel 10%: the fine
    # grid + bounded Nelder-Mead of 120 evaluations; the dense rows alone pin host and device
    # fraction, so the expert fraction cannot trade against them)
    import dataclasses
    import math
    import tomllib

    from moesim.calibrate import fit_stack_group, stack_log_errors
    from moesim.cases import load_cases
    from moesim.step.stacks import parse_table

    data = tomllib.loads((ROOT / "moesim/data/stacks.toml").read_text())
    data["megatron"]["train"]["fit_expert"] = True
    table = parse_table(data)
    params = ["megatron.train.host_op_us", "megatron.train.device_fraction", "megatron.train.expert_fraction"]
    assert set(params) <= set(fit_params(table))
    moe = ("megatron-bridge-26.02-qwen3-30b-a3b-b200-8gpu-mxfp8", "megatron-core-mixtral8x7b-64xh100-bf16")
    dense = ("megatron-bridge-26.02-llama3.1-70b-h100-sxm-64gpu-fp8", "megatron-bridge-25.11-llama3.1-8b-b200-8gpu-fp8")
    cases = [c for c in load_cases(ROOT / "validation/data/published-calibration.json").cases if c.id in moe]
    cases += [c for c in load_cases(ROOT / "validation/data/published-e2e-training-dense.json").cases if c.id in dense]
    assert len(cases) == 4
    profiles = {c.hardware: load_profile(c.hardware) for c in cases}
    truth = dict(zip(params, (40.0, 0.7, 0.6)))
    logs = stack_log_errors(cases, profiles, table.with_values(truth))
    synthetic = [dataclasses.replace(c, measured=c.measured * math.exp(e)) for c, e in zip(cases, logs)]
    fits = fit_stack_group(params, synthetic, profiles, table, dict(zip(params, (5.0, 1.0, 1.0))),
                           dict(zip(params, ((0.0, 300.0), (0.3, 1.0), (0.3, 1.0)))))
    assert all(fits[p].identified for p in params)
    assert fits[params[0]].value == pytest.approx(40.0, rel=0.10)
    assert fits[params[1]].value == pytest.approx(0.7, abs=0.03)
    assert fits[params[2]].value == pytest.approx(0.6, abs=0.03)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.2])
def test_bad_expert_fraction_is_refused_naming_the_field(bad):
    with pytest.raises((SpecError, ValidationError), match="expert_fraction"):
        PhaseHost(captured="none", expert_fraction=bad, source="test")
    with pytest.raises(SpecError, match="expert_fraction"):
        stack_table().with_values({"megatron.train.expert_fraction": bad})
    with pytest.raises((SpecError, ValidationError), match="fit_expert"):
        PhaseHost(captured="none", expert_fraction="megatron.train", fit_expert=True, source="test")
