"""The router of the reference MoE block: scores, (group-limited, noisy) top-k, capacity.

Legend of shape suffixes: T tokens, K top-k slots, E experts, G expert groups, D hidden,
F expert FFN width. ``-1`` in an expert-id tensor means "not computed" (dropped copy).

Routing, in order (each step cites where the convention comes from):
1. ``logits_TE = x_TD @ w_router_ED^T``; in training with ``router_noise_std > 0`` a fixed-std
   Gaussian is added to the logits (noisy top-k, Shazeer et al. 2017 eq. 4, with a fixed std
   instead of the learned ``softplus(x W_noise)`` so the router keeps exactly ``D x E`` weights).
2. ``scores_TE = softmax(logits)`` or ``sigmoid(logits)``.
3. Selection uses ``scores + bias`` (DeepSeek-V3's aux-free correction bias when
   ``router_bias``); with ``n_groups > 1`` a group's score is the sum of its top-2 selection
   scores (top-1 when a group has one expert) and only the best ``topk_groups`` groups stay
   eligible (DeepSeek-V3 ``noaux_tc``).
4. ``topk_ids_TK`` = the k best eligible experts; gate weights are their scores, divided by
   their sum when ``norm_topk_prob``, times ``routed_scaling_factor``.
5. Capacity (when ``capacity_factor`` is set): ``C = ceil(cf x T x K / E)`` copies per expert.
   Copies claim slots in priority order slot-major (all first choices, then all second
   choices, ...; token order within a slot; GShard/Switch). A copy past ``C`` is dropped
   (``drop``: the token skips that expert, the residual passes) or, with ``reroute``, after all
   first-pass claims it moves to its next-preferred eligible expert that still has room and that
   the token has not chosen (the backup path); its gate weight becomes that expert's score under
   the same normalisation. A copy with no room anywhere is dropped. With ``shared`` (needs
   shared experts) every overflowing copy is served by the shared experts instead: the block
   adds ``weight x shared(x)`` for it (the gate weight it had for its routed expert), so the
   shared FFN is the backup path and no copy is lost (moesim.routing's ``overflow='shared'``).
6. Losses: Switch load-balancing ``aux = E x sum_e f_e P_e`` with ``f_e`` = fraction of the
   T x K routed copies that chose ``e`` (before capacity) and ``P_e`` = mean over tokens of the
   (per-token normalised) scores (Fedus et al. 2021 eq. 4); router z-loss
   ``z = mean_t logsumexp(logits_t)^2`` (Zoph et al. 2022 eq. 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class MoEConfig:
    """Dimensions and routing options of one MoE block (names as in moesim's MoESpec)."""

    hidden: int
    expert_ffn: int
    num_experts: int
    top_k: int
    num_shared_experts: int = 0
    shared_expert_ffn: int = 0
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    router_bias: bool = False
    n_groups: int = 1
    topk_groups: int = 1
    router_noise_std: float = 0.0
    capacity_factor: float | None = None
    overflow: Literal["drop", "reroute", "shared"] = "drop"
    aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    seed: int = 0

    def __post_init__(self):
        checks = {
            "hidden": self.hidden > 0, "expert_ffn": self.expert_ffn > 0,
            "num_experts": self.num_experts > 0,
            "top_k": 0 < self.top_k <= self.num_experts,
            "n_groups": self.n_groups > 0 and self.num_experts % self.n_groups == 0,
            "topk_groups": 0 < self.topk_groups <= self.n_groups
            and self.top_k <= self.topk_groups * (self.num_experts // self.n_groups),
            "shared_expert_ffn": (self.num_shared_experts > 0) == (self.shared_expert_ffn > 0),
            "capacity_factor": self.capacity_factor is None or self.capacity_factor > 0,
            "router_scoring": self.router_scoring in ("softmax", "sigmoid"),
            "overflow": self.overflow in ("drop", "reroute", "shared")
            and (self.overflow != "shared" or self.num_shared_experts > 0),
            "router_noise_std": self.router_noise_std >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"MoEConfig: invalid {bad[0]} = {getattr(self, bad[0])!r} ({self})")

    def capacity(self, tokens: int) -> int | None:
        """Copies one expert may take: ``ceil(cf x T x K / E)``; None when dropless."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts)


@dataclass(frozen=True)
class Routing:
    """Where each token copy goes. Tensors on the input's device.

    topk_ids_TK: first-choice experts (int64), before capacity.
    expert_TK: expert that computes the copy after capacity/reroute; -1 = dropped.
    weight_TK: gate weight (0 for dropped copies); differentiable.
    demand_E: copies that chose each expert (before capacity); counts_E: copies computed.
    backup_weight_T: summed gate weight of the token's copies served by the shared experts
    (overflow ``shared`` with a capacity; None otherwise); ``backed_up`` counts those copies.
    """

    topk_ids_TK: torch.Tensor
    expert_TK: torch.Tensor
    weight_TK: torch.Tensor
    demand_E: torch.Tensor
    counts_E: torch.Tensor
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    capacity: int | None
    rerouted: int = 0
    dropped: int = 0
    backup_weight_T: torch.Tensor | None = None
    backed_up: int = 0


def _scores(logits_TE: torch.Tensor, scoring: str) -> torch.Tensor:
    return {"softmax": lambda z: z.softmax(-1), "sigmoid": torch.sigmoid}[scoring](logits_TE)


def group_mask(sel_TE: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Bool mask of eligible experts: the best ``topk_groups`` groups by top-2 score sum."""
    T, E = sel_TE.shape
    if n_groups == 1:
        return torch.ones_like(sel_TE, dtype=torch.bool)
    sel_TGe = sel_TE.view(T, n_groups, E // n_groups)
    top = min(2, E // n_groups)
    group_score_TG = sel_TGe.topk(top, dim=-1).values.sum(-1)
    best_TG = group_score_TG.topk(topk_groups, dim=-1).indices
    keep_TG = torch.zeros(T, n_groups, dtype=torch.bool, device=sel_TE.device)
    keep_TG.scatter_(1, best_TG, True)
    return keep_TG.unsqueeze(-1).expand(T, n_groups, E // n_groups).reshape(T, E)


def slot_positions(expert_flat: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Position of each copy in its expert's queue, copies taken in the given order (-1 skipped)."""
    n = expert_flat.numel()
    key = torch.where(expert_flat < 0, num_experts, expert_flat)
    order = torch.sort(key, stable=True).indices
    sorted_key = key[order]
    counts = torch.bincount(sorted_key, minlength=num_experts + 1)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty(n, dtype=torch.long, device=expert_flat.device)
    pos[order] = torch.arange(n, device=expert_flat.device) - starts[sorted_key]
    return pos


def _reroute(expert_TK, dropped_TK, pref_TE, eligible_TE, load_E, cap):
    """Move dropped copies, in slot-major priority, to the next preferred expert with room."""
    T, K = expert_TK.shape
    expert = expert_TK.tolist()
    pref, ok = pref_TE.tolist(), eligible_TE.tolist()
    load = load_E.tolist()
    moved = 0
    for k in range(K):
        for t in dropped_TK[:, k].nonzero().flatten().tolist():
            taken = set(expert[t])
            for e in pref[t]:
                if ok[t][e] and e not in taken and load[e] < cap:
                    expert[t][k] = e
                    load[e] += 1
                    moved += 1
                    break
    return torch.tensor(expert, dtype=torch.long, device=expert_TK.device), moved


class Router(torch.nn.Module):
    """Top-k router (module docstring gives the exact convention)."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = torch.nn.Linear(cfg.hidden, cfg.num_experts, bias=False)
        # DeepSeek-V3 correction bias: used for selection only; a parameter so it is counted.
        self.bias_E = torch.nn.Parameter(torch.zeros(cfg.num_experts)) if cfg.router_bias else None
        self._noise_gen: torch.Generator | None = None

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        if self._noise_gen is None or self._noise_gen.device != like.device:
            self._noise_gen = torch.Generator(device=like.device).manual_seed(self.cfg.seed + 7)
        return torch.randn(like.shape, generator=self._noise_gen, device=like.device, dtype=like.dtype)

    def forward(self, x_TD: torch.Tensor) -> Routing:
        cfg = self.cfg
        logits_TE = self.gate(x_TD).float()
        if self.training and cfg.router_noise_std > 0:
            logits_TE = logits_TE + cfg.router_noise_std * self._noise(logits_TE)
        scores_TE = _scores(logits_TE, cfg.router_scoring)
        sel_TE = scores_TE.detach() + (self.bias_E.detach() if self.bias_E is not None else 0.0)
        eligible_TE = group_mask(sel_TE, cfg.n_groups, cfg.topk_groups)
        sel_TE = sel_TE.masked_fill(~eligible_TE, float("-inf"))
        topk_ids_TK = sel_TE.topk(cfg.top_k, dim=-1).indices
        denom_T1 = scores_TE.gather(1, topk_ids_TK).sum(-1, keepdim=True) if cfg.norm_topk_prob else 1.0
        T, E = scores_TE.shape
        demand_E = torch.bincount(topk_ids_TK.flatten(), minlength=E)
        expert_TK, rerouted, dropped = self._apply_capacity(topk_ids_TK, sel_TE, eligible_TE, T)
        safe_TK = expert_TK.clamp(min=0)
        weight_TK = scores_TE.gather(1, safe_TK) / (denom_T1 + 1e-20 if cfg.norm_topk_prob else 1.0)
        weight_TK = weight_TK * cfg.routed_scaling_factor
        backup_weight_T, backed_up = None, 0
        if cfg.overflow == "shared" and cfg.capacity_factor is not None:  # NOTE: no extra ops otherwise
            backup_TK = expert_TK < 0  # (validation/count_ops.py counts the default path's operators)
            backup_weight_T = (weight_TK * backup_TK).sum(-1).to(x_TD.dtype)
            backed_up = int(backup_TK.sum())
        weight_TK = weight_TK * (expert_TK >= 0)
        counts_E = torch.bincount(safe_TK[expert_TK >= 0], minlength=E)
        probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
        f_E = demand_E.float() / (T * cfg.top_k)
        aux = E * (f_E * probs_TE.mean(0)).sum()
        z = torch.logsumexp(logits_TE, dim=-1).pow(2).mean()
        return Routing(
            topk_ids_TK=topk_ids_TK, expert_TK=expert_TK, weight_TK=weight_TK.to(x_TD.dtype),
            demand_E=demand_E, counts_E=counts_E, aux_loss=aux, z_loss=z,
            capacity=cfg.capacity(T), rerouted=rerouted, dropped=dropped - backed_up,
            backup_weight_T=backup_weight_T, backed_up=backed_up,
        )

    def _apply_capacity(self, topk_ids_TK, sel_TE, eligible_TE, T):
        """Returns (expert_TK with -1 for dropped, copies rerouted, copies dropped)."""
        cap = self.cfg.capacity(T)
        if cap is None:
            return topk_ids_TK, 0, 0
        E = self.cfg.num_experts
        pos_KT = slot_positions(topk_ids_TK.t().reshape(-1), E).view(-1, T)
        over_TK = (pos_KT >= cap).t()
        expert_TK = topk_ids_TK.masked_fill(over_TK, -1)
        rerouted = 0
        if self.cfg.overflow == "reroute" and bool(over_TK.any()):
            load_E = torch.bincount(expert_TK[expert_TK >= 0], minlength=E)
            pref_TE = sel_TE.argsort(dim=-1, descending=True)
            expert_TK, rerouted = _reroute(expert_TK, over_TK, pref_TE, eligible_TE, load_E, cap)
        return expert_TK, rerouted, int((expert_TK < 0).sum())
