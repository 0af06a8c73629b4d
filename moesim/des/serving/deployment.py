"""Replica costs and KV transfers from a deployment: model x hardware profile x layout.

``from_deployment`` prices iterations with the analytic step model (``moesim.step``) and sizes
the KV cache with the memory model (``moesim.compute.memory``):

- a replica is one TP/EP group of ``cluster.devices`` devices running ``par``; a decode
  iteration of a replica batch of b sequences is ``decode_iteration(batch_per_device = b /
  devices, context)``; a prefill iteration of T tokens is ``prefill_iteration(prompt_len =
  min(T, prompt_len_hint), prompts_per_device = T / prompt_len / devices)``;
- KV capacity (tokens) = ``kv_tokens_fit`` of one device (HBM x ``memory_fraction`` minus the
  weights of the most loaded stage, over KV bytes per token) x the attention groups holding
  distinct sequences (devices / (tp x pp)); ``memory_fraction`` 0.9 is vLLM's default
  ``gpu_memory_utilization`` (the rest: activations, CUDA graphs, fragmentation);
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
from moesim.specs import Cluster, HardwareProfile, ModelSpec, Parallelism, check_cluster, check_parallelism


def kv_capacity_tokens(model: ModelSpec, hw: HardwareProfile, par: Parallelism, devices: int, *,
                       dtype: str = "fp8", kv_dtype: str = "bf16", memory_fraction: float = 0.9) -> int:
    """Tokens of KV cache a replica holds; InfeasibleError when the weights leave no room."""
    if not 0 < memory_fraction <= 1:
        raise SpecError("memory_fraction", memory_fraction, "must be in (0, 1]")
    reserve_GiB = (1 - memory_fraction) * hw.hbm_bytes / units.GiB
    fp = memory_footprint(model, hw, par, mode="serve", weight_dtype=dtype, kv_dtype=kv_dtype,
                          reserve_GiB=reserve_GiB)
    groups = max(1, devices // (par.tp * par.pp))
    tokens = fp.kv_tokens_fit * groups
    if tokens < 1:
        raise InfeasibleError(
            f"{model.name} on {devices} x {hw.name} ({_layout(par)}): weights take "
            f"{fp.weight_bytes / units.GiB:.1f} GiB of {fp.capacity_bytes / units.GiB:.1f} GiB per device, "
            f"no room for a KV cache at memory_fraction {memory_fraction}")
    return int(tokens)


def _layout(par: Parallelism) -> str:
    return f"tp={par.tp} ep={par.ep} dp={par.dp} pp={par.pp} attention={par.attention_layout}"


def from_deployment(model: ModelSpec, hw: HardwareProfile, cluster: Cluster, par: Parallelism, *,
                    dtype: str = "fp8", kv_dtype: str = "bf16", overlap: str = "none",
                    prompt_len_hint: int = 2048, memory_fraction: float = 0.9,
                    points_per_octave: int = 1, prefill_overlap: str | None = None) -> GridCost:
    """A ``GridCost`` for one replica of ``model`` on ``cluster`` laid out as ``par``.

    ``prefill_overlap`` (default: ``overlap``) is the step overlap of prefill and mixed passes:
    a deployment may run its (eager) prefill without the two-micro-batch split that its
    (graph-replayed) decode uses, since each micro-batch pays the host issue time again."""
    try:
        from moesim.step.inference import decode_iteration, prefill_iteration
    except ImportError:  # pragma: no cover - the step model ships with moesim
        raise SpecError("cost", "from_deployment", "step model not available") from None
    check_cluster(cluster, hw)
    check_parallelism(model, par, cluster)
    if prompt_len_hint < 1:
        raise SpecError("prompt_len_hint", prompt_len_hint, "must be >= 1")
    n = cluster.devices
    kw = dict(dtype=dtype, kv_dtype=kv_dtype, overlap=overlap, check_memory=False)
    kw_pf = dict(kw, overlap=overlap if prefill_overlap is None else prefill_overlap)

    def decode_fn(batch: int, context: float) -> float:
        return decode_iteration(model, hw, cluster, par, batch_per_device=batch / n,
                                context=int(math.ceil(context)), **kw).step_time_s

    def prefill_fn(tokens: int) -> float:
        s = min(tokens, prompt_len_hint)
        return prefill_iteration(model, hw, cluster, par, prompt_len=s,
                                 prompts_per_device=tokens / s / n, **kw_pf).step_time_s

    return GridCost(
        prefill_fn=prefill_fn, decode_fn=decode_fn,
        kv_capacity_tokens=kv_capacity_tokens(model, hw, par, n, dtype=dtype, kv_dtype=kv_dtype,
                                              memory_fraction=memory_fraction),
        kv_bytes_per_token=kv_bytes_per_token(model, Parallelism(), kv_dtype),
        devices=n, points_per_octave=points_per_octave,
    )


def kv_transfer(hw: HardwareProfile, cluster: Cluster, par: Parallelism) -> KVTransfer:
    """KV transfer links of one prefill replica over its scale-out network (module docstring)."""
    if hw.scale_out is None:
        raise SpecError("hardware.scale_out", hw.name,
                        "disaggregated serving needs a profile with a scale-out NIC bandwidth")
    topo = build_topology(hw, cluster.devices, cluster.domain_size(hw))
    return KVTransfer(bandwidth_Bps=topo.scale_out_Bps * par.tp, latency_s=topo.scale_out_latency_s,
                      links=max(1, cluster.devices // par.tp))
