"""Communication of a training step outside the layers: data-parallel gradient and parameter
collectives (distributed optimizer or FSDP) and pipeline point-to-point transfers.

Where each group's ranks sit (Megatron-Core rank order, megatron/core/parallel_state.py
``RankGenerator``, default order ``tp-cp-ep-dp-pp``; expert layers re-fold the non-pipeline
ranks as ``etp-ep-edp``): a group of ``size`` ranks whose neighbours are ``stride`` ranks apart
has ``min(size, domain // stride)`` members in one scale-up domain (at least one). So the dense
data-parallel group (stride tp) of 64 ranks on 8-GPU nodes is 8 nodes x 8, while the expert
data-parallel group (stride etp x ep) of EP 8 on the same nodes has one member per node and
runs entirely over the NICs. Collectives over a group are the hierarchical ring of
moesim/comm/collectives.py on that group's own topology.

Data parallel, distributed optimizer (ZeRO-1; ``sharding`` zero1/ddp): once per step the
gradients are reduce-scattered and the parameters all-gathered, bf16 both (Megatron-Bridge
recipes: grad_reduce_in_fp32 false):
    RS = rs(dense params x 2 B, dense DP group) + rs(expert params x 2 B, expert DP group)    [s]
    AG = the same with all-gather                                                              [s]
(a ddp run all-reduces instead: RS + AG of the same buffer, the ring all-reduce's two halves).

FSDP / ZeRO-3 (``sharding`` fsdp; Zhao et al. 2023, "PyTorch FSDP", arXiv 2304.11277, s3.2-3.3;
MaxText's ``fsdp`` mesh axis under XLA): the parameters stay sharded; every micro-batch
all-gathers each layer's weights before its forward, again before its backward (resharded after
the forward), and reduce-scatters its gradients after the backward:
    per micro-batch: AG_f = ag(stage params x 2 B), AG_b = AG_f, RS_b = rs(stage params x 2 B)
over the same groups as above. Overlap (FSDP forward/backward prefetch, s3.3.2; XLA's
async collective fusion and latency-hiding scheduler that MaxText's recipes enable): the
collective of layer i + 1 runs on its own stream while layer i computes, so per pass
    exposed = max(0, comm - compute) + comm / layers                                           [s]
(the first layer's gather is never hidden). No per-step DP collective is added (the gradients
leave in the backward and the optimizer updates the local shard).

Pipeline P2P (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", s2.2): every micro-batch crosses each of the pp x vpp - 1 chunk
boundaries once forward (activations) and once backward (their gradients):
    bytes = micro_batch x seq_len / (tp x cp) x hidden x 2 B (bf16 pipeline_dtype; sequence
            parallel splits the sequence over tp)
    t_p2p = latency + bytes / bandwidth
scale-up when the whole pipeline's ranks (stride tp x cp x dp) fit in one domain, else over the
NIC. On the critical rank one micro-batch sends/receives 2 x vpp times. Exposure follows the
Megatron-Bridge defaults (src/megatron/bridge/training/comm_overlap.py: pp > 1 with vpp > 1 sets
``overlap_p2p_comm = True``, else ``batch_p2p_comm = True``, blocking): interleaved, each
transfer overlaps the next chunk's compute and only max(0, t_p2p - chunk) is exposed;
non-interleaved, the transfers block (exposed in full).
"""
from __future__ import annotations

from dataclasses import dataclass

from moesim.comm.collectives import collective_time
from moesim.comm.topology import build_topology
from moesim.specs.deployment import Deployment

PIPELINE_BYTES = 2.0  # bf16 activations between stages (Megatron pipeline_dtype)
GRAD_BYTES = 2.0  # bf16 gradient reduction and parameter gather (recipes: grad_reduce_in_fp32 false)


@dataclass(frozen=True)
class GroupCollectives:
    """Reduce-scatter and all-gather seconds of one parameter buffer set over its DP groups."""

    reduce_scatter_s: float
    all_gather_s: float


def group_collective_s(dep: Deployment, kind: str, nbytes: float, size: int, stride: int) -> float:
    """``kind`` collective of ``nbytes`` over a group of ``size`` ranks ``stride`` apart (s)."""
    if size <= 1 or nbytes <= 0:
        return 0.0
    per_domain = max(1, min(size, dep.domain_size // max(1, stride)))
    while size % per_domain:  # a domain holds whole sub-rings only
        per_domain -= 1
    topo = build_topology(dep.hardware, size, per_domain)
    return float(collective_time(topo, kind, nbytes, size, algorithm="auto").time_s)


def dp_collectives(dep: Deployment, dense_params: float, expert_params: float) -> GroupCollectives:
    """Reduce-scatter and all-gather (s) of ``dense_params`` over the dense DP group (dp x cp,
    stride tp) and ``expert_params`` over the expert DP group (stride etp x ep), bf16."""
    dense_dp, stride = dep.dp * dep.cp, dep.tp
    edp, estride = dep.parallelism.expert_dp, dep.etp * dep.ep
    out = []
    for kind in ("reduce_scatter", "all_gather"):
        out.append(group_collective_s(dep, kind, dense_params * GRAD_BYTES, dense_dp, stride)
                   + group_collective_s(dep, kind, expert_params * GRAD_BYTES, edp, estride))
    return GroupCollectives(*out)


def fsdp_exposed_s(comm_s, compute_s, layers: int):
    """Exposed seconds of one pass's per-layer FSDP collectives (module docstring)."""
    import numpy as np

    comm = np.asarray(comm_s, dtype=float)
    return np.maximum(0.0, comm - compute_s) + comm / max(1, layers)


def p2p_transfer_s(dep: Deployment, tokens: float, hidden: int) -> float:
    """One pipeline send/receive of ``tokens`` (already divided by tp x cp) x ``hidden`` (s)."""
    if dep.pp <= 1 or tokens <= 0:
        return 0.0
    hw, eff = dep.hardware, dep.hardware.efficiency.comm
    nbytes = tokens * hidden * PIPELINE_BYTES
    stride = dep.tp * dep.cp * dep.dp
    inside = stride * dep.pp <= dep.domain_size and dep.domain_size > 1
    if inside:
        topo = build_topology(hw, dep.domain_size, dep.domain_size)
        return topo.scale_up_latency_s + nbytes / topo.scale_up_Bps
    topo = build_topology(hw, max(2, dep.devices), 1) if hw.scale_out is not None else None
    if topo is None:  # no scale-out network: the domain is the whole job
        topo = build_topology(hw, dep.domain_size, dep.domain_size)
        return topo.scale_up_latency_s + nbytes / topo.scale_up_Bps
    return topo.scale_out_latency_s + nbytes / topo.scale_out_Bps
