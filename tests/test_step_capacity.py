"""Capacity limits in the step model: dropped rows cost nothing, rerouted rows are priced where
they land, the shared-expert backup is priced, and the fractions are fields of the result.

Hand-worked case (balanced routing makes every load exact; moesim/routing/api.py conventions):
E = 4 experts, k = 1, EP 2 (experts {0, 1} on rank 0, {2, 3} on rank 1), 8 tokens per rank, so
T = 16 tokens and 16 x 1 / 4 = 4 copies per expert. Capacity factor 0.5: C = ceil(0.5 x 16 x 1 / 4)
= 2 copies per slot, so every expert accepts 2 of its 4 copies:
- drop: 8 of 16 copies dropped (fraction 0.5); each rank computes rows [2, 2]; the dispatch and
  combine carry half the copies;
- reroute: every slot is full, the next-preferred experts too: the overflow is dropped as well
  (drop 0.5, reroute 0), rows [2, 2];
- shared: the 8 overflowing copies run on their source ranks through the backup FFN (the
  routed expert's width; the model has no shared expert): 4 rows per rank, backup fraction 0.5;
  the dispatch carries the 8 accepted copies.
Dropless: rows [4, 4], the whole traffic.
"""
from __future__ import annotations

import numpy as np
import pytest

from moesim.catalog import build, load_model, load_profile
from moesim.specs import Deployment, ModelSpec
from moesim.step import Decode, Prefill, Training, estimate, pricing
from moesim.step.layer import combine_bytes_per_token, dispatch_bytes_per_token, expected_traffic, make_setup, moe_block

H100 = load_profile("h100-sxm")
TINY = build(ModelSpec, {
    "name": "tiny-moe", "display_name": "tiny MoE", "num_layers": 2, "hidden": 512, "vocab_size": 1000,
    "max_context": 4096, "sources": {"*": "hand-made test model"},
    "attention": {"kind": "gqa", "num_heads": 8, "num_kv_heads": 8, "head_dim": 64, "sources": {"*": "test"}},
    "moe": {"num_experts": 4, "top_k": 1, "expert_ffn": 1024, "sources": {"*": "test"}},
})


def _setup(cf, overflow="drop", skew="balanced"):
    dep = Deployment(hardware=H100, devices=2, dp=2, ep=2, attention_layout="dp", capacity_factor=cf,
                     overflow=overflow, a2a_mode="normal")
    return make_setup(TINY, dep, "prefill", skew)


@pytest.mark.parametrize("overflow,drop,backup", [("drop", 0.5, 0.0), ("reroute", 0.5, 0.0), ("shared", 0.0, 0.5)])
def test_two_rank_hand_worked(overflow, drop, backup):
    setup, free = _setup(0.5, overflow), _setup(None)
    got, ref = moe_block(setup, 8.0), moe_block(free, 8.0)
    assert (got["drop_fraction"], got["reroute_fraction"], got["backup_fraction"]) == (drop, 0.0, backup)
    assert ref["drop_fraction"] == ref["backup_fraction"] == 0.0
    # rows on the busiest rank: [2, 2] under the limit, [4, 4] dropless (module docstring)
    assert got["experts_s"] == pricing.expert_ffn_s(H100, TINY, np.array([2.0, 2.0]), "bf16", layout="token_tiled")
    assert ref["experts_s"] == pricing.expert_ffn_s(H100, TINY, np.array([4.0, 4.0]), "bf16", layout="token_tiled")
    # the backup: 4 rows per rank through an FFN of the routed expert's width
    backup_s = pricing.dense_ffn_s(H100, TINY, 4.0, 1024, "bf16") if overflow == "shared" else 0.0
    assert got["shared_experts_s"] == backup_s
    # all-to-all: the accepted half of the copies (expected traffic x 0.5, equal loads)
    for op, bpt in (("dispatch", dispatch_bytes_per_token(TINY, "bf16")), ("combine", combine_bytes_per_token(TINY))):
        tr = expected_traffic(setup, 8.0, bpt)
        half = type(tr)(tr.bytes_RR * 0.5, tr.ranks_per_node, None if tr.node_bytes_RN is None else tr.node_bytes_RN * 0.5,
                        tr.peers_R)
        want = pricing.a2a_s(setup.ep_topology, half if op == "dispatch" else half.reversed(), "normal", op)
        assert got[f"{op}_s"] == want
        assert got[f"{op}_s"] < ref[f"{op}_s"]


def test_rerouted_rows_are_priced_on_the_rank_that_takes_them():
    # a hand-made load: the busiest rank holds its 2 accepted copies per slot plus 1 rerouted copy
    # on each; the expert time is the grouped GEMM of those rows, whatever the fractions say
    load = pricing.RankLoad(6.0, 4.0, np.array([3.0, 3.0]), drop_fraction=0.1, reroute_fraction=0.2)
    got = moe_block(_setup(0.5, "reroute"), 8.0, load)
    assert got["experts_s"] == pricing.expert_ffn_s(H100, TINY, np.array([3.0, 3.0]), "bf16", layout="token_tiled")
    assert (got["drop_fraction"], got["reroute_fraction"]) == (0.1, 0.2)
    assert got["expert_imbalance"] == 1.5


