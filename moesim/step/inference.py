"""Inference iterations: a prefill of a batch of prompts and a decode step at a context length.

Attention layout ``par.attention_layout``: ``tp`` shards heads over ``par.tp`` devices (tokens
of the TP group replicated through attention, split for the MoE); ``dp`` (DP attention) runs a
full attention per device on its own requests. MoE layers use EP over ``par.ep`` devices.

tokens/s per device:
- decode: ``batch_per_device`` output tokens per iteration / (iteration time x pp)
  (with pp stages, each device runs one stage; a token needs pp stage times);
- prefill: prompt tokens per device per iteration / (iteration time x pp).
"""
from __future__ import annotations

import math
from typing import Literal

from moesim.compute.counts import forward_flops_per_token, sequence_forward_flops_per_token
from moesim.errors import SpecError
from moesim.specs import Cluster, HardwareProfile, ModelSpec, Parallelism, RoutingSpec
from moesim.step import _adapters as ad
from moesim.step.breakdown import StepBreakdown
from moesim.step.common import check_deployment, check_routing, critical_stage, gib, require_fit, summed
from moesim.step.layer import LayerSetup, Overlap, make_setup

UNIFORM = RoutingSpec()


def _setup(model, hw, cluster, par, *, dtype, phase, routing, a2a_mode, kv_dtype, comm_sms=None) -> LayerSetup:
    if par.attention_layout == "dp" and par.tp > 1:
        raise SpecError("parallel.tp", par.tp, "DP attention (attention_layout dp) needs tp = 1")
    return make_setup(model, hw, dtype=dtype, phase=phase, attention_tp=par.tp, cp=par.cp, ep=par.ep,
                      redundant_experts=par.redundant_experts,
                      ranks_per_node=cluster.domain_size(hw), skew=routing.skew, a2a_mode=a2a_mode,
                      kv_dtype=kv_dtype, comm_sms=comm_sms)


def _iteration(model, hw, cluster, par, setup, *, phase, tokens, context, overlap, flops_per_token,
               footprint) -> StepBreakdown:
    """Time the critical stage for ``tokens`` per device and assemble the breakdown."""
    halves = 2 if overlap == "two_microbatch" else 1
    mb_tokens = tokens / halves
    head = ad.gemm_s(hw, mb_tokens * setup.attention_tp if phase == "decode" else mb_tokens,
                     model.vocab_size / setup.attention_tp, model.hidden, "bf16") * halves
    if phase == "prefill":  # only the last token of each prompt needs logits
        head = 0.0
    ops, t, st, last = critical_stage(setup, model, par.pp, mb_tokens, context, overlap, head)
    comp = summed(ops, scale=halves)
    imb = max((o.expert_imbalance for o in ops), default=1.0)
    return StepBreakdown(
        phase=phase, overlap=overlap, step_time_s=t * par.pp, tokens_per_step_per_device=tokens,
        **comp, embedding_head_s=head if last else 0.0, exposed_comm_s=st.exposed_comm_s,
        host_s=st.exposed_host_s, host_issue_s=st.host_s,
        model_flops_per_step_per_device=flops_per_token * tokens, peak_flops=hw.peak_flops(setup.dtype),
        memory_GiB=gib(footprint.total_bytes), memory_capacity_GiB=gib(footprint.capacity_bytes),
        expert_imbalance=imb,
    )


def decode_iteration(model: ModelSpec, hw: HardwareProfile, cluster: Cluster, par: Parallelism, *,
                     batch_per_device: int, context: int, dtype: str = "fp8", kv_dtype: str = "bf16",
                     routing: RoutingSpec = UNIFORM, overlap: Overlap = "none",
                     a2a_mode: Literal["auto", "normal", "low_latency"] = "auto",
                     check_memory: bool = True, comm_sms: int | None = None) -> StepBreakdown:
    """One decode step: ``batch_per_device`` sequences per device, each with ``context`` tokens of KV.

    Raises SpecError for a bad layout, InfeasibleError when weights + KV do not fit.
    """
    check_deployment(model, hw, cluster, par, overlap)
    check_routing(routing)
    for name, v in (("batch_per_device", batch_per_device), ("context", context)):
        if v <= 0:
            raise SpecError(name, v, "must be positive")
    setup = _setup(model, hw, cluster, par, dtype=dtype, phase="decode", routing=routing,
                   a2a_mode=a2a_mode, kv_dtype=kv_dtype, comm_sms=comm_sms)
    fp = ad.memory(model, hw, par, mode="serve", weight_dtype=dtype, kv_dtype=kv_dtype,
                   kv_tokens=batch_per_device * par.tp * par.pp * context)
    if check_memory:
        require_fit(fp)
    flops = forward_flops_per_token(model, context, mla_absorbed=True)
    return _iteration(model, hw, cluster, par, setup, phase="decode", tokens=batch_per_device,
                      context=context, overlap=overlap, flops_per_token=flops, footprint=fp)


def prefill_iteration(model: ModelSpec, hw: HardwareProfile, cluster: Cluster, par: Parallelism, *,
                      prompt_len: int, prompts_per_device: float, dtype: str = "fp8",
                      kv_dtype: str = "bf16", routing: RoutingSpec = UNIFORM, overlap: Overlap = "none",
                      a2a_mode: Literal["auto", "normal", "low_latency"] = "auto",
                      check_memory: bool = True, comm_sms: int | None = None) -> StepBreakdown:
    """One prefill iteration: ``prompts_per_device`` prompts of ``prompt_len`` tokens per device
    (causal attention: the mean query attends to (S + 1) / 2 keys)."""
    check_deployment(model, hw, cluster, par, overlap)
    check_routing(routing)
    if prompt_len <= 0 or prompts_per_device <= 0:
        raise SpecError("prompt_len/prompts_per_device", (prompt_len, prompts_per_device), "must be positive")
    tokens = prompt_len * prompts_per_device
    setup = _setup(model, hw, cluster, par, dtype=dtype, phase="prefill", routing=routing,
                   a2a_mode=a2a_mode, kv_dtype=kv_dtype, comm_sms=comm_sms)
    fp = ad.memory(model, hw, par, mode="serve", weight_dtype=dtype, kv_dtype=kv_dtype,
                   kv_tokens=int(math.ceil(tokens * par.tp * par.pp)))
    if check_memory:
        require_fit(fp)
    flops = sequence_forward_flops_per_token(model, prompt_len)
    return _iteration(model, hw, cluster, par, setup, phase="prefill", tokens=tokens,
                      context=(prompt_len + 1) / 2, overlap=overlap, flops_per_token=flops, footprint=fp)
