"""All-to-all model: closed forms, hand-worked cases, dedup, skew, torus, properties.

Expected values come from closed forms derived in each test (or by hand), never from the code
under test; the uniform traffic builder is checked against a Monte Carlo second engine.
"""
from __future__ import annotations

from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from moesim.catalog import load_profile
from moesim.comm import Traffic, all_to_all_time, build_topology, uniform_traffic
from moesim.comm.skewed import popularity_from_skew, sampled_traffic
from moesim.comm.torus import link_loads
from moesim.errors import SpecError
from moesim.specs.hardware import CommEfficiency, Efficiency

H100 = load_profile("h100-sxm")
EFF = CommEfficiency(scale_up_bandwidth_fraction=0.5, scale_up_latency_us=2.0,
                     scale_out_bandwidth_fraction=0.8, scale_out_latency_us=5.0, per_peer_overhead_us=0.0)
HW = H100.with_efficiency(Efficiency(comm=EFF))
UP_BPS = 450e9 * 0.5            # h100-sxm.toml: 450 GB/s per direction x fraction
OUT_BPS = 400e9 / 8 * 0.8       # 400 Gb/s NIC x fraction


def test_uniform_in_one_domain_matches_closed_form():
    # closed form: bytes x (n-1)/n / bandwidth + latency, per rank sending `b` bytes in total
    n, b = 8, 3.2e8
    topo = build_topology(HW, n, n)
    res = all_to_all_time(topo, Traffic(np.full((n, n), b / n), n))
    assert_allclose(res.time_s, b * (n - 1) / n / UP_BPS + 2e-6, rtol=1e-12)
    assert res.bottleneck in ("scale_up_send", "scale_up_recv")
    assert res.internode_bytes == 0


def test_doubling_bytes_doubles_bandwidth_term():
    topo = build_topology(HW, 16, 8)
    t1 = all_to_all_time(topo, uniform_traffic(16, 8, 4096, 256, 8, 7168))
    t2 = all_to_all_time(topo, uniform_traffic(16, 8, 4096, 256, 8, 2 * 7168))
    assert_allclose(t2.bandwidth_time_s, 2 * t1.bandwidth_time_s, rtol=1e-12)
    assert_allclose(t2.latency_time_s, t1.latency_time_s, rtol=1e-12)


def test_hand_worked_forwarding_2x2():
    # 2 nodes x 2 ranks; rank 0 sends 10 B to rank 3 only. Dedup node: NIC 0 -> rank 2
    # (same local index on node 1), then NVLink rank 2 -> rank 3. Direct: NIC 0 -> NIC 3.
    b = np.zeros((4, 4))
    b[0, 3] = 10.0
    nb = np.zeros((4, 2))
    nb[0, 1] = 10.0
    topo = build_topology(HW, 4, 2)
    fwd = all_to_all_time(topo, Traffic(b, 2, nb))
    assert (fwd.internode_bytes, fwd.intranode_bytes) == (10.0, 10.0)
    assert fwd.max_scale_out_port_bytes == 10.0 and fwd.max_scale_up_port_bytes == 10.0
    direct = all_to_all_time(topo, Traffic(b, 2, nb), mode="low_latency")
    assert (direct.internode_bytes, direct.intranode_bytes) == (10.0, 0.0)
    comb_ = all_to_all_time(topo, Traffic(b, 2), op="combine")
    assert comb_.bottleneck in ("scale_out_recv", "latency")


