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
    R = recompute: full -> F again; selective -> the forward of the recomputed modules   [s]
        (Megatron-Core's recompute_modules, default core attention: moesim/step/recompute.py)
    t = F + B + R (+ LM head fwd + bwd on the last stage); the critical stage is the one
    with the largest t (``critical_training_stage``). A stage is what one pipeline rank holds
    (``Deployment.pipeline_ranks``: Megatron's ``pipeline_layout``, else the ceil split with the
    embedding first and the head last; moesim/specs/pipeline_layout.py)
    MTP (``Deployment.trained_mtp``; DeepSeek-V3 report s2.2, Megatron-Core's
    MultiTokenPredictionBlock on the last stage, or where the layout's ``m`` puts it): each module
    is one more layer of the last layer's kind on its rank (its F, B, R like any layer) with its
    eh_proj GEMM (tokens x 2h -> h, fwd + bwd = 3 GEMMs), and one more LM head fwd + bwd over the
    same tokens on the rank of the loss
    The host issues every operator (eager Megatron, moesim/step/host.py) and waits for the token
    counts at each forward dispatch (moesim/step/schedule.py).
Pipeline (1F1B, interleaved with ``vpp`` virtual stages):
    compute time = (m + (pp - 1) / vpp) x t_max,  bubble = (pp - 1) / vpp x t_max      [s]
    i.e. bubble fraction (pp - 1) / (vpp x m) of the ideal m x t_max; m = global_batch /
    (micro_batch x dp) micro-batches. Pipeline send/receive of activations (2 x vpp transfers
    per micro-batch; exposed in full without interleaving, only past one chunk's compute with
    it: moesim/step/train_comm.py) is part of t and reported in ``pipeline_bubble_s``.
DualPipe (``schedule = "dualpipe"``; DeepSeek-V3 report, arXiv 2412.19437, s3.2.1 and Table 2):
the forward chunk of one micro-batch and the backward chunk of another run as a pair, each one's
all-to-all and P2P behind the other's compute, the compute slowed by the SMs the all-to-all
kernels hold (``dualpipe_pair``); step = m x pair + (PP/2 - 1)(F&B + B - 3W) with W the weight-
gradient GEMMs (one forward's compute) (``dualpipe_bubble``). Even pp, even m, vpp 1.
DP (``Deployment.data_sharding``; groups placed as Megatron orders ranks, train_comm.py):
zero1/ddp: gradients reduce-scattered and parameters all-gathered (bf16 both) over the dp x cp
replicas of dense weights and the expert-dp replicas of expert weights; ``dp_overlap`` hides
the reduce-scatter behind the last micro-batch's backward and the all-gather behind the first
one's forward (exposed = what is left), else both are exposed. fsdp: every micro-batch
all-gathers the stage's weights in forward and backward and reduce-scatters its gradients,
prefetched one layer ahead (exposed = max(0, comm - compute) + one layer's share), part of t
and reported in ``dp_comm_s``; no per-step collective.
Optimizer: Adam over this device's shard (all parameters under ddp), memory-bound: 30 B per
parameter (grad read 4, fp32 master/m/v read+write 24, bf16 weight write 2) at the achievable
HBM bandwidth.
Model FLOPs (MFU, model TFLOPS) = 3 x forward FLOPs per token (causal attention), no recompute.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim import units
from moesim.compute.counts import sequence_forward_flops_per_token
from moesim.compute.memory import stage_params
from moesim.errors import InfeasibleError, SpecError
from moesim.specs import ModelSpec
from moesim.specs.deployment import Deployment, recomputed_modules
from moesim.step import pricing, train_comm
from moesim.step.cache import StepCache
from moesim.step.estimate import (KindOps, StepEstimate, layer_kinds, overflow_name, pick, rank_kind_counts,
                                  stage_routing, stage_sums)
from moesim.step.layer import LayerOps, layer_ops
from moesim.step.sharing import compute_share
from moesim.step.recompute import RECOMPUTE_COMPONENTS, module_forward_s
from moesim.step.stack import stack_times
from moesim.step.workload import Training

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
    # the non-GEMM kernel boundaries: the backward pass's own measured count (step/kernels.py)
    scaled["elementwise_s"] += op.kernel_floor_backward_s - 2.0 * op.kernel_floor_s
    return replace(op, **scaled, attention_core_s=2.5 * op.attention_core_s, host_s=op.host_backward_s,
                   kernel_floor_s=op.kernel_floor_backward_s,
                   host_pre_s=op.host_pre_backward_s, host_sync=False)


def padded_dispatch(op: LayerOps, dep: Deployment) -> LayerOps:
    """The forward ops of a layer under a capacity factor: Megatron-Core's drop-and-pad dispatch
    (``moe_expert_capacity_factor`` with ``moe_pad_expert_input_to_capacity``, what the
    Megatron-Bridge / NeMo token-drop recipes set: ``apply_moe_token_drop`` capacity 1.0, pad
    True) has static per-expert shapes, so the dispatcher never waits for the token counts on
    the host (megatron/core/transformer/moe/token_dispatcher.py ``preprocess``: the
    ``drop_and_pad`` branch returns before any ``cuda_sync_point``; dropless syncs
    ``before_ep_alltoall``). Dropless (``capacity_factor`` None): unchanged."""
    if dep.capacity_factor is None or not op.host_sync:
        return op
    return replace(op, host_sync=False)


def _dp_comm(model: ModelSpec, dep: Deployment) -> tuple[float, float]:
    """(reduce-scatter, all-gather) seconds of one step's gradients / parameters on this device,
    each over its own data-parallel group (moesim/step/train_comm.py: the expert DP group is
    strided by etp x ep and so crosses domains when EP fills one)."""
    c = train_comm.dp_collectives(dep, *_params(model, dep))
    return c.reduce_scatter_s, c.all_gather_s


def _fsdp_mb(model: ModelSpec, dep: Deployment, forward, backward, layers: int) -> np.ndarray:
    """Exposed FSDP seconds of one micro-batch: the forward's all-gathers behind the forward,
    the backward's all-gathers and reduce-scatters behind the backward (train_comm.py)."""
    c = train_comm.dp_collectives(dep, *_params(model, dep))
    return (train_comm.fsdp_exposed_s(c.all_gather_s, forward, layers)
            + train_comm.fsdp_exposed_s(c.all_gather_s + c.reduce_scatter_s, backward, layers))


def _p2p_mb(model: ModelSpec, dep: Deployment, tokens_N: np.ndarray, forward, backward) -> np.ndarray:
    """Exposed pipeline send/receive seconds of one micro-batch on the critical rank: 2 x vpp
    transfers, each hidden behind one chunk's compute when interleaved (train_comm.py)."""
    if dep.pp <= 1:
        return 0.0 * np.asarray(forward)
    t = np.array([train_comm.p2p_transfer_s(dep, float(x), model.hidden) for x in tokens_N])
    if dep.vpp == 1:  # batch_p2p_comm: blocking send/recv after the forward and the backward
        return 2.0 * t
    v = dep.vpp
    return v * (np.maximum(0.0, t - np.asarray(forward) / v) + np.maximum(0.0, t - np.asarray(backward) / v))


def _optimizer_s(model: ModelSpec, dep: Deployment) -> float:
    par, hw = dep.parallelism, dep.hardware
    base, experts = _params(model, dep)
    sharded = dep.data_sharding != "ddp"
    shard = base / (par.dp * par.cp) + experts / par.expert_dp if sharded else base + experts
    bw = hw.hbm_bandwidth_Bps * hw.efficiency.compute.gemm_memory_fraction
    return shard * OPTIMIZER_BYTES_PER_PARAM / bw


def microbatches(w: Training, dep: Deployment) -> np.ndarray:
    """Micro-batches per pipeline (m) at each point; SpecError naming the field when the batch
    does not split."""
    for g, mb in zip(w.global_batch.tolist(), w.micro_batch.tolist()):
        if g % (mb * dep.dp):
            raise SpecError("global_batch", int(g), f"must be a multiple of micro_batch x dp = {int(mb)} x {dep.dp}")
        m = g // (mb * dep.dp)
        if dep.vpp > 1 and m % dep.pp:
            raise SpecError("global_batch", int(g),
                            f"interleaved pipeline needs micro-batches ({int(m)}) to be a multiple of pp = {dep.pp}")
    return w.global_batch // (w.micro_batch * dep.dp)


def _params(model: ModelSpec, dep: Deployment) -> tuple[float, float]:
    """(non-expert, routed-expert) parameters of the device with the most (``stage_params``, the
    trained MTP modules on the last stage)."""
    return max(stage_params(model, dep.parallelism, dep.trained_mtp(model), dep.pipeline_layout), key=sum)


def _memory(model, dep: Deployment, w: Training, cache: StepCache):
    """Training footprints per point (one per distinct micro-batch and sequence length)."""
    out = []
    for mb, s in zip(w.micro_batch.tolist(), w.seq_len.tolist()):
        out.append(cache.get(cache.key(model, dep, "memory", "train", mb, s), lambda mb=mb, s=s: pricing.memory(
            model, dep.hardware, dep.parallelism, mode="train", weight_dtype="bf16", micro_batch=int(mb),
            seq_len=int(s), recompute=dep.recompute, recompute_modules=dep.recompute_modules,
            distributed_optimizer=dep.distributed_optimizer,
            sharding=dep.data_sharding, mtp_layers=dep.trained_mtp(model), pipeline_layout=dep.pipeline_layout)))
    return out


SCHEDULES: tuple[str, ...] = ("1f1b", "dualpipe")


def check_dualpipe(dep: Deployment, m_N: np.ndarray) -> None:
    """DualPipe's requirements (DeepSeek-V3 report s3.2.1: "DualPipe only requires that the
    pipeline stages and micro-batches be divisible by 2"; it replaces interleaving): SpecError
    naming the field otherwise."""
    if dep.pp < 2 or dep.pp % 2:
        raise SpecError("pp", dep.pp, "DualPipe needs an even pipeline size >= 2")
    if dep.vpp != 1:
        raise SpecError("vpp", dep.vpp, "DualPipe is not interleaved: vpp 1")
    for m in m_N.tolist():
        if m % 2:
            raise SpecError("global_batch", int(m), "DualPipe needs an even number of micro-batches per pipeline")


def dualpipe_pair(forward, backward, forward_comm, backward_comm, compute_extra, comm_extra, share: float = 1.0):
    """Seconds of one DualPipe forward-backward pair on a rank and its exposed communication:
    the forward chunk of one micro-batch and the backward chunk of another run together, each
    one's all-to-all and pipeline sends behind the other's compute (DeepSeek-V3 report s3.2.1,
    Figure 4). With C the compute and M the communication of the pair,
        C = (F - F_comm) + (B - B_comm) + extra compute (recompute, LM head, FSDP)
        M = F_comm + B_comm + extra comm (pipeline P2P)
    and the compute running at ``share`` of its speed while the all-to-all kernels hold their SMs
    (moesim/step/sharing.py ``compute_share``; DeepSeek-V3 gives 20 of 132 SMs to communication):
        pair = max(M, C + (1 - share) M),   exposed = pair - C                            [s]
    (share 1: max(C, M))."""
    comp = (np.asarray(forward) - forward_comm) + (np.asarray(backward) - backward_comm) + compute_extra
    comm = np.asarray(forward_comm) + backward_comm + comm_extra
    pair = np.maximum(comm, comp + (1.0 - share) * comm)
    return pair, pair - comp


def dualpipe_bubble(pp: int, pair, backward, weight_grad):
    """DualPipe's pipeline bubble (DeepSeek-V3 report Table 2): (PP/2 - 1)(F&B + B - 3W), F&B the
    pair (``dualpipe_pair``), B the full backward chunk, W its weight-gradient part (s)."""
    return (pp / 2 - 1) * (np.asarray(pair) + backward - 3.0 * np.asarray(weight_grad))


def training_estimate(model: ModelSpec, dep: Deployment, w: Training, *, check_memory: bool,
                      cache: StepCache, schedule: str = "1f1b") -> StepEstimate:
    """Training steps at every point of ``w`` (module docstring); ``moesim.step.estimate``.
    ``schedule``: ``1f1b`` (interleaved with ``vpp`` > 1) or ``dualpipe`` (DeepSeek-V3's
    bidirectional pipeline: ``dualpipe_pair``, ``dualpipe_bubble``; overlap ``none`` only)."""
    if schedule not in SCHEDULES:
        raise SpecError("schedule", schedule, f"one of {', '.join(SCHEDULES)}")
    m_N = microbatches(w, dep)
    dual = schedule == "dualpipe"
    if dual:
        check_dualpipe(dep, m_N)
        if dep.overlap != "none":
            raise SpecError("overlap", dep.overlap, "DualPipe overlaps micro-batches itself: overlap none")
    fps = _memory(model, dep, w, cache)
    if check_memory:
        for fp in fps:
            if not fp.fits:
                raise InfeasibleError(fp.reason or "does not fit in device memory")
    overlap = dep.overlap
    setup = cache.setup(model, dep, "train", w.skew)
    hw = dep.hardware
    halves = 2 if overlap == "two_microbatch" else 1
    tokens_N = w.micro_batch * w.seq_len / (dep.tp * dep.cp) / halves
    ctx_N = (w.seq_len + 1) / 2
    kinds, kind_L = layer_kinds(model)
    f_ops = [[padded_dispatch(layer_ops(setup, ls[0], float(t), float(c)), dep) for t, c in zip(tokens_N, ctx_N)]
             for ls in kinds]
    fk, bk = KindOps.of(f_ops), KindOps.of([[backward_ops(o) for o in row] for row in f_ops])
    head_N = 3.0 * np.asarray(pricing.gemm_s(hw, tokens_N * dep.tp, model.vocab_size / dep.tp, model.hidden,
                                             "bf16")) * halves / setup.device_fraction  # LM head fwd + bwd, last stage
    ranks = dep.pipeline_ranks(model)  # layers, MTP modules, head per rank (moesim/specs/pipeline_layout.py)
    stages, counts_SK = rank_kind_counts(ranks, kinds, kind_L)
    mtp = dep.trained_mtp(model)
    eh_N = 3.0 * np.asarray(pricing.gemm_s(hw, tokens_N * dep.tp, model.hidden / dep.tp, 2 * model.hidden, "bf16")) \
        * halves / setup.device_fraction  # an MTP module's eh_proj fwd + bwd, on its rank
    modules = recomputed_modules(dep.recompute, dep.recompute_modules)  # selective: moesim/step/recompute.py
    rec_KN = {}
    if modules:
        per = [[module_forward_s(setup, o, model.layer_is_moe(ls[0]), float(t), modules) for o, t in zip(row, tokens_N)]
               for ls, row in zip(kinds, f_ops)]
        rec_KN = {c: np.array([[p[c] for p in row] for row in per]) for c in RECOMPUTE_COMPONENTS}
    share = compute_share(hw, "normal", dep.comm_sms) if dual and model.is_moe and dep.ep > 1 else 1.0
    fsdp_on = dep.data_sharding == "fsdp"
    rows = []
    for i, ks in enumerate(stages):
        f, b = stack_times(fk.stage(ks), overlap), stack_times(bk.stage(ks), overlap)
        rec = {c: halves * (counts_SK[i][:, None] * v).sum(0) for c, v in rec_KN.items()}
        r = f.time_s if dep.recompute == "full" else sum(rec.values(), 0.0 * f.time_s)
        again = 1.0 if dep.recompute == "full" else 0.0  # full recompute re-issues the forward
        hd = head_N * (1 + mtp) * ranks[i].head + eh_N * ranks[i].mtp  # the head passes: main + one per MTP module
        p2p = _p2p_mb(model, dep, tokens_N * halves, f.time_s, b.time_s)
        fsdp = _fsdp_mb(model, dep, f.time_s, b.time_s, len(ks)) if fsdp_on else 0.0 * f.time_s
        mb, exposed = f.time_s + b.time_s + r + hd + p2p + fsdp, f.exposed_comm_s + b.exposed_comm_s + p2p + fsdp
        if dual:  # one forward-backward pair per micro-batch
            mb, exposed = dualpipe_pair(f.time_s, b.time_s, f.exposed_comm_s, b.exposed_comm_s, r + hd + fsdp, p2p,
                                        share)
        rows.append(dict(forward=f.time_s, backward=b.time_s, recompute=r, head=hd, p2p=p2p, fsdp=fsdp,
                         **{f"recompute_{c}": v for c, v in rec.items()},
                         wgrad=f.time_s - f.exposed_comm_s, mb=mb, exposed=exposed,
                         host_exposed=(1.0 + again) * f.exposed_host_s + b.exposed_host_s,
                         host_issue=(1.0 + again) * f.host_s + b.host_s))
    crit = pick(np.array([r["mb"] for r in rows]))
    cols = np.arange(crit.size)
    st = {k: np.array([r[k] for r in rows])[crit, cols] for k in rows[0]}
    bubble = (dep.pp - 1) / dep.vpp * st["mb"]
    if dual:  # W: the weight-gradient GEMMs cost one forward's compute (backward_ops)
        bubble = dualpipe_bubble(dep.pp, st["mb"], st["backward"], st["wgrad"])
    rs, ag = (0.0, 0.0) if fsdp_on else _dp_comm(model, dep)
    if fsdp_on:  # the per-layer collectives ran inside the micro-batches
        dp_exposed = np.zeros(crit.size)
    elif dep.dp_overlap:
        dp_exposed = np.maximum(0.0, rs - st["backward"]) + np.maximum(0.0, ag - st["forward"])
    else:
        dp_exposed = np.full(crit.size, rs + ag)
    opt = _optimizer_s(model, dep) / setup.device_fraction  # compute: at the stack's device fraction
    step = m_N * st["mb"] + bubble + dp_exposed + opt
    scale = halves * m_N
    comp = stage_sums(fk, counts_SK, crit, scale)
    for k, v in stage_sums(bk, counts_SK, crit, scale).items():
        comp[k] = comp[k] + v
    if dep.recompute == "full":
        for k, v in stage_sums(fk, counts_SK, crit, scale).items():
            comp[k] = comp[k] + v
    elif dep.recompute == "selective":
        for c in rec_KN:
            comp[c] = comp[c] + st[f"recompute_{c}"] * m_N
    tokens_dev = w.global_batch * w.seq_len / dep.devices
    flops = np.array([3.0 * sequence_forward_flops_per_token(model, int(s)) for s in w.seq_len.tolist()])
    columns = dict(
        comp, **stage_routing(fk, counts_SK, crit), embedding_head_s=st["head"] * m_N,
        pipeline_bubble_s=bubble + (0.0 if dual else m_N * st["p2p"]), dp_comm_s=dp_exposed + m_N * st["fsdp"],
        optimizer_s=np.full(crit.size, opt), exposed_comm_s=m_N * st["exposed"] + dp_exposed,
        host_s=m_N * st["host_exposed"], host_issue_s=m_N * st["host_issue"],
        model_flops_per_step_per_device=flops * tokens_dev, peak_flops=np.full(crit.size, hw.peak_flops(dep.dtype)),
    )
    return StepEstimate("train", overlap, dep.capacity_factor, overflow_name(dep), step, tokens_dev,
                        np.array([fp.total_bytes for fp in fps]) / units.GiB, fps[0].capacity_bytes / units.GiB,
                        columns)
