"""Parallelism: how a model is laid out over a cluster (TP, EP, PP, DP, CP, VPP).

Convention (Megatron-Core): world = tp x cp x dp x pp. MoE layers re-fold the same non-pipeline
ranks (tp x cp x dp) into ep x etp x expert-dp, so ep x etp must divide tp x cp x dp. Serving with
data-parallel attention (SGLang/DeepSeek "DP attention") is tp = 1, dp = ep = devices.
Redundant expert slots (load-aware placement, EPLB) let an EP size that does not divide the
routed experts run: EP 72 with 256 experts + 32 redundant slots = 288 = 72 x 4.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from moesim.errors import SpecError
from moesim.specs.cluster import Cluster
from moesim.specs.common import Spec
from moesim.specs.model import ModelSpec


class Parallelism(Spec):
    """Parallel sizes. ``ep`` and ``etp`` apply to MoE layers only."""

    tp: int = Field(1, gt=0, description="tensor parallel (attention and dense FFN)")
    pp: int = Field(1, gt=0, description="pipeline stages")
    dp: int = Field(1, gt=0, description="data parallel replicas (attention)")
    cp: int = Field(1, gt=0, description="context parallel")
    ep: int = Field(1, gt=0, description="expert parallel")
    etp: int = Field(1, gt=0, description="tensor parallel inside each expert")
    vpp: int = Field(1, gt=0, description="virtual pipeline stages per rank (interleaved 1F1B)")
    attention_layout: Literal["tp", "dp"] = Field(
        "tp", description="serving: tp shards heads; dp replicates attention per rank (DP attention)"
    )
    redundant_experts: int = Field(0, ge=0, description="extra expert slots filled with hot experts")

    @model_validator(mode="after")
    def _consistent(self):
        if self.vpp > 1 and self.pp == 1:
            raise SpecError("vpp", self.vpp, "vpp > 1 needs pp > 1")
        if (self.tp * self.cp * self.dp) % (self.ep * self.etp):
            field, value = ("etp", self.etp) if self.etp > 1 else ("ep", self.ep)  # the one the user set
            raise SpecError(field, value, f"allowed: ep x etp (here {self.ep * self.etp}) must divide "
                            f"tp x cp x dp = {self.tp * self.cp * self.dp}")
        return self

    @property
    def world(self) -> int:
        """Devices this layout occupies: tp x cp x dp x pp."""
        return self.tp * self.cp * self.dp * self.pp

    @property
    def expert_dp(self) -> int:
        """Replicas of each expert shard across the non-pipeline ranks."""
        return (self.tp * self.cp * self.dp) // (self.ep * self.etp)


def smallest_redundancy(num_experts: int, ep: int) -> int:
    """Fewest redundant slots that make ``num_experts + r`` divisible by ``ep``."""
    return (-num_experts) % ep


def check_parallelism(model: ModelSpec, par: Parallelism, cluster: Cluster | None = None,
                      pipeline_layout: str | None = None) -> None:
    """Raise SpecError naming the field when ``par`` cannot run ``model`` (on ``cluster``).
    ``pipeline_layout`` (a stated Megatron layout, moesim/specs/pipeline_layout.py) replaces the
    even split's rule pp x vpp <= num_layers: a layout may leave virtual stages without decoder
    layers (the embedding or the loss in one's place: Megatron's account_for_embedding_in_pipeline_split
    / account_for_loss_in_pipeline_split), and ``pipeline_stages`` checks it against pp x vpp."""
    att = model.attention
    if cluster is not None and par.world != cluster.devices:
        raise SpecError(
            "parallel",
            f"tp={par.tp} cp={par.cp} dp={par.dp} pp={par.pp}",
            f"tp x cp x dp x pp = {par.world} must equal cluster.devices = {cluster.devices}",
        )
    if att.num_heads % par.tp:
        raise SpecError("parallel.tp", par.tp, f"must divide num_heads = {att.num_heads}")
    if att.kind != "mla":
        kv = att.num_kv_heads
        if kv % par.tp and par.tp % kv:
            raise SpecError(
                "parallel.tp", par.tp, f"must divide or be a multiple of num_kv_heads = {kv}"
            )
    if par.pp > model.num_layers:
        raise SpecError("parallel.pp", par.pp, f"at most num_layers = {model.num_layers}")
    if pipeline_layout is None and par.pp * par.vpp > model.num_layers:
        raise SpecError(
            "parallel.vpp", par.vpp,
            f"pp x vpp must be at most num_layers = {model.num_layers} unless a pipeline_layout places the stages"
        )
    if model.moe is None:
        if par.ep > 1 or par.redundant_experts:
            raise SpecError("parallel.ep", par.ep, f"{model.name} is dense: ep must be 1")
        return
    slots = model.moe.num_experts + par.redundant_experts
    if slots % par.ep:
        need = smallest_redundancy(model.moe.num_experts, par.ep)
        raise SpecError(
            "parallel.ep",
            par.ep,
            f"must divide routed experts plus redundant slots ({model.moe.num_experts} + "
            f"{par.redundant_experts} = {slots}); set parallel.redundant_experts to "
            f"{need} (or {need} + a multiple of {par.ep}) or pick an ep dividing {model.moe.num_experts}",
        )
    if par.redundant_experts > model.moe.num_experts * (par.ep - 1) and par.ep > 1:
        raise SpecError(
            "parallel.redundant_experts",
            par.redundant_experts,
            "more redundant slots than there are experts to replicate on other ranks",
        )
    if model.moe.expert_ffn % par.etp:
        raise SpecError("parallel.etp", par.etp, f"must divide expert_ffn = {model.moe.expert_ffn}")


def experts_per_rank(model: ModelSpec, par: Parallelism) -> int:
    """Expert slots each EP rank holds (routed experts plus redundant slots, over ep)."""
    if model.moe is None:
        return 0
    return math.ceil((model.moe.num_experts + par.redundant_experts) / par.ep)