def test_fractions_reach_the_step_result_and_dropless_is_unchanged():
    dep = Deployment(hardware=H100, devices=2, dp=2, ep=2, attention_layout="dp")
    w = Decode(8, 100, "balanced")
    free = estimate(TINY, dep, w).breakdown()
    # a capacity the balanced loads never reach: exactly the dropless step (same rows, same bytes)
    roomy = estimate(TINY, dep.with_(capacity_factor=2.0), w).breakdown()
    assert roomy.step_time_s == free.step_time_s and roomy.drop_fraction == 0.0
    capped = estimate(TINY, dep.with_(capacity_factor=0.5), w).breakdown()
    assert (capped.drop_fraction, capped.capacity_factor, capped.overflow) == (0.5, 0.5, "drop")
    assert free.overflow == "dropless" and free.capacity_factor is None
    assert capped.experts_s < free.experts_s and capped.step_time_s < free.step_time_s
    d = capped.to_dict()
    assert d["drop_fraction"] == 0.5 and d["backup_fraction"] == 0.0


def test_skewed_routing_monotone_in_capacity_factor():
    # Zipf-skewed popularity (Monte Carlo engine, seeded): as the capacity factor falls, the step
    # never gets slower and the drops never fall; dropless is the slowest and drops nothing
    m = load_model("mixtral-8x7b")
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, attention_layout="dp")
    w = Decode(64, 1024, "zipf:1.2")
    free = estimate(m, dep, w, check_memory=False).breakdown()
    times, drops = [free.step_time_s], [0.0]
    for cf in (4.0, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5):
        bd = estimate(m, dep.with_(capacity_factor=cf), w, check_memory=False).breakdown()
        times.append(bd.step_time_s)
        drops.append(bd.drop_fraction)
    assert np.all(np.diff(times) <= 1e-15) and np.all(np.diff(drops) >= 0)
    assert drops[-1] > 0.2 and times[-1] < times[0]


def test_training_prices_capacity_too():
    m = load_model("mixtral-8x7b")
    dep = Deployment(hardware=H100, devices=64, tp=2, pp=2, dp=16, ep=8)
    w = Training(256, 4096, 1, "zipf:0.8")
    free = estimate(m, dep, w, check_memory=False).breakdown()
    capped = estimate(m, dep.with_(capacity_factor=0.5), w, check_memory=False).breakdown()
    assert capped.drop_fraction > 0.3 and capped.experts_s < free.experts_s
    assert capped.step_time_s < free.step_time_s


def test_capacity_factor_on_a_dense_model_is_a_spec_error():
    from moesim.errors import SpecError

    m = TINY.model_copy(update={"moe": None})
    with pytest.raises(SpecError, match="capacity_factor"):
        estimate(m, Deployment(hardware=H100, devices=1, capacity_factor=1.0), Decode(1, 10))


def test_step_cli_shows_capacity(capsys):
    from moesim import cli

    argv = ("step --model mixtral-8x7b --hw h100-sxm --devices 8 --ep 8 --attention dp --phase decode "
            "--batch-per-device 64 --context 1024 --skew zipf:1.2 --no-memory-check").split()
    assert cli.run(argv + ["--capacity-factor", "1.0", "--overflow", "shared"]) == 0
    out = capsys.readouterr().out
    assert "capacity" in out and "overflow shared" in out and "backup" in out
    assert cli.run(argv + ["--capacity-factor", "-1"]) == 2
    assert "capacity_factor" in capsys.readouterr().err


def test_software_stack_decides_host_time():
    # auto: eager prefill pays host issue time, CUDA-graph decode one graph launch per step
    # (sglang: 5 us, moesim/data/stacks.toml); eager: decode pays every operator too;
    # cuda_graphs: one launch per step; xla: none
    m = load_model("mixtral-8x7b")
    dep = Deployment(hardware=H100, devices=8, dp=8, ep=8, attention_layout="dp")
    pre, dec = Prefill(512, 1), Decode(16, 1024)
    auto_p, auto_d = (estimate(m, dep, w, check_memory=False).breakdown() for w in (pre, dec))
    assert auto_p.host_issue_s > 0 and auto_d.host_issue_s == pytest.approx(5e-6, rel=1e-9)
    eager_d = estimate(m, dep.with_(stack="eager"), dec, check_memory=False).breakdown()
    assert eager_d.host_issue_s > 0 and eager_d.step_time_s >= auto_d.step_time_s
    for stack in ("cuda_graphs", "xla"):
        p = estimate(m, dep.with_(stack=stack), pre, check_memory=False).breakdown()
        assert p.host_issue_s == pytest.approx(5e-6 if stack == "cuda_graphs" else 0.0, rel=1e-9, abs=1e-15)
        assert p.step_time_s <= auto_p.step_time_s
