"""Software stacks (moesim/data/stacks.toml): resolution per phase, what each phase pays, host
overlap, the case framework mapping, old profiles, and the per-stack fit."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from moesim.calibrate import fit_stacks, stack_log_errors
from moesim.case_inputs import case_stack
from moesim.cases import load_cases
from moesim.catalog import build, load_model, load_profile
from moesim.specs import Deployment, HardwareProfile
from moesim.specs.software_stack import STACK_NAMES, STACK_VENDORS
from moesim.step.host import OP_COUNTS, PRE_SYNC_OP_COUNTS, host_parts_s, layer_host_s
from moesim.step.layer import LayerOps, stack_time
from moesim.step.schedule import serial_time, two_microbatch_time
from moesim.step.stacks import AUTO, fit_params, parse_table, stack_table
from moesim.validate import CaseInputs

ROOT = Path(__file__).resolve().parents[1]
MIXTRAL = load_model("mixtral-8x7b")
H100 = load_profile("h100-sxm")


def test_every_stack_name_has_a_row_with_a_source():
    t = stack_table()
    assert set(t.stacks) == set(STACK_NAMES) - {"auto"}
    for s in t.stacks.values():
        for phase in ("train", "prefill", "decode"):
            assert s.phase(phase).source
            assert float(t.phase(s.name, phase).host_op_us) >= 0  # references resolve to numbers


def test_auto_resolves_per_phase():
    # documented names other modules rely on: train -> megatron, prefill / decode -> sglang
    assert AUTO == {"train": "megatron", "prefill": "sglang", "decode": "sglang"}
    t = stack_table()
    for phase, name in AUTO.items():
        assert t.phase("auto", phase) == t.phase(name, phase)
    assert t.phase("auto", "train").captured == "none" and t.phase("auto", "decode").captured == "all"
    # serving engines capture decode; vLLM captures prefill piecewise, one graph per layer
    for name in ("sglang", "vllm", "trtllm"):
        assert t.phase(name, "decode").captured == "all"
    assert t.phase("vllm", "prefill").captured == "all" and t.phase("vllm", "prefill").graphs == "layer"
    assert t.phase("trtllm", "prefill").captured == "none"
    assert t.phase("megatron-cudagraph", "train").captured == "pre"
    # maxtext = xla: nothing issued per operator, no launch
    for name in ("xla", "maxtext"):
        assert all(host_parts_s(MIXTRAL, True, p, stack=name) == (0.0, 0.0) for p in ("train", "prefill", "decode"))


def test_deployment_takes_a_stack_name_or_explicit_values():
    d = Deployment(hardware=H100, devices=8, dp=8, ep=8, stack="vllm")
    assert d.stack == "vllm"
    explicit = stack_table().inline("megatron-cudagraph", "train")
    assert d.with_(stack=explicit).stack == explicit
    assert d.with_(stack=explicit).content_key != d.content_key
    again = d.with_(stack=explicit).with_(tp=1)  # dumped and re-validated: the same values
    assert again.stack == explicit and again.content_key == d.with_(stack=explicit).content_key
    with pytest.raises(ValueError, match="stack"):
        Deployment(hardware=H100, devices=8, dp=8, ep=8, stack="jax")


def test_every_named_stack_states_the_vendors_it_runs_on():
    assert set(STACK_VENDORS) == set(STACK_NAMES)
    vendors = {"nvidia", "amd", "google", "cpu"}  # HardwareProfile.vendor
    assert all(vs and set(vs) <= vendors for vs in STACK_VENDORS.values())
    assert set(STACK_VENDORS["auto"]) == vendors  # the production default runs anywhere


@pytest.mark.parametrize("stack, hw, ok", [
    ("trtllm", "tpu-v6e", False), ("trtllm-engine", "mi300x", False), ("vllm-rocm", "b200", False),
    ("sglang-rocm", "h100-sxm", False), ("megatron", "tpu-v5p", False), ("cuda_graphs", "cpu-host", False),
    ("vllm-v0", "mi300x", False),
    ("trtllm", "b200", True), ("vllm-rocm", "mi300x", True), ("maxtext", "tpu-v6e", True), ("xla", "tpu-v5p", True),
    ("auto", "tpu-v6e", True), ("eager", "cpu-host", True), ("sglang", "mi300x", True),
])
def test_a_stack_runs_only_on_its_vendors_hardware(stack, hw, ok):
    prof = load_profile(hw)
    n = min(8, prof.scale_up.max_domain_size)
    make = lambda: Deployment(hardware=prof, devices=n, dp=n, ep=1, stack=stack)  # noqa: E731
    if ok:
        assert make().stack == stack
        return
    with pytest.raises(ValueError) as err:
        make()
    msg = str(err.value)  # names the field, the stack, the hardware and what does run there
    assert "stack" in msg and repr(stack) in msg and hw in msg and prof.vendor in msg and "auto" in msg
    # an explicit SoftwareStack (a user's own numbers) is not checked
    explicit = stack_table().inline("megatron", "train")
    assert Deployment(hardware=prof, devices=n, dp=n, ep=1, stack=explicit).stack == explicit


def test_scenario_refuses_a_stack_one_of_its_hardware_cannot_run():
    from moesim.planner.scenario import scenario_from_dict

    text = (ROOT / "examples" / "plan_deepseek_v3_gpu_tpu.toml").read_text()
    assert 'hardware = ["h100-sxm", "h200-sxm", "b200", "tpu-v5p"]' in text
    with pytest.raises(ValueError, match=r"stack = 'trtllm': does not run on tpu-v5p \(google\)"):
        scenario_from_dict(tomllib.loads(text.replace("max_devices = 512", 'max_devices = 512\nstack = "trtllm"')))
    gpus = text.replace(', "tpu-v5p"]', "]").replace("max_devices = 512", 'max_devices = 512\nstack = "trtllm"')
    assert scenario_from_dict(tomllib.loads(gpus)).stack == "trtllm"


def test_graph_captured_phases_pay_only_per_graph_launch():
    # hand arithmetic from the table (rel 1e-12): launch 5 us per graph
    t = stack_table().with_values({"megatron.train.host_op_us": 40.0, "sglang.prefill.host_op_us": 20.0})
    us = 1e-6
    # one graph per step (sglang decode): 5 us spread over Mixtral's 32 layers, nothing per operator
    pre, post = host_parts_s(MIXTRAL, True, "decode", stack=t.inline("sglang", "decode"))
    assert (pre, post) == (pytest.approx(5 * us / 32, rel=1e-12), 0.0)
    # one piece per layer (vllm prefill)
    assert host_parts_s(MIXTRAL, True, "prefill", stack=t.inline("vllm", "prefill")) == (
        pytest.approx(5 * us, rel=1e-12), 0.0)
    # scoped graphs (megatron-cudagraph): P is one launch, the eager experts pay megatron's rate
    n_pre = PRE_SYNC_OP_COUNTS["moe"]["forward"]
    n_x = OP_COUNTS["moe"]["forward"] - OP_COUNTS["shared_experts"]["forward"] - n_pre  # Mixtral: 80 - 62
    pre, post = host_parts_s(MIXTRAL, True, "train", stack=t.inline("megatron-cudagraph", "train"))
    assert pre == pytest.approx(5 * us, rel=1e-12) and post == pytest.approx(n_x * 40 * us, rel=1e-12)
    # eager: every operator
    assert layer_host_s(None, MIXTRAL, True, "prefill", stack=t.inline("sglang", "prefill")) == pytest.approx(
        80 * 20 * us, rel=1e-12)


def test_host_bound_stream_is_max_of_host_and_device_per_window():
    # 2-layer toy, one P op per layer (D = X = C = 0, no sync), device times g, host times h.
    # Fluid issue (moesim/step/schedule.py eq. 1): layer 1 ends at max(g1, h1), layer 2 at
    # max(t1 + g2, h1 + h2) = max(g1 + g2, h1 + g2, h1 + h2): each window max(host, device),
    # never the sum. Exact (rel 1e-12).
    for g1, g2, h1, h2 in [(3, 1, 1, 4), (1, 1, 5, 0.5), (2, 3, 1, 1), (0.5, 4, 2, 0)]:
        want = max(g1 + g2, h1 + g2, h1 + h2)
        z = [0.0, 0.0]
        assert serial_time([g1, g2], z, z, z, hP_L=[h1, h2]) == pytest.approx(want, rel=1e-12)
        # the same through LayerOps and the stack schedule
        ops = [LayerOps(attention_s=g, host_s=h, host_pre_s=h) for g, h in ((g1, h1), (g2, h2))]
        assert stack_time(ops, "none")[0] == pytest.approx(want, rel=1e-12)
        assert want < g1 + g2 + h1 + h2
    # two micro-batches, compute only (P0 P1 X0 X1 per layer on one stream): host 1 per P op
    # (issued in host order P0 P1 X0 X1) hides behind device 1 per op: 2 layers x 4 = 8 (hand)
    one = ([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0])
    assert two_microbatch_time(*one) == pytest.approx(8.0, rel=1e-12)
    assert two_microbatch_time(*one, hP_L=1.0) == pytest.approx(8.0, rel=1e-12)


@pytest.mark.parametrize("framework, hardware, graphs, want", [
    ("Megatron-Bridge / NeMo 25.11 container performance recipes", "b200", None, "megatron"),
    ("Megatron-Bridge / NeMo 25.11 container performance recipes", "gb200", None, "megatron-cudagraph"),
    ("Megatron-Bridge / NeMo 25.11 container performance recipes", "gb300", False, "megatron"),
    ("Megatron-Core", "h100-sxm", True, "megatron-cudagraph"),
    ("MaxText (JAX/XLA)", "tpu-v6e", None, "maxtext"),
    ("SGLang with PD disaggregation, DP attention, DeepEP", "h100-sxm", None, "sglang"),
    ("vLLM", "gb200", None, "vllm"),
    ("TensorRT-LLM (PyTorch backend), trtllm-bench throughput", "b200", True, "trtllm"),
    ("SGLang", "h100-sxm", False, "eager"),
])
def test_case_framework_maps_to_a_stack(framework, hardware, graphs, want):
    assert case_stack({"framework": framework, "cuda_graphs": graphs}, hardware, "train") == want


def test_unknown_framework_is_auto_with_an_assumption():
    inputs = CaseInputs({"framework": "HAI-LLM (DeepSeek in-house)"}, "training")
    assert case_stack(inputs, "h800-sxm", "train") == "auto"
    assert "auto stack" in inputs.assumed["framework"] and "megatron" in inputs.assumed["framework"]
    assert case_stack({"software": "MCore v0.8, PyTorch 24.04 container"}, "h100-sxm", "train") == "megatron"


def test_framework_is_honoured_not_ignored():
    from moesim.validate import predict_case

    case = next(c for c in load_cases(ROOT / "validation/data/published-e2e-training.json").cases
                if c.hardware == "gb200" and "qwen3-30b" in c.id)
    pred = predict_case(case, load_profile("gb200"))
    assert pred.status == "ok" and "framework" not in dict(pred.ignored_inputs)
    # the recipe's CUDA graphs make it faster than the same run priced eager
    eager = dataclasses.replace(case, inputs={**case.inputs, "cuda_graphs": False})
    assert predict_case(eager, load_profile("gb200")).predicted < pred.predicted


def test_old_profile_with_host_field_still_loads():
    data = tomllib.loads((ROOT / "hwprofiles/h100-sxm.toml").read_text())
    data["efficiency"]["compute"]["host_op_overhead_us"] = 88.62  # as profiles were written before stacks
    old = build(HardwareProfile, data, source="old h100 profile")
    assert old.efficiency == H100.efficiency
    assert "host_op_overhead_us" not in type(old.efficiency.compute).model_fields


def test_fit_recovers_a_planted_parameter():
    # synthetic rows: three calibration training rows with their measurement replaced by the
    # prediction at a planted megatron (host 40 us/op, device fraction 0.7); the joint fit must
    # recover both (host rel 10%, fraction abs 0.03: a coarse grid + bounded Nelder-Mead of at
    # most 16 evaluations, and host and fraction partly trade off on these rows)
    import math

    ids = ("megatron-bridge-26.02-qwen3-30b-a3b-b200-8gpu-mxfp8", "megatron-core-mixtral8x7b-64xh100-bf16",
           "megatron-bridge-26.02-qwen3-235b-a22b-h100-256gpu-fp8")
    cases = [c for c in load_cases(ROOT / "validation/data/published-calibration.json").cases if c.id in ids]
    profiles = {c.hardware: load_profile(c.hardware) for c in cases}
    planted = stack_table().with_values({"megatron.train.host_op_us": 40.0, "megatron.train.device_fraction": 0.7})
    logs = stack_log_errors(cases, profiles, planted)
    synthetic = [dataclasses.replace(c, measured=c.measured * math.exp(e)) for c, e in zip(cases, logs)]
    fits = fit_stacks(synthetic, profiles)
    host, frac = fits["megatron.train.host_op_us"], fits["megatron.train.device_fraction"]
    assert host.identified and frac.identified
    assert host.value == pytest.approx(40.0, rel=0.10) and frac.value == pytest.approx(0.7, abs=0.03)
    assert set(host.rows) == set(frac.rows) == {c.id for c in cases}
    # the planted pair reproduces the rows: in-sample error of the fit below 2%
    got = stack_table().with_values({p: f.value for p, f in fits.items()})
    assert max(abs(math.expm1(e)) for e in stack_log_errors(synthetic, profiles, got)) < 0.02
    # no row runs sglang prefill or trtllm: they keep their priors (their serving fractions are
    # pooled, moesim/calibrate.py orphaned_fractions, and with no serving fraction identified the
    # pool is the prior 1)
    assert not fits["sglang.prefill.host_op_us"].identified and "no row" in fits["sglang.prefill.host_op_us"].note
    for p in ("sglang.prefill.device_fraction", "trtllm.prefill.device_fraction"):
        assert not fits[p].identified and fits[p].pooled and "no serving fraction identified" in fits[p].note
    assert fits["sglang.prefill.host_op_us"].value == stack_table().get("sglang").prefill.prior_us
    assert fits["trtllm.prefill.device_fraction"].value == 1.0


def test_fit_writes_the_table_and_it_loads(tmp_path):
    from moesim.calibrate import StackParamFit
    from validation.calibrate_published import write_stack_fits

    path = tmp_path / "stacks.toml"
    path.write_text((ROOT / "moesim/data/stacks.toml").read_text())
    fits = {"megatron.train.host_op_us": StackParamFit("megatron.train.host_op_us", 42.5, ("a", "b"), True, ""),
            "megatron.train.device_fraction": StackParamFit("megatron.train.device_fraction", 0.625, ("a", "b"), True,
                                                            ""),
            "sglang.prefill.host_op_us": StackParamFit("sglang.prefill.host_op_us", 5.0, ("c",), False, "prior kept")}
    write_stack_fits(fits, "2026-12-03", "test rows", path)
    t = parse_table(tomllib.loads(path.read_text()))
    assert t.value("megatron.train.host_op_us") == 42.5
    assert t.value("megatron.train.device_fraction") == 0.625
    assert t.value("megatron-cudagraph.train.device_fraction") == 0.625  # shares megatron's fraction
    assert "2026-12-03" in t.get("megatron").fitted and "a, b" in t.get("megatron").fitted
    assert "prior kept" in t.get("sglang").fitted
    assert fit_params(t) == fit_params()
