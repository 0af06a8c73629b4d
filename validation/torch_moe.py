"""Reference MoE block in torch: router, SwiGLU routed experts, shared experts, two execution paths.

Legend of shape suffixes: T tokens, K top-k slots, E experts (local experts under EP),
D hidden, F expert FFN width, S shared FFN width, C padded rows per expert (bmm path),
N routed copies actually computed (sum of counts_E).

SwiGLU expert (Shazeer 2020): ``y = (silu(x W1^T) * (x W3^T)) W2^T`` with ``w1_EFD``, ``w3_EFD``
(gate and up, F x D each) and ``w2_EDF`` (down, D x F): 3 x D x F weights per expert, the
count moesim/compute/counts.py uses (``ffn_matrices = 3``). Shared experts are one fused SwiGLU
of width ``num_shared_experts x shared_expert_ffn`` (same parameter count as separate ones).

Output: ``y_TD = shared(x) + sum_k weight_TK * expert_TK(x)``; a dropped copy contributes 0,
so the layer output for that slot is the residual stream alone (the caller adds x). Under
overflow ``shared`` an overflowing copy of gate weight w adds ``w * shared(x)`` instead.

Execution paths (``impl``), all giving the same output (tests: fp32 atol 1e-5):
- ``loop``: per-expert gather (index_select), 3 matmuls, ``index_add_`` back;
- ``grouped_mm``: copies sorted by expert, ``torch._grouped_mm`` with offsets;
- ``bmm``: copies scattered into a zero-padded ``x_ECD`` buffer (C = max count), ``torch.bmm``;
- ``grouped``: ``grouped_mm`` where it runs for this device/dtype, else ``bmm``.

Analytic counts (checked exactly by tests against moesim.compute.counts):
params = D x E (router) [+ E bias] + E x 3 D F + 3 D x S;
forward FLOPs = 2 x T x D x E + sum_e counts_e x 2 x 3 D F + T x 2 x 3 D S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from validation.torch_router import MoEConfig, Router, Routing

__all__ = ["MoEConfig", "MoEBlock", "Routing", "StepRecord", "SwiGLU", "analytic_params", "forward_flops"]


def analytic_params(cfg: MoEConfig) -> int:
    """Parameters of one MoE block by the formula in the module docstring."""
    router = cfg.hidden * cfg.num_experts + (cfg.num_experts if cfg.router_bias else 0)
    routed = cfg.num_experts * 3 * cfg.hidden * cfg.expert_ffn
    shared = 3 * cfg.hidden * cfg.num_shared_experts * cfg.shared_expert_ffn
    return router + routed + shared


def forward_flops(cfg: MoEConfig, tokens: int, counts_E) -> int:
    """Matmul FLOPs of one forward pass (2 per multiply-add) given the computed copies per expert."""
    n_copies = int(sum(int(c) for c in counts_E))
    router = 2 * tokens * cfg.hidden * cfg.num_experts
    routed = n_copies * 2 * 3 * cfg.hidden * cfg.expert_ffn
    shared = tokens * 2 * 3 * cfg.hidden * cfg.num_shared_experts * cfg.shared_expert_ffn
    return router + routed + shared


@dataclass(frozen=True)
class StepRecord:
    """What one forward recorded: counts and per-token choices (numpy-free, on CPU)."""

    demand_E: torch.Tensor
    counts_E: torch.Tensor
    topk_ids_TK: torch.Tensor
    expert_TK: torch.Tensor
    dropped: int
    rerouted: int
    backed_up: int = 0


class SwiGLU(torch.nn.Module):
    """One dense SwiGLU FFN D -> F -> D (used for the shared experts)."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.w1 = torch.nn.Linear(hidden, ffn, bias=False)
        self.w3 = torch.nn.Linear(hidden, ffn, bias=False)
        self.w2 = torch.nn.Linear(ffn, hidden, bias=False)

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_TD)) * self.w3(x_TD))


def _contiguous_grad(t: torch.Tensor) -> torch.Tensor:
    # NOTE: torch._grouped_mm's CPU backward rejects expanded (stride-0) gradients.
    if t.requires_grad:
        t.register_hook(lambda g: g.contiguous())
    return t


def grouped_mm(x_ND, w_EXY, offs_E):
    """``torch._grouped_mm`` of sorted rows with per-expert weights ``w_EXY`` (X = in, Y = out)."""
    return _contiguous_grad(torch._grouped_mm(x_ND, w_EXY, offs=offs_E))


