"""The per-stack achievable device fraction (moesim/specs/software_stack.py ``device_fraction``):
it divides every compute operation of the step, never communication; 1 changes nothing; bad
values are refused naming the field."""
from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from moesim.catalog import load_model, load_profile
from moesim.errors import SpecError
from moesim.specs import Deployment
from moesim.specs.software_stack import PhaseHost
from moesim.step import Prefill, estimate
from moesim.step.layer import COMPUTE_OP_FIELDS, LayerOps, at_device_fraction, layer_ops, make_setup, stack_time
from moesim.step.stacks import device_fraction, stack_table

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_profile("h100-sxm")
COMM = ("attention_comm_s", "dispatch_s", "combine_s")


def _xla(fraction: float):
    """The xla stack (no host issue) with an explicit device fraction in every phase."""
    s = stack_table().get("xla")
    return s.model_copy(update={p: s.phase(p).model_copy(update={"device_fraction": fraction})
                                for p in ("train", "prefill", "decode")})


def test_fraction_scales_compute_not_comm_closed_form():
    # toy layer, no host time: serial schedule = P + D + X + C with P = attention + comm +
    # router + elementwise; at fraction f every compute term is / f, comm unchanged (exact)
    op = LayerOps(attention_s=4.0, attention_comm_s=1.0, elementwise_s=0.5, router_s=0.5, dispatch_s=2.0,
                  experts_s=6.0, shared_experts_s=1.0, combine_s=3.0, attention_core_s=2.0)
    for f in (1.0, 0.8, 0.5):
        scaled = at_device_fraction(op, f)
        compute = 4.0 + 0.5 + 0.5 + 6.0 + 1.0
        assert stack_time([scaled], "none")[0] == pytest.approx(compute / f + 1.0 + 2.0 + 3.0, rel=1e-12)
        assert all(getattr(scaled, k) == getattr(op, k) for k in COMM)
        assert scaled.attention_core_s == pytest.approx(2.0 / f, rel=1e-12)


def test_layer_ops_of_a_real_deployment_see_the_stack_fraction():
    # the same EP8 prefill layer at fraction 1 and 0.5: compute fields x2 (rel 1e-12), comm equal
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, stack=_xla(1.0))
    one = layer_ops(make_setup(MIXTRAL, dep, "prefill"), 0, 4096.0, 2048.0)
    half = layer_ops(make_setup(MIXTRAL, dep.with_(stack=_xla(0.5)), "prefill"), 0, 4096.0, 2048.0)
    for k in COMPUTE_OP_FIELDS:
        assert getattr(half, k) == pytest.approx(2.0 * getattr(one, k), rel=1e-12), k
    assert one.dispatch_s > 0 and all(getattr(half, k) == getattr(one, k) for k in COMM)


def test_fraction_one_changes_nothing():
    op = LayerOps(attention_s=1.0, dispatch_s=2.0)
    assert at_device_fraction(op, 1.0) is op
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, stack="xla")
    work = Prefill(prompt_len=2048, prompts_per_device=2)
    named = estimate(MIXTRAL, dep, work, check_memory=False).breakdown(0)
    explicit = estimate(MIXTRAL, dep.with_(stack=_xla(1.0)), work, check_memory=False).breakdown(0)
    assert device_fraction("xla", "prefill") == 1.0
    assert explicit.step_time_s == named.step_time_s


def test_whole_step_scales_as_compute_over_fraction_plus_comm():
    # a full prefill step under xla (no host): t(f) = compute / f + exposed comm, with the
    # exposed comm the same at every f when compute and comm run one after another (overlap
    # none); checked at f = 0.5 against t(1) (rel 1e-9)
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, stack=_xla(1.0), overlap="none")
    work = Prefill(prompt_len=2048, prompts_per_device=2)
    b1 = estimate(MIXTRAL, dep, work, check_memory=False).breakdown(0)
    b2 = estimate(MIXTRAL, dep.with_(stack=_xla(0.5)), work, check_memory=False).breakdown(0)
    comm = b1.exposed_comm_s
    assert b2.exposed_comm_s == pytest.approx(comm, rel=1e-9)
    assert b2.step_time_s == pytest.approx(2.0 * (b1.step_time_s - comm) + comm, rel=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_bad_fraction_is_refused_naming_the_field(bad):
    with pytest.raises(ValidationError, match="device_fraction"):
        PhaseHost(captured="all", device_fraction=bad, source="test")
    with pytest.raises(SpecError, match="device_fraction"):
        stack_table().with_values({"megatron.train.device_fraction": bad})
    with pytest.raises(ValidationError, match="device_fraction"):
        PhaseHost(captured="all", device_fraction="nostack.train", source="test")


def test_references_share_a_fraction():
    t = stack_table().with_values({"megatron.train.device_fraction": 0.6, "sglang.prefill.device_fraction": 0.8,
                                   "trtllm.prefill.device_fraction": 0.9})
    assert t.value("megatron-cudagraph.train.device_fraction") == 0.6
    assert t.value("sglang.decode.device_fraction") == 0.8
    assert t.value("trtllm.decode.device_fraction") == 0.9
    assert t.inline("megatron-cudagraph", "train").train.device_fraction == 0.6
    assert t.entry_of("megatron-cudagraph", "train", "device_fraction") == "megatron.train"
    assert dataclasses.is_dataclass(t)
