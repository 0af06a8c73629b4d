"""Analytic step model: schedule math, overlap, training and inference assembly, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim import cli
from moesim.catalog import load_model, load_profile
from moesim.errors import InfeasibleError, SpecError
from moesim.specs import Deployment
from moesim.step import (Decode, Prefill, StepBreakdown, Training, estimate, pipeline_bubble_fraction,
                         two_microbatch_time)
from moesim.step.layer import make_setup, moe_block

DSV3 = load_model("deepseek-v3")
H800 = load_profile("h800-sxm")


def _dep(devices=16, ep=16, **kw) -> Deployment:
    kw.setdefault("devices_per_domain", 8)
    return Deployment(hardware=H800, devices=devices, dp=devices, ep=ep, attention_layout="dp", dtype="fp8", **kw)


def _decode(devices=16, ep=16, batch=64, overlap="none", skew="uniform", check_memory=True, **kw):
    return estimate(DSV3, _dep(devices, ep, overlap=overlap, **kw), Decode(batch, 2048, skew),
                    check_memory=check_memory).breakdown()


def test_bubble_fraction_hand_values():
    # (pp - 1) / (vpp x m): 7 / (4 x 16) for pp 8, vpp 4, 16 micro-batches; 1F1B pp 4, m 8: 3 / 8
    assert pipeline_bubble_fraction(8, 4, 16) == 7 / 64
    assert pipeline_bubble_fraction(4, 1, 8) == 3 / 8
    assert pipeline_bubble_fraction(1, 1, 8) == 0.0


def test_two_microbatch_recurrence_hand_worked():
    # One layer, P=1 D=2 X=1 C=2 per micro-batch. Compute: P0 [0,1], P1 [1,2];
    # comm: D0 [1,3], D1 [3,5]; compute: X0 [3,4], X1 [5,6]; comm: C0 [5,7], C1 [7,9] -> 9.
    assert two_microbatch_time([1.0], [2.0], [1.0], [2.0]) == 9.0
    # Without communication the compute stream is busy back to back: 3 layers x 2 x (P + X).
    assert two_microbatch_time([1.0] * 3, [0.0] * 3, [2.0] * 3, [0.0] * 3) == 18.0
    # Element-wise over trailing axes (the vectorized planner path) equals the scalar calls.
    out = two_microbatch_time(np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]]), np.array([[1.0, 2.0]]),
                              np.array([[2.0, 0.0]]))
    assert_allclose(out, [9.0, 6.0], rtol=0)


def test_breakdown_fields_and_json():
    b = _decode()
    d = b.to_dict()
    for key in ("step_time_s", "tokens_per_s_per_device", "bottleneck", "components_s", "mfu",
                "exposed_comm_s", "memory_fits"):
        assert key in d
    assert_allclose(b.tokens_per_s_per_device, 64 / b.step_time_s, rtol=1e-12)
    # overlap none: the step is the sum of its components (every op runs one after another)
    assert_allclose(sum(b.components().values()), b.step_time_s, rtol=1e-9)
    json.dumps(d)
    with pytest.raises(Exception):
        b.step_time_s = 1.0  # frozen


def test_two_microbatch_hides_communication():
    none = _decode(devices=32, ep=32, batch=256)
    tbo = _decode(devices=32, ep=32, batch=256, overlap="two_microbatch")
    # components add up to more than the step: part of the all-to-all is hidden
    assert sum(tbo.components().values()) > tbo.step_time_s
    assert tbo.exposed_comm_s < tbo.dispatch_s + tbo.combine_s
    assert none.exposed_comm_s == pytest.approx(none.dispatch_s + none.combine_s, rel=1e-12)


def test_experts_use_expected_max_not_mean():
    setup = make_setup(DSV3, _dep(32, 32), "decode", "uniform")
    bal = make_setup(DSV3, _dep(32, 32), "decode", "balanced")
    uni, even = moe_block(setup, 64), moe_block(bal, 64)
    assert uni["expert_imbalance"] > 1.05  # 64 x 32 tokens over 256 experts: Binomial spread
    assert even["expert_imbalance"] == 1.0
    assert uni["experts_s"] > even["experts_s"]


def test_internode_dispatch_slower_than_intranode():
    # The same tokens per rank: EP 8 inside one NVLink domain vs EP 16 over two nodes (NICs).
    intra = _decode(devices=8, ep=8, batch=32, check_memory=False)
    inter = _decode(devices=16, ep=16, batch=32)
    assert inter.dispatch_s > 1.5 * intra.dispatch_s


def test_training_identities():
    dep = Deployment(hardware=H800, devices=1024, devices_per_domain=8, tp=2, pp=8, vpp=4, dp=64, ep=64,
                     dtype="fp8")
    work = Training(1024, 4096, 1, "balanced")
    b = estimate(DSV3, dep, work).breakdown()
    m = 1024 // 64
    pipeline = b.step_time_s - b.pipeline_bubble_s - b.dp_comm_s - b.optimizer_s
    # bubble / ideal pipeline time = (pp - 1) / (vpp x m) (module docstring)
    assert_allclose(b.pipeline_bubble_s / pipeline, 7 / (4 * m), rtol=1e-9)
    assert_allclose(b.tokens_per_s_per_device, 1024 * 4096 / (b.step_time_s * 1024), rtol=1e-12)
    assert 0 < b.mfu < 1
    exposed = estimate(DSV3, dep.with_(dp_overlap=False), work).breakdown()
    assert exposed.step_time_s >= b.step_time_s
    full = estimate(DSV3, dep.with_(recompute="full"), work, check_memory=False).breakdown()
    assert full.step_time_s > b.step_time_s
    assert_allclose(full.model_tflops_per_device * full.step_time_s, b.model_tflops_per_device * b.step_time_s,
                    rtol=1e-12)  # model FLOPs never count recompute


def test_prefill_runs_and_is_compute_heavier_per_token():
    b = estimate(DSV3, _dep(16, 16), Prefill(2048, 2)).breakdown()
    assert isinstance(b, StepBreakdown) and b.phase == "prefill"
    assert b.mfu > _decode().mfu


def test_redundant_experts_allow_ep_not_dividing_experts():
    # EP 72 with 256 experts needs 32 redundant slots (288 = 72 x 4)
    with pytest.raises(SpecError, match="redundant_experts"):
        estimate(DSV3, _dep(72, 72), Decode(64, 2048))
    b = estimate(DSV3, _dep(72, 72, redundant_experts=32), Decode(64, 2048)).breakdown()
    assert b.step_time_s > 0


def test_infeasible_raises():
    h100 = load_profile("h100-sxm")
    with pytest.raises(InfeasibleError, match="short by"):
        estimate(DSV3, Deployment(hardware=h100, devices=8, dp=8, ep=8, attention_layout="dp", dtype="fp8"),
                 Decode(64, 2048))
    with pytest.raises(ValueError, match="devices.*must equal tp x cp x dp x pp"):
        Deployment(hardware=H800, devices=16, dp=8, ep=8, attention_layout="dp")


DECODE = ("step --model deepseek-v3 --hw h800-sxm --devices 32 --devices-per-node 8 --ep 32 --attention dp "
          "--phase decode --batch-per-device 128 --context 4096 --dtype fp8 --overlap two_microbatch "
          "--engine analytic --json").split()


def test_cli_decode_example(capsys):
    assert cli.run(DECODE) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["step_time_s"] > 0 and d["tokens_per_s_per_device"] > 0
    assert d["bottleneck"] and "dispatch_s" in d["components_s"]


def test_cli_train_example(capsys):
    argv = ("step --model deepseek-v3 --hw h800-sxm --devices 1024 --devices-per-node 8 --phase train "
            "--global-batch 1024 --seq-len 4096 --tp 2 --pp 8 --vpp 4 --ep 64 --dtype fp8 --json").split()
    assert cli.run(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["phase"] == "train" and d["pipeline_bubble_s"] > 0


@pytest.mark.parametrize("argv", [
    "step --model deepseek-v3 --hw h100-sxm --devices 8 --ep 8 --attention dp --phase decode --dtype fp8",
    "step --model deepseek-v3 --hw h800-sxm --devices 32 --phase train --tp 2 --pp 8 --vpp 4 --ep 64 --dtype fp8",
    "step --model deepseek-v3 --hw h800-sxm --devices 12 --tp 8 --phase decode",
    "step --model deepseek-v3 --hw h800-sxm --devices 16 --ep 16 --attention dp --phase decode --skew zipf:x",
])
def test_cli_impossible_deployments_one_line_exit_2(argv, capsys):
    assert cli.run(argv.split()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesim: error:")
