"""Alpha-beta collectives against their closed forms (Thakur et al. 2005; Patarasuk & Yuan 2009)."""
from __future__ import annotations

from math import ceil, log2

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_profile
from moesim.comm import all_gather_time, all_reduce_time, build_topology, reduce_scatter_time
from moesim.errors import SpecError
from moesim.specs.hardware import CommEfficiency, Efficiency

EFF = CommEfficiency(scale_up_bandwidth_fraction=0.5, scale_up_latency_us=2.0,
                     scale_out_bandwidth_fraction=0.8, scale_out_latency_us=5.0)
HW = load_profile("h100-sxm").with_efficiency(Efficiency(comm=EFF))
UP_BPS, UP_A = 450e9 * 0.5, 2e-6        # h100-sxm.toml per-direction NVLink x fraction; latency
OUT_BPS, OUT_A = 400e9 / 8 * 0.8, 5e-6  # 400 Gb/s NIC x fraction; latency


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_all_reduce_closed_form(n):
    b = 1e9
    res = all_reduce_time(build_topology(HW, 8, 8), b, ranks=n)
    assert_allclose(res.time_s, 2 * (n - 1) / n * b / UP_BPS + 2 * (n - 1) * UP_A, rtol=1e-12)


def test_tree_all_reduce_latency_term():
    res = all_reduce_time(build_topology(HW, 8, 8), 1e3, algorithm="tree")
    assert_allclose(res.latency_time_s, 2 * ceil(log2(8)) * UP_A, rtol=1e-12)
    assert res.bottleneck == "latency"


def test_all_gather_and_reduce_scatter_closed_form():
    b, n = 4e8, 8
    topo = build_topology(HW, 8, 8)
    expect = (n - 1) / n * b / UP_BPS + (n - 1) * UP_A
    assert_allclose(all_gather_time(topo, b).time_s, expect, rtol=1e-12)
    assert_allclose(reduce_scatter_time(topo, b).time_s, expect, rtol=1e-12)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_direct_all_reduce_closed_form(n):
    """One switched domain: reduce-scatter + all-gather, one exchange each (2 alpha), the ring's
    bandwidth term; all-gather / reduce-scatter one stage."""
    topo = build_topology(HW, 8, 8)
    b = 1e6
    res = all_reduce_time(topo, b, ranks=n, algorithm="direct")
    assert_allclose(res.time_s, 2 * (n - 1) / n * b / UP_BPS + 2 * UP_A, rtol=1e-12)
    assert_allclose(all_gather_time(topo, b, ranks=n, algorithm="direct").time_s,
                    (n - 1) / n * b / UP_BPS + UP_A, rtol=1e-12)


def test_auto_is_the_fastest_of_ring_and_direct_on_a_switch_and_the_ring_on_a_torus():
    topo = build_topology(HW, 8, 8)
    for b in (1e3, 1e6, 1e9):
        times = [all_reduce_time(topo, b, algorithm=a).time_s for a in ("ring", "direct")]
        assert_allclose(all_reduce_time(topo, b, algorithm="auto").time_s, min(times), rtol=1e-12)
    # 8 ranks at 1 MB: the direct exchange saves 2 (n - 1) - 2 = 12 latency steps
    saved = all_reduce_time(topo, 1e6, algorithm="ring").time_s - all_reduce_time(topo, 1e6, algorithm="auto").time_s
    assert_allclose(saved, 12 * UP_A, rtol=1e-9)
    tpu = load_profile("tpu-v5p")
    torus = build_topology(tpu, 64, 64)
    assert all_reduce_time(torus, 1e6, algorithm="auto").time_s == all_reduce_time(torus, 1e6).time_s
    with pytest.raises(SpecError, match="algorithm"):
        all_reduce_time(torus, 1e6, algorithm="direct")


def test_hierarchical_all_reduce_is_sum_of_stages():
    # 4 nodes x 8: reduce-scatter (8, NVLink) + all-reduce of b/8 over 4 NICs + all-gather (8)
    b = 1e9
    res = all_reduce_time(build_topology(HW, 32, 8), b)
    stage_up = 7 / 8 * b / UP_BPS + 7 * UP_A
    stage_out = 2 * 3 / 4 * (b / 8) / OUT_BPS + 2 * 3 * OUT_A
    assert_allclose(res.time_s, 2 * stage_up + stage_out, rtol=1e-12)
    assert res.hierarchical and res.bottleneck == "scale_up"  # 7.8 ms NVLink stages vs 4.7 ms NIC


def test_bad_input():
    topo = build_topology(HW, 16, 8)
    with pytest.raises(SpecError):
        all_reduce_time(topo, -1.0)
    with pytest.raises(SpecError):
        all_reduce_time(topo, 1e6, ranks=12)
