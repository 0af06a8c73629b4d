"""Token-drop training runs (Megatron-Bridge / NeMo ``apply_moe_token_drop``: capacity factor 1.0,
inputs padded to capacity): the capacity reaches the step, and the padded dispatch issues no host
sync (moesim/step/training.py ``padded_dispatch``; megatron/core/transformer/moe/token_dispatcher.py
``preprocess``, ``drop_and_pad`` branch)."""
from __future__ import annotations

from dataclasses import fields

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.specs import Deployment
from moesim.step import Training, estimate
from moesim.step.cache import StepCache
from moesim.step.layer import layer_ops
from moesim.step.training import padded_dispatch
from moesim.step_cases import predict_training_case
from moesim.validate import CaseInputs

B200 = load_profile("b200")
QWEN = load_model("qwen3-30b-a3b")
WORK = Training(64, 4096, 1, "balanced")


def _dep(cf=None, stack="megatron"):
    return Deployment(hardware=B200, devices=8, devices_per_domain=8, dp=8, ep=8, dtype="bf16", stack=stack,
                      capacity_factor=cf)


def _forward_moe_op(dep):
    setup = StepCache().setup(QWEN, dep, "train", "balanced")
    return layer_ops(setup, 0, 4096.0, 2048.5)


def test_padded_dispatch_drops_only_the_host_sync():
    dropless, capped = _dep(), _dep(1.0)
    op = _forward_moe_op(dropless)
    assert op.host_sync                                   # dropless eager Megatron, EP 8: syncs
    assert padded_dispatch(op, dropless) is op            # dropless: unchanged
    padded = padded_dispatch(_forward_moe_op(capped), capped)
    assert not padded.host_sync
    # every other field is the capped layer's own (balanced routing at capacity 1.0 drops nothing,
    # so they equal the dropless layer's too: exact up to the routing engine's ceil, rtol 1e-9)
    for f in fields(op):
        if f.name != "host_sync" and isinstance(getattr(op, f.name), float):
            assert_allclose(getattr(padded, f.name), getattr(op, f.name), rtol=1e-9, err_msg=f.name)


def test_captured_stack_token_drop_at_capacity_one_equals_dropless_balanced():
    # no host sync either way (captured 'all'); balanced routing fills every expert exactly to
    # its mean, so capacity 1.0 drops nothing: the same step (rtol 1e-9, float sums)
    a = estimate(QWEN, _dep(None, "xla"), WORK, check_memory=False).breakdown()
    b = estimate(QWEN, _dep(1.0, "xla"), WORK, check_memory=False).breakdown()
    assert_allclose(b.step_time_s, a.step_time_s, rtol=1e-9)


def test_eager_token_drop_never_slower_and_waits_less():
    a = estimate(QWEN, _dep(None), WORK, check_memory=False).breakdown()
    b = estimate(QWEN, _dep(1.0), WORK, check_memory=False).breakdown()
    assert b.step_time_s <= a.step_time_s * (1 + 1e-12)
    assert b.host_s <= a.host_s * (1 + 1e-12)             # exposed host time: no wait at the dispatch
    assert_allclose(b.host_issue_s, a.host_issue_s, rtol=1e-12)  # the same operators are issued


@pytest.mark.parametrize("dropless,cf,want", [(None, None, None), (True, None, None), (False, None, 1.0),
                                             (False, 1.5, 1.5)])
def test_case_rows_carry_the_capacity(monkeypatch, dropless, cf, want):
    import moesim.step_cases as sc

    seen = {}
    real = sc._training_step

    def spy(model, dep, inputs):
        seen["cf"] = dep.capacity_factor
        return real(model, dep, inputs)

    monkeypatch.setattr(sc, "_training_step", spy)
    inputs = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "devices": 8, "devices_per_node": 8,
              "tp": 1, "pp": 1, "ep": 8, "global_batch": 64, "seq_len": 4096, "micro_batch": 1, "dtype": "bf16",
              "framework": "Megatron-Bridge", "dropless": dropless, "capacity_factor": cf}
    ci = CaseInputs(inputs, "training")
    assert predict_training_case(ci, B200) > 0
    assert seen["cf"] == want
    assert ("capacity_factor" in ci.assumed) == (dropless is False and cf is None)


def test_padded_layer_graphs_capture_whole_layers_only_for_padded_graph_runs():
    from moesim.step.stacks import stack_table
    from moesim.step_cases import padded_layer_graphs

    table = stack_table()
    graphs = table.inline("megatron-cudagraph", "train")
    eager = table.inline("megatron", "train")
    got = padded_layer_graphs(graphs, {"cuda_graphs": True}, 1.0)
    assert got.train.captured == "all" and got.train.graphs == "layer"
    # every number the stack's own: the same device fraction and launch cost
    assert got.train.device_fraction == graphs.train.device_fraction
    assert got.train.graph_launch_us == graphs.train.graph_launch_us
    assert got.prefill == graphs.prefill and got.decode == graphs.decode
    assert padded_layer_graphs(graphs, {"cuda_graphs": True}, None) is graphs   # dropless: uncapturable MoE
    assert padded_layer_graphs(graphs, {}, 1.0) is graphs                       # graphs not stated
    assert padded_layer_graphs(eager, {"cuda_graphs": True}, 1.0) is eager      # not the graph stack


def test_padded_graph_row_is_the_step_of_a_fully_captured_stack():
    # the case path against an independently built deployment: token drop 1.0 + whole-layer graphs
    from moesim.step.stacks import stack_table

    graphs = stack_table().inline("megatron-cudagraph", "train")
    full = graphs.model_copy(update={"train": graphs.train.model_copy(update={"captured": "all"})})
    dep = Deployment(hardware=B200, devices=8, devices_per_domain=8, dp=8, ep=8, dtype="fp8", stack=full,
                     capacity_factor=1.0)
    want = estimate(QWEN, dep, Training(512, 4096, 1, "uniform"), check_memory=False).breakdown()
    inputs = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "devices": 8, "devices_per_node": 8,
              "tp": 1, "pp": 1, "ep": 8, "global_batch": 512, "seq_len": 4096, "micro_batch": 1, "dtype": "fp8",
              "framework": "Megatron-Bridge", "dropless": False, "cuda_graphs": True}
    assert_allclose(predict_training_case(CaseInputs(inputs, "training"), B200), want.tokens_per_s_per_device,
                    rtol=1e-12)
    assert want.host_s == 0.0                                # nothing issued eagerly: the host never waits
