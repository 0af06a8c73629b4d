"""SM sharing under two-micro-batch overlap (moesim/step/sharing.py): the fluid recurrence by
hand, its sources for the SMs of each kernel kind, and the layer DES as the second engine."""
from __future__ import annotations

import pytest

from moesim.catalog import load_model, load_profile
from moesim.des.layer import simulate_layers
from moesim.step import two_microbatch_time
from moesim.specs import Deployment
from moesim.step.layer import layer_ops, make_setup, stack_time, stack_times
from moesim.step.sharing import DEEPEP_NORMAL_SMS, compute_share

DSV3 = load_model("deepseek-v3")
H800 = load_profile("h800-sxm")
LAYERS = list(range(2, 6))  # a dense layer and three MoE layers


def test_sm_sharing_recurrence_hand_worked():
    # One layer, P=2 D=1 X=2 C=1, compute at half speed while a comm kernel runs (share 0.5).
    # P0 [0,2]; D0 [2,3]; P1 from 2: [2,3] at 0.5 (0.5 done) + 1.5 -> 4.5; D1 [4.5,5.5];
    # X0 from 4.5: [4.5,5.5] at 0.5 + 1.5 -> 7; C0 [7,8]; X1 from 7: [7,8] at 0.5 + 1.5 -> 9.5;
    # C1 [9.5,10.5] -> 10.5 (9 without sharing: P0 P1 X0 X1 back to back, then C1).
    assert two_microbatch_time([2.0], [1.0], [2.0], [1.0]) == 9.0
    assert two_microbatch_time([2.0], [1.0], [2.0], [1.0], [0.5]) == 10.5
    # Layer 2 continues: P0 from 9.5 overlaps the previous layer's C1 [9.5,10.5] -> 12;
    # D0 [12,13]; P1 -> 14.5; D1 [14.5,15.5]; X0 -> 17; C0 [17,18]; X1 -> 19.5; C1 -> 20.5.
    assert two_microbatch_time([2.0] * 2, [1.0] * 2, [2.0] * 2, [1.0] * 2, [0.5] * 2) == 20.5
    # a comm-bound layer hides the slowdown entirely (P=1 D=2 X=1 C=2: 9 either way)
    assert two_microbatch_time([1.0], [2.0], [1.0], [2.0], [0.5]) == 9.0


def test_compute_share_sources():
    # DeepEP normal kernels: Buffer.num_sms = 20 of the H800's 132 SMs; low-latency: none
    assert DEEPEP_NORMAL_SMS == 20
    assert compute_share(H800, "normal") == pytest.approx(112 / 132, rel=1e-15)
    assert compute_share(H800, "normal", 24) == pytest.approx(108 / 132, rel=1e-15)
    assert compute_share(H800, "low_latency") == 1.0
    assert compute_share(load_profile("tpu-v5p"), "normal") == 1.0  # ICI DMA engines
    with pytest.raises(ValueError, match="comm_sms"):
        Deployment(hardware=H800, devices=16, devices_per_domain=8, dp=16, ep=16, comm_sms=132)


def _setup(comm_sms=None, mode="normal"):
    # host issue time off: the layer DES does not simulate the host (moesim/des/layer.py)
    dep = Deployment(hardware=H800, devices=16, devices_per_domain=8, dp=16, ep=16, dtype="fp8", a2a_mode=mode,
                     comm_sms=comm_sms, stack="xla")
    return make_setup(DSV3, dep, "prefill", "balanced")


def test_sharing_slows_only_the_overlapped_schedule():
    shared, free = _setup(), _setup(comm_sms=0)
    ops = [layer_ops(shared, i, 4096, 2048) for i in LAYERS]
    ops0 = [layer_ops(free, i, 4096, 2048) for i in LAYERS]
    assert stack_time(ops, "none") == stack_time(ops0, "none")  # no compute runs beside comm
    t, t0 = stack_times(ops, "two_microbatch"), stack_times(ops0, "two_microbatch")
    assert t.time_s > t0.time_s
    # at most every compute op stretched by U / (U - u)
    assert t.time_s <= t0.time_s * 132 / 112 * (1 + 1e-12)


@pytest.mark.parametrize("tokens", [1024, 8192])
def test_des_reproduces_sm_sharing(tokens):
    # second engine: the DES slows each rank's compute while its comm kernel is resident
    # (event-driven fluid model); deterministic routing -> equal to rounding (rtol 1e-9)
    setup = _setup()
    res = simulate_layers(setup, layers=LAYERS, tokens=tokens, context=2048, overlap="two_microbatch", steps=2)
    analytic = stack_time([layer_ops(setup, i, tokens / 2, 2048) for i in LAYERS], "two_microbatch")[0]
    assert res.mean_step_s == pytest.approx(analytic, rel=1e-9)
    free = stack_time([layer_ops(_setup(0), i, tokens / 2, 2048) for i in LAYERS], "two_microbatch")[0]
    assert analytic > free
