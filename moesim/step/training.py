"""A training step: forward + backward (+ recompute) of every micro-batch through a pipeline,
the data-parallel gradient reduction and the optimizer.

Per micro-batch on a stage (Megatron-Core layout: world = tp x cp x dp x pp, sequence parallel,
EP over ``ep`` consecutive non-pipeline ranks):
    F = the stage's layers under ``overlap``                                        [s]
    B = 2 x (every compute part of F) + 1 x (every collective and all-to-all of F)  [s]
        + 0.5 x (core attention of F)
        (dgrad and wgrad GEMMs each cost a forward GEMM; flash-attention backward does 2.5x the
        forward FLOPs: 5 matmuls against 2 (Dao 2023, FlashAttention-2, section 3.1.2); each
        forward collective has one backward collective of the same size)
    R = recompute: full -> F again; selective -> the attention block again           [s]
    t = F + B + R (+ LM head fwd + bwd on the last stage); the critical stage is the one
    with the largest t (``critical_training_stage``)
    The host issues every operator (eager Megatron, moesim/step/host.py) and waits for the token
    counts at each forward dispatch (moesim/step/schedule.py).
Pipeline (1F1B, interleaved with ``vpp`` virtual stages):
    compute time = (m + (pp - 1) / vpp) x t_max,  bubble = (pp - 1) / vpp x t_max      [s]
    i.e. bubble fraction (pp - 1) / (vpp x m) of the ideal m x t_max; m = global_batch /
    (micro_batch x dp) micro-batches. Pipeline send/receive of activations is assumed
    overlapped (Megatron overlaps P2P in the interleaved schedule).
DP: gradients reduce-scattered and parameters all-gathered (distributed optimizer; bf16 both)
over the dp x cp replicas of dense weights and the expert-dp replicas of expert weights;
``dp_overlap`` hides the reduce-scatter behind the last micro-batch's backward and the
all-gather behind the first one's forward (exposed = what is left), else both are exposed.
Optimizer: Adam over this device's shard, memory-bound: 30 B per parameter (grad read 4,
fp32 master/m/v read+write 24, bf16 weight write 2) at the achievable HBM bandwidth.
Model FLOPs (MFU, model TFLOPS) = 3 x forward FLOPs per token (causal attention), no recompute.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from moesim.compute.counts import sequence_forward_flops_per_token
from moesim.compute.memory import stage_params
from moesim.errors import SpecError
from moesim.specs import Cluster, HardwareProfile, ModelSpec, Parallelism, RoutingSpec
from moesim.step import _adapters as ad
from moesim.step.breakdown import StepBreakdown
from moesim.step.common import check_deployment, check_routing, gib, require_fit, stage_layers, stage_ops, summed
from moesim.step.layer import LayerOps, Overlap, make_setup, stack_times

UNIFORM = RoutingSpec()
OPTIMIZER_BYTES_PER_PARAM = 30.0
COMPUTE_FIELDS = ("attention_s", "elementwise_s", "router_s", "experts_s", "shared_experts_s", "dense_ffn_s")


def pipeline_bubble_fraction(pp: int, vpp: int, microbatches: int) -> float:
    """Idle share of the ideal time in 1F1B / interleaved 1F1B: (pp - 1) / (vpp x m)."""
    return (pp - 1) / (vpp * microbatches)


def backward_ops(op: LayerOps) -> LayerOps:
    """Backward of one layer's forward ops: compute x 2 (core attention x 2.5), communication x 1,
    host issue time of the measured backward operator count (``host_backward_s``, split as
    ``host_pre_backward_s``) and no host sync (the backward all-to-all reuses the forward's
    splits/handle: moesim/step/host.py ``dispatch_syncs_host``).
    NOTE: the backward stack is scheduled in forward order (P D X C per layer); without a sync
    the host runs ahead through the whole pass, so the order only shifts where the device waits."""
    scaled = {f: 2.0 * getattr(op, f) for f in COMPUTE_FIELDS}
    scaled["attention_s"] += 0.5 * op.attention_core_s
    return replace(op, **scaled, attention_core_s=2.5 * op.attention_core_s, host_s=op.host_backward_s,
                   host_pre_s=op.host_pre_backward_s, host_sync=False)


@dataclass(frozen=True)
class StageTime:
    """One pipeline stage's micro-batch: forward, backward, recompute and LM-head seconds."""

    ops: list
    b_ops: list
    forward_s: float
    backward_s: float
    recompute_s: float
    head_s: float
    exposed_s: float
    last: bool
    host_exposed_s: float = 0.0  # device waiting for the host, forward + backward + recompute
    host_issue_s: float = 0.0  # host issue time, forward + backward + recompute

    @property
    def microbatch_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s + self.head_s


