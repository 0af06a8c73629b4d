"""Multi-token prediction in training (moesim/step/training.py, Deployment.mtp_layers): each MTP
module is one more transformer layer of the last layer's kind on the last pipeline stage, its
eh_proj GEMM (2h -> h) and one more LM head pass; its parameters and activations sit on that
stage. Checked against closed forms built from the same kernel model, against the equivalent
model with one more layer, and through the case and CLI entry points.

Tolerances: rel 1e-9 where the closed form recomputes the step model's own arithmetic (float
rounding only)."""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.cli import run
from moesim.compute.counts import (attention_params_per_layer, expert_params, router_params_per_layer,
                                  shared_params_per_layer)
from moesim.compute.memory import memory_footprint, stage_params
from moesim.specs import Deployment
from moesim.specs.parallel import Parallelism
from moesim.step import Training, estimate, pricing
from moesim.step.layer import make_setup

B200 = load_profile("b200")
QWEN = load_model("qwen3-30b-a3b")          # 48 MoE layers, no MTP of its own
QWEN_MTP = QWEN.model_copy(update={"mtp_layers": 1})
QWEN_49 = QWEN.model_copy(update={"num_layers": QWEN.num_layers + 1})
DSV3 = load_model("deepseek-v3")            # 61 layers, 1 MTP module
WORK = Training(8, 4096, 1)                 # one device: m = 8 micro-batches of 4096 tokens


def _dep(**kw) -> Deployment:
    return Deployment(hardware=B200, devices=1, dp=1, ep=1, stack="megatron", **kw)


def _step(model, dep, work=WORK) -> float:
    return float(estimate(model, dep, work, check_memory=False).step_time_s[0])


def test_one_mtp_module_is_one_more_layer_plus_eh_proj_and_a_second_head():
    """One stage, dp 1: the step with one MTP module equals the 49-layer model's step plus, per
    micro-batch, a second LM head (3 GEMMs 4096 x vocab x h) and eh_proj (3 GEMMs 4096 x h x 2h),
    plus the optimizer's pass over eh_proj and the three norms (30 B per parameter)."""
    dep = _dep()
    f = make_setup(QWEN, dep, "train").device_fraction
    h, v = QWEN.hidden, QWEN.vocab_size
    head = 3 * pricing.gemm_s(B200, 4096, v, h, "bf16") / f
    eh = 3 * pricing.gemm_s(B200, 4096, h, 2 * h, "bf16") / f
    opt = (2 * h * h + 3 * h) * 30.0 / (B200.hbm_bandwidth_Bps * B200.efficiency.compute.gemm_memory_fraction) / f
    assert_allclose(_step(QWEN_MTP, dep) - _step(QWEN_49, dep), 8 * (head + eh) + opt, rtol=1e-9)


def test_mtp_off_is_the_model_without_mtp_and_none_is_the_models_own():
    dep = _dep()
    assert _step(QWEN_MTP, dep.with_(mtp_layers=0)) == _step(QWEN, dep)
    assert _step(QWEN_MTP, dep) == _step(QWEN_MTP, dep.with_(mtp_layers=1))
    assert dep.trained_mtp(DSV3) == 1 and dep.with_(mtp_layers=0).trained_mtp(DSV3) == 0
    assert _step(QWEN_MTP, dep.with_(mtp_layers=2)) > _step(QWEN_MTP, dep)


def test_mtp_loads_the_last_stage_only():
    """DeepSeek-V3 on pp 16 (fifteen 4-layer stages, a 1-layer last stage): MTP puts its layer and
    second head on the last stage, which then paces the pipeline; on pp 4 (16, 16, 16, 13 layers)
    the last stage stays lighter than a 16-layer stage once MTP is off, and MTP moves the step
    by at most the last stage becoming critical."""
    work = Training(256, 4096, 1)
    par = dict(hardware=B200, devices=128, devices_per_domain=8, pp=16, dp=8, ep=8, dtype="fp8", stack="megatron")
    off = estimate(DSV3, Deployment(**par, mtp_layers=0), work, check_memory=False).breakdown()
    on = estimate(DSV3, Deployment(**par), work, check_memory=False).breakdown()
    assert off.embedding_head_s == 0.0 < on.embedding_head_s   # critical stage: 4 layers -> the last
    assert on.step_time_s > off.step_time_s


