"""Replica costs and KV transfers from a ``Deployment`` (moesim/specs/deployment.py).

``from_deployment`` prices iterations with the step model (``moesim.step.estimate``) and sizes
the KV cache with the memory model (``moesim.compute.memory``):

- a replica is one TP/EP group of ``deployment.devices`` devices; a decode iteration of a
  replica batch of b sequences is the step model's decode at ``batch_per_device = b / devices``
  and ``ceil(context)``; a prefill iteration of T tokens is its prefill of ``prompt_len =
  min(T, prompt_len_hint)`` at ``prompts_per_device = T / prompt_len / devices`` (under the
  deployment's prefill overlap), its queries attending the hinted prompt's causal mean
  (prompt_len_hint + 1) / 2 keys: below one prompt, T tokens are a chunk of a longer prompt
  (chunked prefill), which attends the prefix already prefilled as well as itself;
- KV capacity (tokens) = ``kv_tokens_fit`` of one device (HBM x ``memory_fraction`` minus the
  weights of the most loaded stage, over KV bytes per token) x the attention groups holding
  distinct sequences (devices / (tp x pp)); ``memory_fraction`` is the engine's share (the
  deployment stack's: vLLM's default ``gpu_memory_utilization`` 0.9, SGLang's
  ``mem_fraction_static`` by engine size, moesim/data/stacks.toml; 0.9 where the stack states
  none); the rest holds activations, CUDA graphs and fragmentation. An engine that sizes its
  cache from what the weights leave (the stack's ``kv_free_fraction``: TensorRT-LLM's
  kv_cache_free_gpu_mem_fraction) holds that share of HBM minus the weights instead;
- KV bytes per token for the transfer: all layers at ``kv_dtype`` (``kv_bytes_per_token`` with
  tp = 1: the whole cache of a sequence).

``kv_transfer`` prices the disaggregated KV move on the prefill replica's scale-out network
(``moesim.comm.topology``: achievable NIC bandwidth = line rate x the profile's
scale_out_bandwidth_fraction, latency from the profile): a sequence's KV lives on one attention
group of ``tp`` devices, which send it over their ``tp`` NICs in parallel; a replica has
devices / tp such links.
"""
from __future__ import annotations

import math

from moesim import units
from moesim.comm.topology import build_topology
from moesim.compute.memory import kv_bytes_per_token, memory_footprint
from moesim.des.serving.cost import GridCost
from moesim.des.serving.system import KVTransfer
from moesim.errors import InfeasibleError, SpecError
from moesim.specs import Deployment, ModelSpec, Parallelism


# the share of device memory a replica's engine takes when its stack states none (vLLM's
# gpu_memory_utilization default)
DEFAULT_MEMORY_FRACTION = 0.9


def engine_memory_fraction(stack, devices: int) -> float:
    """The share of device memory a replica of ``devices`` devices running ``stack`` (a name or a
    ``SoftwareStack``) sizes its KV cache with: the stack's engine share
    (moesim/step/stacks.py ``serving_memory_fraction``), ``DEFAULT_MEMORY_FRACTION`` where it
    states none."""
    from moesim.step.stacks import serving_memory_fraction

    return serving_memory_fraction(stack, devices) or DEFAULT_MEMORY_FRACTION


