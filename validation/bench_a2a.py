"""Gloo all-to-all timing between R local processes (used by validation/bench.py).

Legend: T tokens per rank, K top-k, E experts, R ranks, D hidden, N copies a rank sends.

Each rank routes T random tokens with the same random softmax router (seed per rank), sorts its
copies by destination rank (contiguous placement of E / R experts per rank) and times
``all_to_all_single`` of the fp32 payload: dispatch (N x D rows out) and combine (the rows
back). Each repetition starts after a barrier; a repetition's time is the slowest rank's;
the case value is the median over repetitions.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from validation.torch_moe import MoEConfig, sort_copies
from validation.torch_moe_ep import free_port, init_local
from validation.torch_router import Router


def _timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _worker(rank, R, port, T, D, K, E, warmup, reps, out_dir):
    torch.set_num_threads(1)
    init_local(rank, R, port)
    try:
        cfg = MoEConfig(hidden=D, expert_ffn=1, num_experts=E, top_k=K, seed=11)
        torch.manual_seed(11)
        router = Router(cfg)  # same weights on every rank
        x_TD = torch.randn(T, D, generator=torch.Generator().manual_seed(100 + rank))
        with torch.no_grad():
            routing = router(x_TD)
        tok_N, slot_N = sort_copies(routing)
        dest_N = routing.expert_TK[tok_N, slot_N] // (E // R)
        send_R = torch.bincount(dest_N, minlength=R)
        recv_R = torch.empty_like(send_R)
        dist.all_to_all_single(recv_R, send_R)
        send, recv = send_R.tolist(), recv_R.tolist()
        x_ND = x_TD[tok_N].contiguous()
        x_MD = x_ND.new_empty(sum(recv), D)
        back_ND = torch.empty_like(x_ND)
        dispatch = _timed(lambda: dist.all_to_all_single(x_MD, x_ND, recv, send), warmup, reps)
        combine = _timed(lambda: dist.all_to_all_single(back_ND, x_MD, send, recv), warmup, reps)
        (out_dir / f"rank{rank}.json").write_text(json.dumps({"send": send, "dispatch": dispatch, "combine": combine}))
    finally:
        dist.destroy_process_group()


def run_a2a(R: int, T: int, D: int, K: int, E: int, warmup: int, reps: int, out_dir: Path) -> dict:
    """Spawn R gloo processes; return median dispatch/combine seconds, samples and traffic_RR."""
    if E % R:
        raise ValueError(f"num_experts {E} must be divisible by ranks {R}")
    mp.spawn(_worker, args=(R, free_port(), T, D, K, E, warmup, reps, out_dir), nprocs=R)
    per_rank = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(R)]
    result = {"traffic_RR": [r["send"] for r in per_rank]}
    for op in ("dispatch", "combine"):
        slowest = [max(r[op][i] for r in per_rank) for i in range(reps)]
        result[op], result[op + "_samples"] = statistics.median(slowest), slowest
    return result