def _ok_grouped(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs for this device and dtype (probed once per pair)."""
    key = (device.type, dtype)
    if key not in _GROUPED_OK:
        try:
            x = torch.zeros(16, 16, device=device, dtype=dtype)
            w = torch.zeros(2, 16, 16, device=device, dtype=dtype)
            torch._grouped_mm(x, w, offs=torch.tensor([8, 16], device=device, dtype=torch.int32))
            _GROUPED_OK[key] = True
        except (RuntimeError, AttributeError, NotImplementedError):
            _GROUPED_OK[key] = False
    return _GROUPED_OK[key]


_GROUPED_OK: dict = {}


class Experts(torch.nn.Module):
    """E routed SwiGLU experts stored as stacked weights (w1_EFD, w3_EFD, w2_EDF)."""

    def __init__(self, num_experts: int, hidden: int, ffn: int):
        super().__init__()
        bound = 1.0 / math.sqrt(hidden)
        self.w1_EFD = torch.nn.Parameter(torch.empty(num_experts, ffn, hidden).uniform_(-bound, bound))
        self.w3_EFD = torch.nn.Parameter(torch.empty(num_experts, ffn, hidden).uniform_(-bound, bound))
        b2 = 1.0 / math.sqrt(ffn)
        self.w2_EDF = torch.nn.Parameter(torch.empty(num_experts, hidden, ffn).uniform_(-b2, b2))

    def forward_sorted(self, x_ND, counts_E, impl: str):
        """Apply expert e to its rows of ``x_ND`` (rows sorted by expert, ``counts_E`` each)."""
        if impl == "grouped":
            if not _ok_grouped(x_ND.device, x_ND.dtype):
                return self._bmm(x_ND, counts_E)
            try:
                return self._grouped(x_ND, counts_E)
            except RuntimeError:  # a layout or alignment this build's kernel refuses: fall back for good
                _GROUPED_OK[(x_ND.device.type, x_ND.dtype)] = False
                return self._bmm(x_ND, counts_E)
        return {"loop": self._loop, "grouped_mm": self._grouped, "bmm": self._bmm}[impl](x_ND, counts_E)

    def _loop(self, x_ND, counts_E):
        outs, start = [], 0
        for e, c in enumerate(counts_E.tolist()):
            if c:
                xe = x_ND[start:start + c]
                h = F.silu(xe @ self.w1_EFD[e].t()) * (xe @ self.w3_EFD[e].t())
                outs.append(h @ self.w2_EDF[e].t())
            start += c
        return torch.cat(outs) if outs else x_ND.new_zeros(0, x_ND.shape[1])

    def _grouped(self, x_ND, counts_E):
        offs_E = torch.cumsum(counts_E, 0).to(torch.int32)
        h_NF = F.silu(grouped_mm(x_ND, self.w1_EFD.transpose(-2, -1), offs_E))
        h_NF = h_NF * grouped_mm(x_ND, self.w3_EFD.transpose(-2, -1), offs_E)
        return grouped_mm(h_NF, self.w2_EDF.transpose(-2, -1), offs_E)

    def _bmm(self, x_ND, counts_E):
        E, N = counts_E.numel(), x_ND.shape[0]
        C = int(counts_E.max()) if N else 0
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        expert_N = torch.repeat_interleave(torch.arange(E, device=x_ND.device), counts_E)
        row_N = torch.arange(N, device=x_ND.device) - starts_E[expert_N]
        x_ECD = x_ND.new_zeros(E, C, x_ND.shape[1])
        x_ECD = x_ECD.index_put((expert_N, row_N), x_ND)
        h_ECF = F.silu(torch.bmm(x_ECD, self.w1_EFD.transpose(1, 2))) * torch.bmm(x_ECD, self.w3_EFD.transpose(1, 2))
        y_ECD = torch.bmm(h_ECF, self.w2_EDF.transpose(1, 2))
        return y_ECD[expert_N, row_N]


def sort_copies(routing: Routing):
    """Computed copies sorted by expert: (token index, slot index) per copy, stable in token order."""
    expert_TK = routing.expert_TK
    K = expert_TK.shape[1]
    flat = expert_TK.reshape(-1)
    keep = (flat >= 0).nonzero().flatten()
    order = torch.sort(flat[keep], stable=True).indices
    copy = keep[order]
    return copy // K, copy % K


class MoEBlock(torch.nn.Module):
    """Router + routed experts + shared experts; ``forward`` returns the MoE output (no residual)."""

    def __init__(self, cfg: MoEConfig, impl: str = "grouped", dtype: torch.dtype = torch.float32):
        super().__init__()
        if impl not in ("loop", "grouped_mm", "bmm", "grouped"):
            raise ValueError(f"impl {impl!r}: allowed loop, grouped_mm, bmm, grouped")
        self.cfg, self.impl = cfg, impl
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        self.router = Router(cfg)
        self.experts = Experts(cfg.num_experts, cfg.hidden, cfg.expert_ffn)
        width = cfg.num_shared_experts * cfg.shared_expert_ffn
        self.shared = SwiGLU(cfg.hidden, width) if width else None
        torch.random.set_rng_state(gen_state)
        self.to(dtype)
        self.last: StepRecord | None = None
        self.record = True

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        routing = self.router(x_TD)
        self._remember(routing)
        self.last_routing = routing
        tok_N, slot_N = sort_copies(routing)
        y_ND = self.experts.forward_sorted(x_TD[tok_N], routing.counts_E, self.impl)
        w_N1 = routing.weight_TK[tok_N, slot_N].unsqueeze(-1)
        out_TD = torch.zeros_like(x_TD).index_add(0, tok_N, y_ND * w_N1)
        if self.shared is not None:
            shared_TD = self.shared(x_TD)
            if routing.backup_weight_T is not None:  # backup copies (overflow 'shared')
                shared_TD = shared_TD * (1.0 + routing.backup_weight_T.unsqueeze(-1))
            out_TD = out_TD + shared_TD
        return out_TD

    def aux_losses(self) -> torch.Tensor:
        """``aux_coef x aux + z_coef x z`` of the last forward (0-dim tensor)."""
        r = self.last_routing
        return self.cfg.aux_loss_coef * r.aux_loss + self.cfg.z_loss_coef * r.z_loss

    def _remember(self, r: Routing) -> None:
        if self.record:
            self.last = StepRecord(
                demand_E=r.demand_E.detach().cpu(), counts_E=r.counts_E.detach().cpu(),
                topk_ids_TK=r.topk_ids_TK.detach().cpu(), expert_TK=r.expert_TK.detach().cpu(),
                dropped=r.dropped, rerouted=r.rerouted, backed_up=r.backed_up,
            )
