"""The Deployment spec: one frozen, validated description of how a model runs; errors name the
field; content keys change with the content (a recalibrated profile is another deployment)."""
from __future__ import annotations

import pytest

from moesim.calibrate import with_params
from moesim.catalog import build, load_model, load_profile
from moesim.errors import MoesimError, SpecError
from moesim.specs import Deployment, Parallelism

H200 = load_profile("h200-sxm")


def _dep(**kw) -> Deployment:
    base = dict(hardware=H200, devices=16, dp=16, ep=16, attention_layout="dp")
    return Deployment(**{**base, **kw})


@pytest.mark.parametrize("kw,field", [
    (dict(dp=8, ep=8), "devices.*must equal tp x cp x dp x pp"),
    (dict(tp=2, dp=8), "DP attention"),
    (dict(ep=32), "ep x etp"),
    (dict(vpp=2), "vpp > 1 needs pp > 1"),
    (dict(dtype="fp9"), "dtype"),
    (dict(kv_dtype="int3"), "kv_dtype"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(overflow="spill"), "overflow"),
    (dict(stack="jax"), "stack"),
    (dict(comm_sms=10_000), "comm_sms"),
    (dict(placement="random"), "placement"),
])
def test_bad_deployments_name_the_field(kw, field):
    with pytest.raises(MoesimError, match=field):
        build(Deployment, {**dict(hardware=H200, devices=16, dp=16, ep=16, attention_layout="dp"), **kw})


def test_partial_domain_is_modelled_as_equal_domains():
    """A job that leaves its last scale-up domain partial runs (it is a real deployment), as the
    equal domains of rack_aligned_domain, and says so; whole domains carry no note."""
    gb200 = load_profile("gb200")
    dep = Deployment(hardware=gb200, devices=256, dp=256, ep=32)
    assert dep.domain_size == 64 and dep.cluster.devices_per_domain == 64   # 4 racks of 64: EP 32 inside one
    assert dep.partial_domain == ("256 devices on 72-device domains: the last domain is partial; "
                                  "modelled as 4 domains of 64")
    odd = _dep(devices=12, dp=12, ep=12, devices_per_domain=8)
    assert odd.domain_size == 6 and "2 domains of 6" in odd.partial_domain   # no aligned divisor: the largest
    assert _dep().partial_domain is None and _dep().domain_size == 8
    assert Deployment(hardware=gb200, devices=144, dp=144, ep=144).partial_domain is None  # two whole racks


def test_model_checks_name_the_field():
    dsv3 = load_model("deepseek-v3")
    with pytest.raises(SpecError, match="parallel.ep"):
        _dep(devices=72, dp=72, ep=72).check(dsv3)  # 256 experts over 72 ranks need redundant slots
    _dep(devices=72, dp=72, ep=72, redundant_experts=32).check(dsv3)
    dense = dsv3.model_copy(update={"moe": None})
    with pytest.raises(SpecError, match="capacity_factor"):
        _dep(ep=1, capacity_factor=1.0).check(dense)


def test_frozen_derived_views_and_copies():
    d = _dep(devices_per_domain=8, redundant_experts=0)
    with pytest.raises(Exception):
        d.tp = 2  # frozen
    assert d.parallelism == Parallelism(dp=16, ep=16, attention_layout="dp")
    assert d.cluster.devices == 16 and d.domain_size == 8
    assert d.expert_placement == "contiguous" and _dep(redundant_experts=16).expert_placement == "load_aware"
    assert d.overlap_of("prefill") == "none" and d.with_(prefill_overlap="two_microbatch").overlap_of("prefill") == "two_microbatch"
    with pytest.raises(ValueError, match="devices.*must equal tp x cp x dp x pp"):
        d.with_(devices=32)  # copies are validated


def test_content_keys_follow_the_content():
    d = _dep()
    assert d.content_key == _dep().content_key
    # a recalibrated profile of the same name is another deployment
    slow = with_params(H200, {"compute.gemm_memory_fraction": 0.5})
    assert slow.name == H200.name and _dep(hardware=slow).content_key != d.content_key
    # schedule fields change the deployment but not one layer's operations
    two = d.with_(overlap="two_microbatch")
    assert two.content_key != d.content_key and two.layer_key == d.layer_key
    # capacity changes the layer's routed part only
    cap = d.with_(capacity_factor=1.25)
    assert cap.layer_key != d.layer_key and cap.routing_free_key == d.routing_free_key