def test_stage_params_and_memory_hold_the_mtp_module_on_the_last_stage():
    """stage_params: the last stage gains one MoE layer (attention, router, shared expert, its
    expert slots), eh_proj 2h x h and three norms (3h); the other stages are unchanged."""
    par = Parallelism(tp=1, pp=4, dp=2, ep=2)
    h, m = DSV3.hidden, DSV3.moe
    without, with_ = stage_params(DSV3, par), stage_params(DSV3, par, 1)
    assert with_[:-1] == without[:-1]
    d_base = with_[-1][0] - without[-1][0]
    d_exp = with_[-1][1] - without[-1][1]
    expect_base = attention_params_per_layer(DSV3) + 2 * h + router_params_per_layer(DSV3) \
        + shared_params_per_layer(DSV3) + 2 * h * h + 3 * h
    assert_allclose(d_base, expect_base, rtol=1e-12)
    assert_allclose(d_exp, (m.num_experts // 2) * expert_params(DSV3), rtol=1e-12)
    one = memory_footprint(DSV3, B200, Parallelism(tp=1, pp=1, dp=8, ep=8), mode="train", seq_len=4096)
    two = memory_footprint(DSV3, B200, Parallelism(tp=1, pp=1, dp=8, ep=8), mode="train", seq_len=4096,
                           mtp_layers=1)
    assert two.weight_bytes > one.weight_bytes and two.activation_bytes > one.activation_bytes
    serve = memory_footprint(DSV3, B200, Parallelism(tp=1, pp=1, dp=8, ep=8), mode="serve", mtp_layers=1)
    assert serve.weight_bytes == memory_footprint(DSV3, B200, Parallelism(tp=1, pp=1, dp=8, ep=8)).weight_bytes


def test_cases_read_mtp_depth_and_record_the_default():
    from moesim.cases import parse_cases
    from moesim.validate import validate

    inputs = {"model": "deepseek-v3", "devices": 256, "devices_per_node": 8, "tp": 1, "pp": 16, "ep": 8,
              "global_batch": 2048, "seq_len": 4096, "micro_batch": 1, "dtype": "fp8",
              "framework": "Megatron-Core"}

    def case(**kw):
        (c,) = validate(parse_cases({"schema": "moesim-cases/1", "cases": [
            {"id": "c", "kind": "training", "hardware": "b200", "inputs": {**inputs, **kw},
             "measured": {"metric": "tokens_per_s_per_device", "value": 1000.0}}]})).cases
        return c

    unstated, one, off, flag_off = case(), case(mtp_depth=1), case(mtp_depth=0), case(mtp=False)
    assert "mtp_depth" in dict(unstated.assumptions)                 # the model's module, recorded
    assert unstated.predicted == one.predicted
    assert off.predicted == flag_off.predicted > one.predicted        # MTP costs time
    assert "mtp_depth" not in dict(one.ignored_inputs)
    bad = case(mtp_depth=-1)
    assert bad.status != "ok" and "mtp_depth" in bad.reason


def test_cli_mtp_layers(capsys):
    args = ["step", "--model", "deepseek-v3", "--hw", "b200", "--devices", "256", "--pp", "16", "--ep", "8",
            "--phase", "train", "--global-batch", "2048", "--seq-len", "4096", "--dtype", "fp8",
            "--no-memory-check"]
    assert run(args) == 0
    assert "MTP" in capsys.readouterr().out
    assert run(args + ["--mtp-layers", "0"]) == 0
    assert "MTP " not in capsys.readouterr().out
    assert run(["memory", "--model", "deepseek-v3", "--hw", "b200", "--devices", "8", "--ep", "8",
                "--mode", "serve", "--mtp-layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--mtp-layers" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="mtp_layers"):
        _dep(mtp_layers=-1)


def test_scenario_workload_states_mtp_layers():
    from moesim.errors import MoesimError
    from moesim.specs import TrainingWorkload

    assert TrainingWorkload(global_batch=64, seq_len=4096).mtp_layers is None
    assert TrainingWorkload(global_batch=64, seq_len=4096, mtp_layers=0).mtp_layers == 0
    with pytest.raises((MoesimError, ValueError), match="mtp_layers"):
        TrainingWorkload(global_batch=64, seq_len=4096, mtp_layers=-1)
