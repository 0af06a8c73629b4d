"""The reference torch MoE block (validation/torch_moe.py): routing rules worked by hand, the
execution paths against each other, expert parallelism against one process, and parameter /
FLOP / byte counts against moesim's analytic model, exactly.

Tolerances: all runs are fp32 on CPU. The loop, grouped_mm and bmm paths do the same
multiply-adds but in different kernels (blocking and summation order differ), so outputs agree
to fp32 rounding of sums over D and F terms: atol 1e-5, rtol 1e-5 for O(1) outputs with
D, F <= 64 (observed differences <= 1e-7). Expert parallelism moves the same rows through
all_to_all and runs the same kernels on them, so it must match to the same tolerance.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from moesim.compute.counts import expert_params, router_params_per_layer, shared_params_per_layer
from moesim.specs.model import ModelSpec
from validation.torch_moe import MoEBlock, MoEConfig, analytic_params, forward_flops
from validation.torch_moe_ep import dispatch_stats, ep_check_worker, free_port
from validation.torch_router import Router, group_mask, slot_positions

ATOL = RTOL = 1e-5


def _x(T, D, seed=0):
    return torch.randn(T, D, generator=torch.Generator().manual_seed(seed))


def _router_with_logits(cfg: MoEConfig, logits_TE: torch.Tensor) -> Router:
    """A router whose gate is the identity, so the input rows are the logits (hidden = E)."""
    r = Router(cfg)
    with torch.no_grad():
        r.gate.weight.copy_(torch.eye(cfg.num_experts))
    return r


def test_topk_softmax_weights_hand_case():
    cfg = MoEConfig(hidden=4, expert_ffn=2, num_experts=4, top_k=2)
    logits = torch.tensor([[0.0, math.log(3.0), math.log(2.0), 0.0]])
    r = _router_with_logits(cfg, logits)(logits)
    # softmax scores 1/7, 3/7, 2/7, 1/7: top-2 = experts 1, 2; normalised weights 3/5, 2/5.
    assert r.topk_ids_TK.tolist() == [[1, 2]]
    assert_close(r.weight_TK, torch.tensor([[0.6, 0.4]]), atol=1e-6, rtol=0)


def test_group_limited_routing_uses_top2_sum_per_group():
    # 2 groups of 3: group 0 = [0.9, 0.1, 0.1] (top-2 sum 1.0), group 1 = [0.5, 0.49, 0.51] (1.01)
    sel = torch.tensor([[0.9, 0.1, 0.1, 0.5, 0.49, 0.51]])
    mask = group_mask(sel, n_groups=2, topk_groups=1)
    assert mask.tolist() == [[False] * 3 + [True] * 3]  # 1.01 > 1.0: the single 0.9 loses
    cfg = MoEConfig(hidden=6, expert_ffn=2, num_experts=6, top_k=2, router_scoring="sigmoid",
                    n_groups=2, topk_groups=1)
    logits = torch.logit(sel)
    r = _router_with_logits(cfg, logits)(logits)
    assert sorted(r.topk_ids_TK.tolist()[0]) == [3, 5]  # 0.9 is outside the chosen group


def test_slot_positions_slot_major():
    # experts in priority order: 0,1,0,0,-1,1 -> positions 0,0,1,2,(skipped),1
    pos = slot_positions(torch.tensor([0, 1, 0, 0, -1, 1]), 2)
    assert [pos[i].item() for i in (0, 1, 2, 3, 5)] == [0, 0, 1, 2, 1]


def test_capacity_drop_and_reroute_hand_case():
    # 4 tokens, 2 experts... use E=4, K=1, cf=1: C = ceil(1 x 4 x 1 / 4) = 1.
    # Every token prefers expert 0; second preferences 1, 1, 2, 3 (logits below).
    logits = torch.tensor([[5.0, 4, 0, 0], [5.0, 4, 0, 0], [5.0, 0, 4, 0], [5.0, 0, 0, 4]])
    drop = MoEConfig(hidden=4, expert_ffn=2, num_experts=4, top_k=1, capacity_factor=1.0)
    r = _router_with_logits(drop, logits)(logits)
    assert r.capacity == 1
    assert r.expert_TK.flatten().tolist() == [0, -1, -1, -1]
    assert r.dropped == 3 and r.counts_E.tolist() == [1, 0, 0, 0] and r.demand_E.tolist() == [4, 0, 0, 0]
    assert r.weight_TK[1:].abs().sum().item() == 0.0
    rer = MoEConfig(hidden=4, expert_ffn=2, num_experts=4, top_k=1, capacity_factor=1.0, overflow="reroute")
    r = _router_with_logits(rer, logits)(logits)
    # token 1 -> expert 1; token 2 -> 2; token 3 -> 3 (each next preference has room)
    assert r.expert_TK.flatten().tolist() == [0, 1, 2, 3]
    assert (r.rerouted, r.dropped) == (3, 0)


def test_reroute_finds_no_room_then_drops():
    logits = torch.tensor([[5.0, 4.0]] * 3)
    cfg = MoEConfig(hidden=2, expert_ffn=2, num_experts=2, top_k=1, capacity_factor=1.0, overflow="reroute")
    r = _router_with_logits(cfg, logits)(logits)  # C = ceil(3/2) = 2: 0,0 | third -> expert 1
    assert r.expert_TK.flatten().tolist() == [0, 0, 1]
    logits = torch.tensor([[5.0, 4.0]] * 5)  # C = 3: 0,0,0, then 1,1
    r = _router_with_logits(cfg, logits)(logits)
    assert r.expert_TK.flatten().tolist() == [0, 0, 0, 1, 1]


def test_aux_and_z_loss_closed_form():
    cfg = MoEConfig(hidden=2, expert_ffn=2, num_experts=2, top_k=1)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    r = _router_with_logits(cfg, logits)(logits)
    # probs: [.5, .5], [.75, .25]; P = [.625, .375]; choices: token0 -> 0 (tie, lowest id), token1 -> 0
    f = torch.tensor([1.0, 0.0])
    assert_close(r.aux_loss, 2 * (f * torch.tensor([0.625, 0.375])).sum(), atol=1e-6, rtol=0)
    z = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2  # logsumexp = log 2 and log(3 + 1)
    assert_close(r.z_loss.item(), z, atol=1e-6, rtol=0)


def test_noise_only_in_training_and_seeded():
    cfg = MoEConfig(hidden=8, expert_ffn=4, num_experts=8, top_k=2, router_noise_std=1.0, seed=3)
    x = _x(32, 8)
    a, b = Router(cfg), Router(cfg)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x).topk_ids_TK, b(x).topk_ids_TK)  # same seed: same noise
    a.eval()
    clean = a(x).topk_ids_TK
    assert torch.equal(clean, a(x).topk_ids_TK)


CONFIGS = [
    MoEConfig(hidden=16, expert_ffn=32, num_experts=8, top_k=2, num_shared_experts=2, shared_expert_ffn=8),
    MoEConfig(hidden=16, expert_ffn=24, num_experts=8, top_k=3, router_scoring="sigmoid", router_bias=True,
              n_groups=4, topk_groups=2, capacity_factor=1.0, overflow="reroute", routed_scaling_factor=2.5),
    MoEConfig(hidden=16, expert_ffn=32, num_experts=6, top_k=1, capacity_factor=0.5),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["softmax-shared", "sigmoid-groups-reroute", "top1-drop"])
def test_execution_paths_agree(cfg):
    x = _x(48, cfg.hidden, seed=1)
    outs, grads = {}, {}
    for impl in ("loop", "grouped_mm", "bmm", "grouped"):
        block = MoEBlock(cfg, impl=impl)
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        y.pow(2).sum().backward()
        outs[impl], grads[impl] = y.detach(), xi.grad
    for impl in ("grouped_mm", "bmm", "grouped"):
        assert_close(outs[impl], outs["loop"], atol=ATOL, rtol=RTOL)
        assert_close(grads[impl], grads["loop"], atol=ATOL, rtol=RTOL)


def test_dropped_copy_contributes_nothing():
    # cf tiny: C = ceil(0.01 x 8 x 1 / 4) = 1 per expert; tokens beyond are fully dropped -> 0 output
    cfg = MoEConfig(hidden=8, expert_ffn=8, num_experts=4, top_k=1, capacity_factor=0.01)
    block = MoEBlock(cfg, impl="loop")
    y = block(_x(8, 8))
    dropped_T = (block.last.expert_TK < 0).all(dim=1)
    assert dropped_T.any()
    assert y[dropped_T].abs().max().item() == 0.0


def _inline_spec(cfg: MoEConfig) -> ModelSpec:
    moe = {"num_experts": cfg.num_experts, "top_k": cfg.top_k, "expert_ffn": cfg.expert_ffn,
           "num_shared_experts": cfg.num_shared_experts, "shared_expert_ffn": cfg.shared_expert_ffn,
           "router_scoring": cfg.router_scoring, "router_bias": cfg.router_bias,
           "n_groups": cfg.n_groups, "topk_groups": cfg.topk_groups, "sources": {"*": "test"}}
    return ModelSpec.model_validate({
        "name": "tiny", "display_name": "tiny", "num_layers": 1, "hidden": cfg.hidden, "vocab_size": 256,
        "max_context": 128, "attention": {"kind": "mha", "num_heads": 2, "num_kv_heads": 2, "head_dim": 8,
                                          "sources": {"*": "test"}},
        "moe": moe, "sources": {"*": "test"},
    })


@pytest.mark.parametrize("cfg", CONFIGS, ids=["softmax-shared", "sigmoid-groups-reroute", "top1-drop"])
def test_param_count_equals_analytic(cfg):
    spec = _inline_spec(cfg)
    block = MoEBlock(cfg)
    by_part = {
        "router": sum(p.numel() for p in block.router.parameters()),
        "routed": sum(p.numel() for p in block.experts.parameters()),
        "shared": sum(p.numel() for p in block.shared.parameters()) if block.shared else 0,
    }
    assert by_part["router"] == router_params_per_layer(spec)
    assert by_part["routed"] == cfg.num_experts * expert_params(spec)
    assert by_part["shared"] == shared_params_per_layer(spec)
    assert sum(p.numel() for p in block.parameters()) == analytic_params(cfg)


def test_forward_flops_equal_analytic_and_hooked():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = CONFIGS[0]
    spec = _inline_spec(cfg)
    block = MoEBlock(cfg, impl="loop")
    T = 40
    with FlopCounterMode(display=False) as fc:
        block(_x(T, cfg.hidden))
    counted = fc.get_total_flops()  # mm/addmm hooked by torch: 2 FLOPs per multiply-add
    from_counts = forward_flops(cfg, T, block.last.counts_E)
    # dropless: every token touches router + top_k experts + shared = 2 x active MoE weights
    analytic = T * 2 * (router_params_per_layer(spec) + cfg.top_k * expert_params(spec) + shared_params_per_layer(spec))
    assert counted == from_counts == analytic


def test_forward_flops_with_drops_follow_counts():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = CONFIGS[2]
    block = MoEBlock(cfg, impl="loop")
    with FlopCounterMode(display=False) as fc:
        block(_x(30, cfg.hidden))
    assert block.last.dropped > 0
    assert fc.get_total_flops() == forward_flops(cfg, 30, block.last.counts_E)


def test_dispatch_stats_hand_case():
    # 2 ranks x 2 experts each; rank 0's tokens choose [0, 2], [3, 2], [1, -1]
    expert_TK = torch.tensor([[0, 2], [3, 2], [1, -1]])
    s = dispatch_stats(expert_TK, rank=0, world=2, num_experts=4, hidden=8, elem_bytes=4)
    assert (s.copies, s.remote_copies, s.remote_token_rank_pairs) == (5, 3, 2)
    assert s.remote_bytes == 3 * 8 * 4


def test_expert_parallel_two_gloo_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    cfg = MoEConfig(hidden=16, expert_ffn=32, num_experts=8, top_k=2, num_shared_experts=1, shared_expert_ffn=8)
    x = _x(64, 16, seed=3)
    mp.spawn(ep_check_worker, args=(2, free_port(), cfg, x, str(tmp_path / "ep")), nprocs=2)
    ref = MoEBlock(cfg, impl="loop")
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    y.pow(2).sum().backward()
    outs = [torch.load(tmp_path / f"ep.rank{r}.pt") for r in range(2)]
    assert_close(torch.cat([o["y"] for o in outs]), y.detach(), atol=ATOL, rtol=RTOL)
    assert_close(torch.cat([o["x_grad"] for o in outs]), xr.grad, atol=ATOL, rtol=RTOL)
    for r, o in enumerate(outs):
        expected = dispatch_stats(o["expert_TK"], r, 2, cfg.num_experts, cfg.hidden, 4)
        assert o["stats"] == expected.to_dict()  # bytes the all-to-all sent == analytic count
    assert torch.equal(torch.cat([o["expert_TK"] for o in outs]), ref.last.expert_TK)


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(hidden=4, expert_ffn=4, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="impl"):
        MoEBlock(MoEConfig(hidden=4, expert_ffn=4, num_experts=4, top_k=1), impl="fast")


@pytest.mark.parametrize("dedup", ["none", "rank"])
def test_dispatch_bytes_match_comm_models_expected_traffic(dedup):
    """Second engine: moesim.comm.traffic.uniform_traffic's closed form vs counted copies.

    Uniform top-k choices (distinct experts, drawn by a seeded argsort of random numbers) on
    T = 20000 tokens of rank 0 of R = 4: the counted remote bytes per token have a standard
    error below 0.5% of the mean, so rtol 2% (4 standard errors).
    """
    from moesim.comm.traffic import uniform_traffic

    R, T, E, K, D, elem = 4, 20000, 16, 4, 8, 4
    g = torch.Generator().manual_seed(5)
    expert_TK = torch.rand(T, E, generator=g).argsort(dim=1)[:, :K]
    stats = dispatch_stats(expert_TK, rank=0, world=R, num_experts=E, hidden=D, elem_bytes=elem)
    counted = stats.remote_bytes if dedup == "none" else stats.remote_token_rank_pairs * D * elem
    traffic = uniform_traffic(R, R, T, E, K, D * elem, dedup=dedup)
    expected = traffic.bytes_RR[0].sum() - traffic.bytes_RR[0, 0]  # off-diagonal: crosses a link
    assert counted == pytest.approx(expected, rel=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_paths_agree():
    """bf16 on a GPU: outputs are O(0.1); bf16 keeps 8 bits of mantissa (rel. 4e-3 per
    rounding) and the kernels sum in different orders, so atol/rtol 2e-2."""
    cfg = MoEConfig(hidden=128, expert_ffn=256, num_experts=16, top_k=4, num_shared_experts=1, shared_expert_ffn=64)
    x = _x(512, 128, seed=2).cuda().to(torch.bfloat16)
    outs = {}
    for impl in ("loop", "grouped", "bmm"):
        with torch.device("cuda"):
            outs[impl] = MoEBlock(cfg, impl=impl, dtype=torch.bfloat16)(x).float()
    assert_close(outs["grouped"], outs["loop"], atol=2e-2, rtol=2e-2)
    assert_close(outs["bmm"], outs["loop"], atol=2e-2, rtol=2e-2)