@pytest.mark.parametrize("ranks,rpn,experts,k", [(16, 8, 256, 8), (64, 8, 256, 8), (32, 4, 64, 6)])
def test_dedup_cuts_internode_bytes_by_distinct_nodes(ranks, rpn, experts, k):
    # closed form, computed here: E[distinct nodes] = N (1 - C(E - E/N, k) / C(E, k)), and
    # E[distinct ranks] likewise with R; a token leaves its node for the (N-1)/N share of them.
    t, bpt, n = 512, 7168.0, ranks // rpn
    d_nodes = n * (1 - comb(experts - experts // n, k) / comb(experts, k))
    d_ranks = ranks * (1 - comb(experts - experts // ranks, k) / comb(experts, k))
    topo = build_topology(HW, ranks, rpn)
    node = all_to_all_time(topo, uniform_traffic(ranks, rpn, t, experts, k, bpt, dedup="node"))
    rank = all_to_all_time(topo, uniform_traffic(ranks, rpn, t, experts, k, bpt, dedup="rank"))
    none = all_to_all_time(topo, uniform_traffic(ranks, rpn, t, experts, k, bpt, dedup="none"))
    assert_allclose(node.internode_bytes, ranks * t * bpt * d_nodes * (n - 1) / n, rtol=1e-12)
    assert_allclose(rank.internode_bytes, ranks * t * bpt * d_ranks * (n - 1) / n, rtol=1e-12)
    assert_allclose(none.internode_bytes, ranks * t * bpt * k * (n - 1) / n, rtol=1e-12)
    assert_allclose(node.internode_bytes / rank.internode_bytes, d_nodes / d_ranks, rtol=1e-12)
    assert node.time_s <= rank.time_s


def test_uniform_closed_form_agrees_with_monte_carlo():
    # second engine: sampled routing with uniform popularity; MC standard error < 0.5/sqrt(40000)
    exact = uniform_traffic(32, 8, 1000, 128, 8, 1.0, dedup="node")
    mc = sampled_traffic(np.ones(128), 32, 8, 1000, 8, 1.0, dedup="node", rng=1, sample_tokens=40000)
    assert_allclose(mc.bytes_RR, exact.bytes_RR, rtol=0.03)
    assert_allclose(mc.node_bytes_RN, exact.node_bytes_RN, rtol=0.03)


def test_incast_skew_slower_than_uniform_same_volume():
    # dedup none: every token sends exactly k copies, so the total volume is equal
    ranks, rpn, t, e, k = 32, 8, 2048, 64, 4
    topo = build_topology(HW, ranks, rpn)
    uni = uniform_traffic(ranks, rpn, t, e, k, 4096.0, dedup="none")
    pop = popularity_from_skew("zipf", 1.2, e, np.random.default_rng(0))
    hot = sampled_traffic(pop, ranks, rpn, t, k, 4096.0, dedup="none", rng=0)
    assert_allclose(hot.bytes_RR.sum(), uni.bytes_RR.sum(), rtol=1e-9)
    assert all_to_all_time(topo, hot).time_s > 1.5 * all_to_all_time(topo, uni).time_s


def test_internode_never_faster_than_nic_bound():
    topo = build_topology(HW, 32, 8)
    res = all_to_all_time(topo, uniform_traffic(32, 8, 4096, 256, 8, 7392.0))
    assert res.time_s >= res.internode_bytes / 32 / OUT_BPS


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.floats(1.0, 8.0), st.sampled_from([(8, 4), (16, 8), (12, 4)]),
       st.sampled_from(["normal", "low_latency"]))
def test_properties_monotone_and_bisection(seed, scale, shape, mode):
    ranks, rpn = shape
    rng = np.random.default_rng(seed)
    b = rng.exponential(1e6, (ranks, ranks)) * (rng.random((ranks, ranks)) < 0.7)
    nb = b.reshape(ranks, ranks // rpn, rpn).max(axis=2)  # a node gets at least its largest copy
    topo = build_topology(HW, ranks, rpn)
    base = all_to_all_time(topo, Traffic(b, rpn, nb), mode)
    more = all_to_all_time(topo, Traffic(b * scale, rpn, nb * scale), mode)
    assert more.time_s >= base.time_s * (1 - 1e-12)
    # bisection: the bytes between node-aligned halves over the NICs of one half
    half = ranks // 2
    if mode == "low_latency":
        cut = max(b[:half, half:].sum(), b[half:, :half].sum())
    else:
        nodes = ranks // rpn
        cut = max(nb[:half, nodes // 2:].sum(), nb[half:, : nodes // 2].sum())
    assert base.time_s >= cut / (half * OUT_BPS) * (1 - 1e-12)


def test_ring_link_loads_hand_worked():
    # ring of 4 with wrap-around: 8 B from chip 0 to chip 2 is a tie: 4 B each way, two hops
    b = np.zeros((4, 4))
    b[0, 2] = 8.0
    load = link_loads(b, (4,))
    assert load[0, 0, 0] == 4 and load[1, 0, 0] == 4 and load[0, 0, 1] == 4 and load[3, 0, 1] == 4
    assert load.sum() == 16
    # 3x3 mesh without wrap, (0,0) -> (1,1): dimension 0 first from (0,0), then dimension 1 from (1,0)
    b = np.zeros((9, 9))
    b[0, 4] = 5.0
    load = link_loads(b, (3, 3), wraparound=False)
    assert load[0, 0, 0] == 5 and load[3, 1, 0] == 5 and load.sum() == 10


def test_torus_uniform_all_to_all_max_link():
    # 4x4 torus, b bytes per pair: each 4-ring sees per link 2b per (source ring, offset) pattern,
    # times 4 sources sharing each ring -> 8b on every link (derivation in the docstring above)
    b = np.full((16, 16), 3.0)
    load = link_loads(b, (4, 4))
    assert_allclose(load, 8 * 3.0, rtol=1e-12)


def test_torus_topology_uses_ici_links():
    data = H100.model_dump()
    data["scale_up"].update(topology="torus", fabric="ici", domain_size=16, max_domain_size=16)
    data["ici"] = {"torus_dims": 2, "links_per_chip": 4, "link_bandwidth_per_direction_GBps": 50.0,
                   "max_slice_chips": 16, "chips_per_host": 4, "sources": {"*": "test stand-in"}}
    tpu = type(H100).model_validate(data).with_efficiency(Efficiency(comm=EFF))
    topo = build_topology(tpu, 16, 16)
    assert topo.torus_shape == (4, 4)
    res = all_to_all_time(topo, Traffic(np.full((16, 16), 3e6), 16))
    assert res.bottleneck == "ici_link"
    assert_allclose(res.bandwidth_time_s, 24e6 / (50e9 * 0.5), rtol=1e-12)


@pytest.mark.parametrize("kwargs,field", [
    (dict(ranks=12, ranks_per_node=8), "ranks"),
    (dict(ranks=16, ranks_per_node=0), "ranks_per_node"),
    (dict(tokens_per_rank=0), "tokens_per_rank"),
    (dict(top_k=300), "top_k"),
])
def test_bad_sizes_name_the_field(kwargs, field):
    args = dict(ranks=16, ranks_per_node=8, tokens_per_rank=8, num_experts=256, top_k=8, bytes_per_token=1.0)
    args.update(kwargs)
    with pytest.raises(SpecError) as err:
        uniform_traffic(**args)
    assert err.value.field == field