def kv_capacity_tokens(model: ModelSpec, deployment: Deployment, *, memory_fraction: float | None = None,
                       kv_free_fraction: float | None = None) -> int:
    """Tokens of KV cache a replica holds; InfeasibleError when the weights leave no room.

    Two ways an engine sizes its cache: a share of each device's memory for weights and KV
    (``memory_fraction``: vLLM's gpu_memory_utilization, SGLang's mem_fraction_static), or a
    share of the memory the loaded weights leave (``kv_free_fraction``: TensorRT-LLM's
    kv_cache_free_gpu_mem_fraction). Neither given: the deployment stack's own, its
    ``kv_free_fraction`` where it states one, else ``engine_memory_fraction`` (vLLM 0.9, SGLang
    by engine size, else ``DEFAULT_MEMORY_FRACTION``). A stated ``memory_fraction`` wins."""
    from moesim.step.stacks import serving_stack

    if memory_fraction is None and kv_free_fraction is None:
        kv_free_fraction = serving_stack(deployment.stack).kv_free_fraction
    hw, par = deployment.hardware, deployment.parallelism
    if memory_fraction is None and kv_free_fraction is not None:
        if not 0 < kv_free_fraction <= 1:
            raise SpecError("kv_free_fraction", kv_free_fraction, "must be in (0, 1]")
        fp = memory_footprint(model, hw, par, mode="serve", weight_dtype=deployment.dtype,
                              kv_dtype=deployment.kv_dtype)
        share = f"kv_free_fraction {kv_free_fraction}"
        per_device = (int(kv_free_fraction * max(0.0, fp.capacity_bytes - fp.weight_bytes) // fp.kv_bytes_per_token)
                      if fp.kv_bytes_per_token > 0 else 0)
    else:
        if memory_fraction is None:
            memory_fraction = engine_memory_fraction(deployment.stack, deployment.devices)
        if not 0 < memory_fraction <= 1:
            raise SpecError("memory_fraction", memory_fraction, "must be in (0, 1]")
        reserve_GiB = (1 - memory_fraction) * hw.hbm_bytes / units.GiB
        fp = memory_footprint(model, hw, par, mode="serve", weight_dtype=deployment.dtype,
                              kv_dtype=deployment.kv_dtype, reserve_GiB=reserve_GiB)
        share = f"memory_fraction {memory_fraction}"
        per_device = fp.kv_tokens_fit
    groups = max(1, deployment.devices // (par.tp * par.pp))
    tokens = per_device * groups
    if tokens < 1:
        raise InfeasibleError(
            f"{model.name} on {deployment.devices} x {hw.name} ({_layout(par)}): weights take "
            f"{fp.weight_bytes / units.GiB:.1f} GiB of {fp.capacity_bytes / units.GiB:.1f} GiB per device, "
            f"no room for a KV cache at {share}")
    return int(tokens)


def _layout(par: Parallelism) -> str:
    return f"tp={par.tp} ep={par.ep} dp={par.dp} pp={par.pp} attention={par.attention_layout}"


def from_deployment(model: ModelSpec, deployment: Deployment, *, skew: str = "uniform", prompt_len_hint: int = 2048,
                    memory_fraction: float | None = None, points_per_octave: int = 1, cache=None) -> GridCost:
    """A ``GridCost`` for one replica of ``model`` run as ``deployment`` (module docstring).

    ``deployment.prefill_overlap`` (default: its ``overlap``) is the schedule of prefill and
    mixed passes: a deployment may run its (eager) prefill without the two-micro-batch split
    that its (graph-replayed) decode uses, since each micro-batch pays the host issue time
    again. ``cache``: a ``moesim.step.StepCache`` to share (a fresh one by default)."""
    from moesim.step import Decode, Prefill, StepCache, estimate

    deployment.check(model)
    if prompt_len_hint < 1:
        raise SpecError("prompt_len_hint", prompt_len_hint, "must be >= 1")
    n = deployment.devices
    cache = StepCache() if cache is None else cache

    def decode_fn(batch: int, context: float) -> float:
        w = Decode(batch / n, math.ceil(context), skew)
        return float(estimate(model, deployment, w, check_memory=False, cache=cache).step_time_s[0])

    def prefill_fn(tokens: int) -> float:
        s = min(tokens, prompt_len_hint)
        w = Prefill(s, tokens / s / n, skew, context=(prompt_len_hint + 1) / 2)  # a chunk attends its prompt's mean
        return float(estimate(model, deployment, w, check_memory=False, cache=cache).step_time_s[0])

    return GridCost(
        prefill_fn=prefill_fn, decode_fn=decode_fn,
        kv_capacity_tokens=kv_capacity_tokens(model, deployment, memory_fraction=memory_fraction),
        kv_bytes_per_token=kv_bytes_per_token(model, Parallelism(), deployment.kv_dtype),
        devices=n, points_per_octave=points_per_octave,
    )


def kv_transfer(deployment: Deployment) -> KVTransfer:
    """KV transfer links of one prefill replica over its scale-out network (module docstring)."""
    hw = deployment.hardware
    if hw.scale_out is None:
        raise SpecError("hardware.scale_out", hw.name,
                        "disaggregated serving needs a profile with a scale-out NIC bandwidth")
    topo = build_topology(hw, deployment.devices, deployment.domain_size)
    return KVTransfer(bandwidth_Bps=topo.scale_out_Bps * deployment.tp, latency_s=topo.scale_out_latency_s,
                      links=max(1, deployment.devices // deployment.tp))
