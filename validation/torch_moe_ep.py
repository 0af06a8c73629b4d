"""Expert parallelism for the reference MoE block with ``torch.distributed.all_to_all_single``.

Legend: T local tokens, K top-k, E experts, L local experts (E / R), R ranks, D hidden,
N routed copies this rank sends, M copies it receives.

Rank r holds experts ``[r L, (r + 1) L)`` (contiguous placement) and a full replica of the
router and the shared experts; it routes its own tokens. Dispatch sends one copy per
(token, chosen expert) pair, sorted by expert (hence by destination rank); the expert ids
travel in a second all-to-all; the combine all-to-all returns the expert outputs in the same
order, and the source rank applies the gate weights. Dropless only (a capacity limit would
need a global count per expert before dispatch).

Dispatched bytes (one direction) = copies whose expert lives on another rank x D x bytes per
element; the same number comes back in the combine. ``dispatch_stats`` computes it from the
routing alone so tests can compare it with what the all-to-all actually sent.

Process groups: gloo on CPU (``init_process_group("gloo")``), NCCL on CUDA.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from validation.torch_moe import Experts, MoEBlock, sort_copies


@dataclass(frozen=True)
class DispatchStats:
    """Copies one rank sends in one dispatch: all of them, those to other ranks, and bytes."""

    copies: int
    remote_copies: int
    remote_token_rank_pairs: int
    remote_bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def dispatch_stats(expert_TK: torch.Tensor, rank: int, world: int, num_experts: int,
                   hidden: int, elem_bytes: int) -> DispatchStats:
    """Copies sent by ``rank`` given its tokens' experts (-1 = not computed).

    remote_bytes = remote copies x hidden x elem_bytes (one copy per token and expert);
    remote_token_rank_pairs counts a token once per distinct remote rank (what a rank-deduplicated
    dispatch such as DeepEP's would send instead).
    """
    local = num_experts // world
    valid_TK = expert_TK >= 0
    dest_TK = torch.where(valid_TK, expert_TK // local, torch.full_like(expert_TK, -1))
    remote_TK = valid_TK & (dest_TK != rank)
    pairs = 0
    for r in range(world):
        if r != rank:
            pairs += int((dest_TK == r).any(dim=1).sum())
    remote = int(remote_TK.sum())
    return DispatchStats(int(valid_TK.sum()), remote, pairs, remote * hidden * elem_bytes)


class ExpertParallelMoE(torch.nn.Module):
    """Runs ``block``'s math with its routed experts split over the ranks of ``group``."""

    def __init__(self, block: MoEBlock, group=None):
        super().__init__()
        cfg = block.cfg
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if cfg.num_experts % self.world:
            raise ValueError(f"num_experts {cfg.num_experts} must be divisible by the {self.world} ranks")
        if cfg.capacity_factor is not None:
            raise ValueError("expert parallelism here is dropless: capacity_factor must be None")
        self.cfg, self.impl = cfg, block.impl
        self.local = cfg.num_experts // self.world
        lo, hi = self.rank * self.local, (self.rank + 1) * self.local
        self.router, self.shared = block.router, block.shared
        dt = block.experts.w1_EFD.dtype
        self.experts = Experts(self.local, cfg.hidden, cfg.expert_ffn).to(dt)
        with torch.no_grad():
            for name in ("w1_EFD", "w3_EFD", "w2_EDF"):
                getattr(self.experts, name).copy_(getattr(block.experts, name)[lo:hi])
        self.last_stats: DispatchStats | None = None

    def _a2a(self, x, out_splits, in_splits):
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        if x.is_floating_point() and x.requires_grad:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the autograd-aware variant we need
                return dist_fn.all_to_all_single(out, x, out_splits, in_splits, group=self.group)
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=self.group)
        return out

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        routing = self.router(x_TD)
        self.last_routing = routing
        tok_N, slot_N = sort_copies(routing)
        expert_N = routing.expert_TK[tok_N, slot_N]
        dest_N = expert_N // self.local
        send_R = torch.bincount(dest_N, minlength=self.world)
        recv_R = torch.empty_like(send_R)
        dist.all_to_all_single(recv_R, send_R, group=self.group)
        send, recv = send_R.tolist(), recv_R.tolist()
        x_MD = self._a2a(x_TD[tok_N], recv, send)
        local_M = self._a2a(expert_N - dest_N * self.local, recv, send)
        order_M = torch.sort(local_M, stable=True).indices
        counts_L = torch.bincount(local_M, minlength=self.local)
        y_sorted = self.experts.forward_sorted(x_MD[order_M], counts_L, self.impl)
        y_MD = torch.empty_like(y_sorted).index_copy(0, order_M, y_sorted)
        y_ND = self._a2a(y_MD, send, recv)
        w_N1 = routing.weight_TK[tok_N, slot_N].unsqueeze(-1)
        out_TD = torch.zeros_like(x_TD).index_add(0, tok_N, y_ND * w_N1)
        sent_remote = sum(s for r, s in enumerate(send) if r != self.rank)
        self.last_stats = DispatchStats(
            copies=len(tok_N), remote_copies=sent_remote,
            remote_token_rank_pairs=dispatch_stats(routing.expert_TK, self.rank, self.world, self.cfg.num_experts,
                                                   self.cfg.hidden, x_TD.element_size()).remote_token_rank_pairs,
            remote_bytes=sent_remote * self.cfg.hidden * x_TD.element_size(),
        )
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)
        return out_TD


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_local(rank: int, world: int, port: int, backend: str = "gloo") -> None:
    """Join a process group on localhost (MASTER_ADDR=127.0.0.1, MASTER_PORT=port)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=world)


def ep_check_worker(rank: int, world: int, port: int, cfg, x_all_TD: torch.Tensor, out_path: str,
                    impl: str = "grouped") -> None:
    """Spawned worker: EP forward of this rank's slice of ``x_all_TD``; saves output and stats.

    Every rank builds the same full block from ``cfg.seed`` and keeps its local experts, so the
    concatenated EP outputs must equal the single-process block on ``x_all_TD``.
    """
    torch.set_num_threads(1)
    init_local(rank, world, port)
    try:
        block = MoEBlock(cfg, impl=impl)
        ep = ExpertParallelMoE(block)
        T = x_all_TD.shape[0] // world
        x_TD = x_all_TD[rank * T:(rank + 1) * T].clone().requires_grad_(True)
        y_TD = ep(x_TD)
        y_TD.pow(2).sum().backward()
        torch.save({"y": y_TD.detach(), "x_grad": x_TD.grad, "stats": ep.last_stats.to_dict(),
                    "expert_TK": ep.last_routing.expert_TK}, f"{out_path}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()