def critical_training_stage(setup, model: ModelSpec, pp: int, tokens: float, context: float, overlap: str,
                            recompute: str, head_s: float) -> StageTime:
    """The pipeline stage with the longest forward + backward (+ recompute, + the LM head on the
    last stage) per micro-batch: in 1F1B the slowest stage paces every other one.

    NOTE: selected on the whole micro-batch time, not the forward alone: with an uneven split
    (DeepSeek-V3's 61 layers on pp 16: fifteen stages of 4 layers, one of 1 layer + the head) the
    forward-only choice picks the head stage although a 4-layer stage is slower.
    """
    halves = 2 if overlap == "two_microbatch" else 1
    stages = stage_layers(model, pp)
    best = None
    for s, layers in enumerate(stages):
        ops = stage_ops(setup, layers, tokens, context)
        f = stack_times(ops, overlap)
        b_ops = [backward_ops(o) for o in ops]
        b = stack_times(b_ops, overlap)
        r_t = {"none": 0.0, "full": f.time_s, "selective": halves * sum(o.attention_s for o in ops)}[recompute]
        again = 1.0 if recompute == "full" else 0.0  # full recompute re-issues the forward
        last = s == len(stages) - 1
        st = StageTime(ops, b_ops, f.time_s, b.time_s, r_t, head_s if last else 0.0,
                       f.exposed_comm_s + b.exposed_comm_s, last,
                       (1.0 + again) * f.exposed_host_s + b.exposed_host_s, (1.0 + again) * f.host_s + b.host_s)
        if best is None or st.microbatch_s > best.microbatch_s:
            best = st
    return best


def _dp_comm(model, hw, cluster, par, *, dtype_bytes: float = 2.0) -> tuple[float, float]:
    """(reduce-scatter, all-gather) seconds of one step's gradients / parameters on this device."""
    base, experts = max(stage_params(model, par), key=sum)
    topo = ad.topology(hw, cluster.devices, cluster.domain_size(hw))
    dense_dp = par.dp * par.cp
    rs = ad.collective_s(topo, "reduce_scatter", base * dtype_bytes, dense_dp)
    rs += ad.collective_s(topo, "reduce_scatter", experts * dtype_bytes, par.expert_dp)
    ag = ad.collective_s(topo, "all_gather", base * dtype_bytes, dense_dp)
    ag += ad.collective_s(topo, "all_gather", experts * dtype_bytes, par.expert_dp)
    return rs, ag


def _optimizer_s(model, hw, par, distributed: bool) -> float:
    base, experts = max(stage_params(model, par), key=sum)
    shard = base / (par.dp * par.cp) + experts / par.expert_dp if distributed else base + experts
    bw = hw.hbm_bandwidth_Bps * hw.efficiency.compute.gemm_memory_fraction
    return shard * OPTIMIZER_BYTES_PER_PARAM / bw


def _check_batch(global_batch: int, seq_len: int, micro_batch: int, par: Parallelism, recompute: str) -> int:
    """Micro-batches per pipeline (m); SpecError naming the field when the batch does not split."""
    if recompute not in ("none", "selective", "full"):
        raise SpecError("recompute", recompute, "one of none, selective, full")
    if seq_len <= 0 or micro_batch <= 0 or global_batch <= 0:
        raise SpecError("global_batch/seq_len/micro_batch", (global_batch, seq_len, micro_batch), "must be positive")
    if global_batch % (micro_batch * par.dp):
        raise SpecError("global_batch", global_batch,
                        f"must be a multiple of micro_batch x dp = {micro_batch} x {par.dp}")
    m = global_batch // (micro_batch * par.dp)
    if par.vpp > 1 and m % par.pp:
        raise SpecError("global_batch", global_batch,
                        f"interleaved pipeline needs micro-batches ({m}) to be a multiple of pp = {par.pp}")
    return m


