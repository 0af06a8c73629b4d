"""What limits two-micro-batch overlap besides the SM split (moesim/step/sharing.py eqs. 2-5):
the GEMMs' fixed SM grid and the HBM share of the comm kernels. Closed forms on toy layers
(hand-worked, asserted exactly or to rounding), the layer model's inputs to them, and the
schedules they must leave alone."""
from __future__ import annotations

import numpy as np
import pytest

from moesim.catalog import load_model, load_profile
from moesim.specs import Deployment
from moesim.step.layer import _skewed, dispatch_bytes_per_token, expected_traffic, layer_ops, make_setup, stack_times
from moesim.step.schedule import two_microbatch_time
from moesim.step.sharing import gemm_grid_share, hbm_share, op_rates

DSV3 = load_model("deepseek-v3")
H100 = load_profile("h100-sxm")


def test_op_rates_closed_form():
    # eqs. (4)-(5) by hand: w = 4 s of which g = 2 fixed-grid GEMMs, m = 1 memory-bound
    idle, comm = op_rates(4.0, 2.0, 1.0, 0.5, 0.5, 0.2)
    assert idle == pytest.approx(4.0 / (2.0 / 0.5 + 2.0), rel=1e-15)  # 4 / 6
    assert comm == pytest.approx(4.0 / (3.0 / 0.5 + 1.0 / 0.8), rel=1e-15)  # 4 / 7.25
    # no fixed grid, nothing memory-bound, no HBM share: eq. (1) exactly (idle 1, comm = share)
    assert op_rates(3.0, 0.0, 0.0, 1.0, 0.7, 0.0) == (1.0, pytest.approx(0.7, rel=1e-15))
    # a compute-bound op (m = 0) ignores HBM contention; a memory-bound op (m = w) ignores the SMs
    assert op_rates(3.0, 1.0, 0.0, 1.0, 0.7, 0.6)[1] == op_rates(3.0, 1.0, 0.0, 1.0, 0.7, 0.0)[1]
    assert op_rates(3.0, 0.0, 3.0, 1.0, 0.7, 0.25)[1] == pytest.approx(0.75, rel=1e-15)
    assert op_rates(0.0, 0.0, 0.0, 0.5, 0.5, 0.5) == (1.0, 1.0)  # an empty op


def test_compute_bound_layer_is_unaffected_by_hbm_contention():
    # P = X = 2 s of compute-bound work (Pm = Xm = 0): any HBM share changes nothing (exact)
    base = two_microbatch_time([2.0] * 3, [1.0] * 3, [2.0] * 3, [1.0] * 3, [0.5] * 3)
    assert two_microbatch_time([2.0] * 3, [1.0] * 3, [2.0] * 3, [1.0] * 3, [0.5] * 3,
                               hbmD_L=0.6, hbmC_L=0.4) == base


def test_memory_bound_layer_hand_worked():
    # P = X = 2 s, all memory-bound; low-latency comm (share 1) taking half the HBM (h = 0.5):
    # memory-bound work runs at 0.5 during comm, the SM-sharing hand case of test_step_sharing
    # (P0 [0,2]; D0 [2,3]; P1 -> 4.5; D1 [4.5,5.5]; X0 -> 7; C0 [7,8]; X1 -> 9.5; C1 -> 10.5)
    t = two_microbatch_time([2.0], [1.0], [2.0], [1.0], [1.0], Pm_L=2.0, Xm_L=2.0, hbmD_L=0.5, hbmC_L=0.5)
    assert t == pytest.approx(10.5, rel=1e-15)
    # the same layer compute-bound: no slowdown (9 = P0 P1 X0 X1 back to back + C1)
    assert two_microbatch_time([2.0], [1.0], [2.0], [1.0], [1.0], hbmD_L=0.5, hbmC_L=0.5) == 9.0


def test_fixed_grid_gemms_hand_worked():
    # all of P and X fixed-grid GEMMs at gemm_share 0.5 (= share): every compute op takes twice
    # as long whether a comm kernel runs or not -> the schedule of P = X = 4 without sharing:
    # P0 [0,4]; D0 [4,5]; P1 [4,8]; D1 [8,9]; X0 [8,12]; C0 [12,13]; X1 [12,16]; C1 [16,17]
    t = two_microbatch_time([2.0], [1.0], [2.0], [1.0], [0.5], Pg_L=2.0, gemm_share_L=0.5)
    assert t == pytest.approx(17.0, rel=1e-15)
    assert two_microbatch_time([4.0], [1.0], [4.0], [1.0]) == 17.0
    # fluid sharing alone (the grid free outside comm) is faster: 10.5 (test_step_sharing)
    assert two_microbatch_time([2.0], [1.0], [2.0], [1.0], [0.5]) == 10.5