def _step_components(ops, b_ops, scale: float, recompute: str, recompute_s: float) -> dict[str, float]:
    """Component seconds of a step: forward + backward (+ recompute) of every micro-batch."""
    comp = summed(ops, scale)
    for k, v in summed(b_ops, scale).items():
        comp[k] += v
    if recompute == "full":
        for k, v in summed(ops, scale).items():
            comp[k] += v
    elif recompute == "selective":
        comp["attention_s"] += recompute_s * scale
    return comp


def training_step(model: ModelSpec, hw: HardwareProfile, cluster: Cluster, par: Parallelism, *,
                  global_batch: int, seq_len: int, micro_batch: int = 1, dtype: str = "bf16",
                  recompute: Literal["none", "selective", "full"] = "none",
                  routing: RoutingSpec = UNIFORM, overlap: Overlap = "none", dp_overlap: bool = True,
                  distributed_optimizer: bool = True, check_memory: bool = True,
                  comm_sms: int | None = None) -> StepBreakdown:
    """One optimizer step of ``global_batch`` sequences of ``seq_len`` tokens (see module doc)."""
    check_deployment(model, hw, cluster, par, overlap)
    check_routing(routing)
    m = _check_batch(global_batch, seq_len, micro_batch, par, recompute)
    fp = ad.memory(model, hw, par, mode="train", weight_dtype="bf16", micro_batch=micro_batch,
                   seq_len=seq_len, recompute=recompute, distributed_optimizer=distributed_optimizer)
    if check_memory:
        require_fit(fp)
    setup = make_setup(model, hw, dtype=dtype, phase="train", attention_tp=par.tp, cp=par.cp, ep=par.ep,
                       redundant_experts=par.redundant_experts, ranks_per_node=cluster.domain_size(hw),
                       skew=routing.skew, comm_sms=comm_sms)
    halves = 2 if overlap == "two_microbatch" else 1
    tokens = micro_batch * seq_len / (par.tp * par.cp) / halves
    head_f = ad.gemm_s(hw, tokens * par.tp, model.vocab_size / par.tp, model.hidden, "bf16") * halves
    head = 3.0 * head_f  # LM head forward + backward on the last stage
    st = critical_training_stage(setup, model, par.pp, tokens, (seq_len + 1) / 2, overlap, recompute, head)
    ops, b_ops, head, t_mb = st.ops, st.b_ops, st.head_s, st.microbatch_s
    bubble = (par.pp - 1) / par.vpp * t_mb
    rs, ag = _dp_comm(model, hw, cluster, par)
    dp_exposed = max(0.0, rs - st.backward_s) + max(0.0, ag - st.forward_s) if dp_overlap else rs + ag
    opt = _optimizer_s(model, hw, par, distributed_optimizer)
    step = m * t_mb + bubble + dp_exposed + opt
    comp = _step_components(ops, b_ops, halves * m, recompute, st.recompute_s / halves)
    tokens_dev = global_batch * seq_len / cluster.devices
    return StepBreakdown(
        phase="train", overlap=overlap, step_time_s=step, tokens_per_step_per_device=tokens_dev,
        **comp, embedding_head_s=head * m, pipeline_bubble_s=bubble, dp_comm_s=dp_exposed,
        optimizer_s=opt, exposed_comm_s=m * st.exposed_s + dp_exposed,
        host_s=m * st.host_exposed_s, host_issue_s=m * st.host_issue_s,
        model_flops_per_step_per_device=3.0 * sequence_forward_flops_per_token(model, seq_len) * tokens_dev,
        peak_flops=hw.peak_flops(dtype), memory_GiB=gib(fp.total_bytes),
        memory_capacity_GiB=gib(fp.capacity_bytes),
        expert_imbalance=max((o.expert_imbalance for o in ops), default=1.0),
    )