def test_limits_only_slow_the_schedule():
    # random toy stacks: a larger HBM share, or the GEMMs' fixed grid, never makes the overlapped
    # step faster. (Splitting out the memory-bound part can: it then runs at 1 - h instead of the
    # SM share, faster when h < u / U.)
    rng = np.random.default_rng(3)
    P, D, X, C = (rng.uniform(0.5, 3.0, (6, 5)) for _ in range(4))
    Pm, Xm = P * rng.uniform(0, 1, P.shape), X * rng.uniform(0, 1, X.shape)
    Pg = (P - Pm) * rng.uniform(0, 1, P.shape)
    split = dict(Pm_L=Pm, Xm_L=Xm, Pg_L=Pg)
    t0 = two_microbatch_time(P, D, X, C, 0.85, **split)
    t1 = two_microbatch_time(P, D, X, C, 0.85, **split, hbmD_L=0.1, hbmC_L=0.2)
    t2 = two_microbatch_time(P, D, X, C, 0.85, **split, hbmD_L=0.1, hbmC_L=0.2, gemm_share_L=0.85)
    assert (t1 >= t0 - 1e-12).all() and (t2 >= t1 - 1e-12).all()
    assert (t1 > t0).any() and (t2 > t1).any()


def _setup(phase: str, dtype: str = "fp8", mode: str = "auto"):
    dep = Deployment(hardware=H100, devices=32, dp=32, ep=32, attention_layout="dp", dtype=dtype, a2a_mode=mode)
    return make_setup(DSV3, dep, phase)


def test_gemm_grid_share_sources():
    # SGLang prefill overlap: DeepGEMM gets 132 - 20 SMs (operations_strategy.py); decode: all SMs;
    # non-FP8 GEMMs are not DeepGEMM's; low-latency kernels hold no SMs
    assert gemm_grid_share(H100, "normal", "prefill", "fp8") == pytest.approx(112 / 132, rel=1e-15)
    assert gemm_grid_share(H100, "normal", "decode", "fp8") == 1.0
    assert gemm_grid_share(H100, "normal", "train", "fp8") == 1.0
    assert gemm_grid_share(H100, "normal", "prefill", "bf16") == 1.0
    assert gemm_grid_share(H100, "low_latency", "prefill", "fp8") == 1.0
    assert layer_ops(_setup("prefill"), 0, 8192, 512.5).gemm_share == pytest.approx(112 / 132, rel=1e-15)
    assert layer_ops(_setup("decode"), 5, 64, 0).gemm_share == 1.0


def test_hbm_share_of_the_layer_is_its_traffic_over_hbm():
    # eq. (3) by hand on the DeepSeek-V3 EP32 dispatch: the critical rank's send + receive bytes
    # over the dispatch time and the achievable HBM bandwidth (identity: rounding, rtol 1e-12)
    setup = _setup("prefill")
    ops = layer_ops(setup, 5, 8192, 512.5)
    tr = _skewed(expected_traffic(setup, 8192, dispatch_bytes_per_token(DSV3, "fp8")), ops.expert_imbalance)
    moved = tr.bytes_RR[0].sum() + tr.bytes_RR[:, 0].sum()
    achievable = H100.hbm_bandwidth_Bps * H100.efficiency.compute.gemm_memory_fraction
    assert ops.dispatch_hbm_share == pytest.approx(moved / ops.dispatch_s / achievable, rel=1e-12)
    assert 0.0 < ops.dispatch_hbm_share < 0.2 and 0.0 < ops.combine_hbm_share < 0.2
    assert hbm_share(H100, 0.0, 1.0) == 0.0 and hbm_share(H100, 1e30, 1e-9) == 0.9  # capped


def test_layer_parts():
    # prefill: elementwise ops memory-bound, core attention compute-bound, projections and experts
    # at 8192 tokens compute-bound GEMMs; decode: the core attention streams the KV cache
    p = layer_ops(_setup("prefill"), 5, 8192, 512.5)
    assert p.pre_memory_s == pytest.approx(p.elementwise_s, rel=1e-12)
    assert p.pre_gemm_s == pytest.approx(p.attention_s - p.attention_core_s, rel=1e-12)
    assert p.ffn_memory_s == 0.0
    d = layer_ops(_setup("decode"), 5, 64, 2048)
    assert d.core_memory_bound and d.pre_memory_s >= d.elementwise_s + d.attention_core_s
    assert 0.0 <= d.ffn_memory_s <= d.ffn_s


def test_no_overlap_schedule_is_unchanged():
    # under `none` nothing runs beside a comm kernel and no GEMM grid is set: with host time off
    # the step is P + D + X + C summed (exact to rounding), although the ops carry the limits
    dep = Deployment(hardware=H100, devices=32, dp=32, ep=32, attention_layout="dp", dtype="fp8", stack="xla")
    ops = [layer_ops(make_setup(DSV3, dep, "prefill"), i, 16384, 512.5) for i in range(2, 6)]
    assert ops[-1].gemm_share < 1.0 and ops[-1].dispatch_hbm_share > 0.0
    assert stack_times(ops, "none").time_s == pytest.approx(sum(o.gpu_s for o in ops), rel=1e-12)
