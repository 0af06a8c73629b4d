"""One transformer layer on the critical device: attention, its collectives, router, dispatch,
experts on the most loaded EP rank, combine, shared experts (or a dense FFN).

The layer is four operations per micro-batch, in program order, on two streams:
    P  compute: attention (+ its TP/CP collectives, blocking) + router        [s]
    D  comm:    dispatch all-to-all                                           [s]
    X  compute: routed experts on the most loaded rank + shared experts
                (dense layers: the dense FFN and its TP collective)           [s]
    C  comm:    combine all-to-all                                            [s]
Schedules (``overlap``):
- ``none``: one micro-batch, the layer takes P + D + X + C.
- ``two_microbatch``: the batch split in two halves whose operations interleave as production
  decode/prefill do (DeepSeek/SGLang two-batch overlap): compute stream P0 P1 X0 X1, comm stream
  D0 D1 C0 C1 per layer, each waiting for its own micro-batch's previous operation. The step
  time is the max-plus recurrence of ``two_microbatch_time`` (exact for this order; the DES
  runs the same program and must reproduce it). While a normal-mode dispatch/combine kernel
  runs it holds u of the U SMs, so the compute it overlaps runs at (U - u) / U of full speed
  (``LayerOps.compute_share``; moesim/step/sharing.py); low-latency kernels hold none. Also
  limiting the overlap (sharing.py eqs. 2-5): in an FP8 prefill SGLang gives DeepGEMM U - u SMs
  for the whole overlapped pass (``gemm_share``, on the compute-bound GEMMs ``pre_gemm_s`` and
  X), and every comm kernel takes an HBM share (``dispatch_hbm_share``, ``combine_hbm_share``)
  from the memory-bound kernels (``pre_memory_s``, ``ffn_memory_s``: elementwise ops, decode core
  attention, GEMMs whose roofline bound is HBM).
Host: in eager phases (train, prefill) an operation cannot run before the host has issued it
(``LayerOps.host_pre_s`` for P, ``host_post_s`` for X; moesim/step/host.py), and a normal-mode
dispatch makes the host wait for P's token counts (``LayerOps.host_sync``), so the host runs
ahead of the device only between those points: both schedules are evaluated with the host in the
loop (moesim/step/schedule.py); ``stack_times`` reports how long the device waits for the host
(``StepBreakdown.host_s``).
Experts use the expected *maximum* load over EP ranks (``RankLopricing.max_rank_copies``), never the
mean: the slowest rank holds every other rank at the combine barrier.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from moesim.comm.traffic import Traffic
from moesim.compute.attention import attention_block_s, core_s_per_token_key, kernel_keys_per_query, projection_shapes
from moesim.compute.gemm import BOUNDS, gemm_time_arrays
from moesim.compute.grouped import grouped_gemm_time
from moesim.errors import SpecError
from moesim.specs import ModelSpec, bytes_per_element, canonical_dtype
from moesim.step import pricing, stack
from moesim.step.elementwise import elementwise_bytes, memory_bound_s
from moesim.step.host import dispatch_syncs_host, layer_host_pre_s, layer_host_s
from moesim.step.kernels import kernel_floor_s
from moesim.step.schedule import serial_time, two_microbatch_time  # noqa: F401 (re-exported)
from moesim.step.setup import LayerSetup, make_setup  # noqa: F401 (re-exported)
from moesim.step.sharing import compute_share, gemm_grid_share, hbm_share
from moesim.step.stacks import is_trtllm

Overlap = Literal["none", "two_microbatch"]
OVERLAPS: tuple[str, ...] = ("none", "two_microbatch")
_EMPTY = stack.StackArrays(*(np.zeros((0, 1)) for _ in range(7)), np.zeros((0, 1), dtype=bool))

# DeepEP low-latency kernels serve at most 128 tokens per rank per call (DeepEP README).
LOW_LATENCY_MAX_TOKENS = 128


@dataclass(frozen=True)
class LayerOps:
    """Times (s) of one layer's operations for one micro-batch on the critical device."""

    attention_s: float = 0.0
    attention_comm_s: float = 0.0
    elementwise_s: float = 0.0
    router_s: float = 0.0
    dispatch_s: float = 0.0
    experts_s: float = 0.0
    shared_experts_s: float = 0.0
    combine_s: float = 0.0
    dense_ffn_s: float = 0.0
    expert_imbalance: float = 1.0
    drop_fraction: float = 0.0  # capacity: shares of the routed copies dropped, rerouted, backed up
    reroute_fraction: float = 0.0
    backup_fraction: float = 0.0
    attention_core_s: float = 0.0  # the score/value part of attention_s (not a separate op)
    host_s: float = 0.0  # host issue time of this pass's operators (moesim/step/host.py)
    host_backward_s: float = 0.0  # host issue time of the backward pass (training)
    host_pre_s: float = 0.0  # the part of host_s issued before the token counts (P's operators)
    host_pre_backward_s: float = 0.0  # the same split of host_backward_s
    host_sync: bool = False  # the dispatch makes the host wait for P's token counts (step/schedule.py)
    compute_share: float = 1.0  # compute speed while this layer's all-to-all runs (step/sharing.py)
    gemm_share: float = 1.0  # SM share of the fixed-grid GEMMs under overlap (step/sharing.py eq. 2)
    dispatch_hbm_share: float = 0.0  # HBM share the dispatch / combine kernels take (sharing.py eq. 3)
    combine_hbm_share: float = 0.0
    projection_memory_fraction: float = 0.0  # memory-bound share of the attention projections' time
    ffn_memory_fraction: float = 0.0  # memory-bound share of X's GEMM time (roofline bound, gemm.py)
    core_memory_bound: bool = False  # core attention streams the KV cache (decode) rather than computing
    kernel_floor_s: float = 0.0  # the part of elementwise_s that is kernel boundaries (step/kernels.py)
    kernel_floor_backward_s: float = 0.0  # the same floor of the backward pass (training)

    @property
    def pre_s(self) -> float:
        """P: attention, its collectives and the router."""
        return self.attention_s + self.attention_comm_s + self.router_s + self.elementwise_s

    @property
    def ffn_s(self) -> float:
        """X: routed + shared experts, or the dense FFN."""
        return self.experts_s + self.shared_experts_s + self.dense_ffn_s

    @property
    def gpu_s(self) -> float:
        """P + D + X + C: the layer's device time when its operations run one after another."""
        return self.pre_s + self.dispatch_s + self.ffn_s + self.combine_s

    @property
    def pre_memory_s(self) -> float:
        """The memory-bound part of P (s): elementwise ops, the memory-bound projections (roofline
        bound of each GEMM) and, in decode, the core attention (it streams the KV cache)."""
        proj = self.attention_s - self.attention_core_s
        core = self.attention_core_s if self.core_memory_bound else 0.0
        return self.elementwise_s + self.projection_memory_fraction * proj + core

    @property
    def pre_gemm_s(self) -> float:
        """The compute-bound library GEMMs of P (s): the attention projections not memory-bound."""
        return (1.0 - self.projection_memory_fraction) * (self.attention_s - self.attention_core_s)

    @property
    def ffn_memory_s(self) -> float:
        """The memory-bound part of X (s): expert / shared / dense GEMMs whose roofline bound is HBM."""
        return self.ffn_memory_fraction * self.ffn_s

    @property
    def host_post_s(self) -> float:
        """X's host issue time: the operators issued after the token counts."""
        return self.host_s - self.host_pre_s

    @property
    def time_s(self) -> float:
        """Time of this layer alone without overlap, host and device starting together: the
        schedule of moesim/step/schedule.py (``serial_time``) over one layer."""
        return serial_time([self.pre_s], [self.dispatch_s], [self.ffn_s], [self.combine_s],
                           [self.host_pre_s], [self.host_post_s], [self.host_sync])

    def components(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in (
            "attention_s", "attention_comm_s", "elementwise_s", "router_s", "dispatch_s", "experts_s",
            "shared_experts_s", "combine_s", "dense_ffn_s")}


def dispatch_bytes_per_token(model: ModelSpec, dtype: str) -> float:
    """Payload of one dispatched token copy: hidden in the GEMM dtype, plus one fp32 scale per
    128 elements for fp8 (DeepEP's FP8 dispatch: 7168 + 56 x 4 = 7392 B for DeepSeek-V3)."""
    key = canonical_dtype(dtype)
    if key == "fp8":
        return model.hidden * 1.0 + model.hidden / 128 * 4.0
    return model.hidden * min(bytes_per_element(dtype), 2.0)


def combine_bytes_per_token(model: ModelSpec) -> float:
    """Combine returns bf16 activations (DeepEP combine is bf16)."""
    return model.hidden * 2.0


def _mode(setup: LayerSetup, tokens: float) -> str:
    if setup.a2a_mode != "auto":
        return setup.a2a_mode
    return "low_latency" if setup.phase == "decode" and tokens <= LOW_LATENCY_MAX_TOKENS else "normal"


def _skewed(traffic: Traffic, imbalance: float, sent: float = 1.0) -> Traffic:
    """Expected traffic with rank 0 the hot destination: its column scaled by the max/mean load;
    every entry scaled by ``sent``, the share of copies that reach an expert (capacity)."""
    if imbalance <= 1.0 and sent >= 1.0:
        return traffic
    b = traffic.bytes_RR * sent
    b[:, 0] *= max(imbalance, 1.0)
    nb = None
    if traffic.node_bytes_RN is not None:
        nb = traffic.node_bytes_RN * sent
        nb[:, 0] *= 1.0 + (max(imbalance, 1.0) - 1.0) / traffic.ranks_per_node
    return Traffic(b, traffic.ranks_per_node, nb, traffic.peers_R)


def expected_traffic(setup: LayerSetup, tokens: float, bytes_per_token: float) -> Traffic:
    """Expected node-deduplicated traffic of one dispatch of ``tokens`` per EP rank."""
    m = setup.model.moe
    slots = m.num_experts + setup.redundant_experts
    routing = "balanced" if setup.skew == "balanced" else "uniform"
    groups = (m.n_groups, m.topk_groups) if setup.redundant_experts == 0 else (1, 1)
    try:
        return pricing.expected_traffic(setup.ep, setup.ranks_per_node, tokens, slots, m.top_k,
                                   bytes_per_token, routing, *groups)
    except SpecError:  # groups that do not tile the EP blocks: drop the group limit
        return pricing.expected_traffic(setup.ep, setup.ranks_per_node, tokens, slots, m.top_k,
                                   bytes_per_token, routing)


def sampled_a2a(setup: LayerSetup, tokens: float, copies_RR: np.ndarray, dedup_RN: np.ndarray) -> tuple[float, float]:
    """(dispatch, combine) seconds of one sampled step (the DES's per-step all-to-all).

    The expected node-deduplicated traffic of ``tokens`` per rank, each (source, destination)
    entry scaled by that step's copies over their expectation T k / R, and each (source, node)
    entry by that step's distinct tokens over their expectation; so the same definitions of
    bytes serve the analytic model and the simulation.
    """
    m = setup.model.moe
    mode = _mode(setup, tokens)
    exp_copies = tokens * m.top_k / setup.ep
    out = []
    for bpt, op in ((dispatch_bytes_per_token(setup.model, setup.expert_dtype), "dispatch"),
                    (combine_bytes_per_token(setup.model), "combine")):
        base = expected_traffic(setup, tokens, bpt)
        b_RR = base.bytes_RR * (np.asarray(copies_RR, dtype=float) / exp_copies)
        nb = None
        if base.node_bytes_RN is not None:
            exp_nodes = base.node_bytes_RN / bpt
            nb = base.node_bytes_RN * np.divide(np.asarray(dedup_RN, dtype=float), exp_nodes,
                                                out=np.ones_like(exp_nodes), where=exp_nodes > 0)
        tr = Traffic(b_RR, base.ranks_per_node, nb, base.peers_R)
        out.append(pricing.a2a_s(setup.ep_topology, tr if op == "dispatch" else tr.reversed(), mode, op))
    return out[0], out[1]


_MEMORY = BOUNDS.index("memory")


def _gemm_memory_s(hw, m: float, shapes: list[tuple[int, int]], dtype: str) -> tuple[float, float]:
    """(time, memory-bound time) of GEMMs of ``m`` rows and (n, k) ``shapes``: a GEMM is memory-
    bound when its roofline bound is HBM (moesim/compute/gemm.py ``bound``)."""
    if m <= 0 or not shapes:
        return 0.0, 0.0
    n = np.array([sh[0] for sh in shapes])
    k = np.array([sh[1] for sh in shapes])
    t, _, bound = gemm_time_arrays(hw, max(round(m), 1), n, k, dtype)
    return float(t.sum()), float(t[bound == _MEMORY].sum())


def _ffn_shapes(model: ModelSpec, width: int) -> list[tuple[int, int]]:
    """(n, k) of a (Swi)GLU / ReLU FFN of intermediate ``width``: up (+ gate), down (the shapes of
    pricing.dense_ffn_s and pricing.expert_ffn_s)."""
    return [((model.ffn_matrices - 1) * width, model.hidden), (model.hidden, width)]


def _experts_memory_s(hw, model: ModelSpec, counts_G, dtype: str, layout: str, width: int,
                      weight_dtype: str | None = None) -> float:
    """Memory-bound seconds of the routed experts' grouped GEMMs (``pricing.expert_ffn_s``)."""
    m_G = np.round(np.asarray(counts_G, dtype=float))
    m_G = m_G[m_G > 0]
    if m_G.size == 0:
        return 0.0
    out = 0.0
    for n, k in _ffn_shapes(model, width):
        est = grouped_gemm_time(hw, m_G, n, k, dtype, layout, weight_dtype=weight_dtype)
        out += est.time_s if est.bound == "memory" else 0.0
    return float(out)


def projection_memory_fraction(setup: LayerSetup, tokens: float) -> float:
    """Share of the attention projections' time (``tokens`` owned tokens) that is memory-bound."""
    tp = setup.attention_tp
    phase = "decode" if setup.phase == "decode" else "prefill"
    t, mem = _gemm_memory_s(setup.hw, tokens * tp, projection_shapes(setup.model, tp, phase), setup.projection_dtype)
    return mem / t if t > 0 else 0.0


def layer_compute_share(setup: LayerSetup, tokens: float) -> float:
    """Compute speed while this layer's dispatch/combine of ``tokens`` per rank runs."""
    return compute_share(setup.hw, _mode(setup, tokens), setup.comm_sms)


def expert_layout(setup: LayerSetup, tokens: float) -> str:
    """Grouped-GEMM layout (moesim/compute/grouped.py): masked with low-latency decode kernels
    (DeepEP low-latency + DeepGEMM masked: an expert-parallel exchange, so EP > 1); token_tiled
    in the other serving phases (the engines' fused-MoE kernels tile a short expert's tokens at
    8-64 rows, not at DeepGEMM's 128-row alignment), EP 1 included; contiguous in training."""
    if setup.phase == "train":
        return "contiguous"
    return "masked" if setup.ep > 1 and _mode(setup, tokens) == "low_latency" else "token_tiled"


def attention_ops(setup: LayerSetup, tokens: float, context: float, layer: int) -> tuple[float, float, float]:
    """(attention compute, TP/CP collective, core part of the compute) seconds for ``tokens``
    owned tokens in ``layer``."""
    model, tp, cp = setup.model, setup.attention_tp, setup.cp
    ctx = kernel_keys_per_query(model, layer, context, setup.phase)  # whole flash tiles (attention.py)
    att = attention_block_s(setup.hw, model, tokens=tokens * tp, context=ctx, phase=setup.phase, tp=tp,
                            dtype=setup.projection_dtype, kv_dtype=setup.kv_dtype,
                            core_dtype=setup.core_dtype, device_fraction=setup.device_fraction)
    comm = 0.0
    if tp > 1:  # sequence parallel: reduce-scatter after attention + all-gather before it
        comm += pricing.collective_s(setup.tp_topology, "all_reduce", tokens * tp * model.hidden * 2.0, tp)
    if cp > 1:  # context parallel: every rank gathers the K and V of the others
        kv = model.kv_elements_per_token("full") / tp * 2.0
        comm += pricing.collective_s(setup.tp_topology, "all_gather", tokens * tp * cp * kv, cp)
    core = core_s_per_token_key(setup.hw, model, phase=setup.phase, tp=tp, dtype=setup.projection_dtype,
                                kv_dtype=setup.kv_dtype, core_dtype=setup.core_dtype,
                                device_fraction=setup.device_fraction) * tokens * tp * ctx
    return att, comm, core


def moe_block(setup: LayerSetup, tokens: float, rank_load: pricing.RankLoad | None = None) -> dict:
    """Router, dispatch, experts (most loaded rank), shared experts, combine for ``tokens`` per rank.

    Capacity (``Deployment.capacity_factor``, moesim/routing): the busiest rank's expert rows
    are the copies it accepts (a dropped copy costs no expert time and is not sent; a rerouted
    copy is priced on the rank that takes it, through the routing engine's loads); under
    ``overflow = "shared"`` the copies left to the backup run on their source rank through one
    shared expert's FFN (the routed expert's width when the model has none), priced in
    ``shared_experts_s``. The dispatch and combine move the copies that reach an expert: the
    expected traffic x (1 - drop - backup fractions).
    """
    model, hw, m = setup.model, setup.hw, setup.model.moe
    owned, tokens = tokens, setup.moe_tokens(tokens)  # expert TP: the experts see the group's tokens
    load = rank_load or pricing.rank_load(model, setup.deployment, setup.skew, tokens * setup.ep)
    imbalance = load.max_rank_copies / load.mean_rank_copies if load.mean_rank_copies > 0 else 1.0
    router = pricing.gemm_s(hw, owned, m.num_experts, model.hidden, "bf16")
    mode = _mode(setup, tokens)
    experts = pricing.expert_ffn_s(hw, model, load.busiest_counts_G, setup.expert_dtype, setup.expert_ffn,
                                   layout=expert_layout(setup, tokens), weight_dtype=setup.expert_weight_dtype)
    shared = 0.0
    if m.num_shared_experts:
        width = m.num_shared_experts * m.shared_expert_ffn // setup.attention_tp
        shared = pricing.dense_ffn_s(hw, model, owned * setup.attention_tp, width, setup.dtype)
    if m.parallel_dense_ffn:
        shared += pricing.dense_ffn_s(hw, model, owned * setup.attention_tp, model.dense_ffn // setup.attention_tp,
                                      setup.dtype)
    if load.backup_fraction > 0:
        backup_rows = load.backup_fraction * owned * m.top_k
        width = m.shared_expert_ffn if m.num_shared_experts else m.expert_ffn
        shared += pricing.dense_ffn_s(hw, model, backup_rows, width, setup.dtype)
    mem = _experts_memory_s(hw, model, load.busiest_counts_G, setup.expert_dtype, expert_layout(setup, tokens),
                            setup.expert_ffn, setup.expert_weight_dtype)
    if m.num_shared_experts:
        width = m.num_shared_experts * m.shared_expert_ffn // setup.attention_tp
        mem += _gemm_memory_s(hw, owned * setup.attention_tp, _ffn_shapes(model, width), setup.dtype)[1]
    dispatch = combine = h_dispatch = h_combine = 0.0
    if setup.ep > 1:
        sent = 1.0 - load.drop_fraction - load.backup_fraction
        payload = dispatch_bytes_per_token(model, setup.expert_dtype)
        disp = _skewed(expected_traffic(setup, tokens, payload), imbalance, sent)
        comb = _skewed(expected_traffic(setup, tokens, combine_bytes_per_token(model)), imbalance, sent)
        dispatch = pricing.a2a_s(setup.ep_topology, disp, mode, "dispatch")
        combine = pricing.a2a_s(setup.ep_topology, comb.reversed(), mode, "combine")
        # rank 0 is the critical (hot) rank of the skewed traffic: its sends are read from HBM and
        # its receives written to HBM (the combine moves the same entries back)
        h_dispatch = hbm_share(hw, disp.bytes_RR[0].sum() + disp.bytes_RR[:, 0].sum(), dispatch)
        h_combine = hbm_share(hw, comb.bytes_RR[0].sum() + comb.bytes_RR[:, 0].sum(), combine)
    ffn = experts + shared
    return dict(router_s=router, dispatch_s=dispatch, experts_s=experts, shared_experts_s=shared,
                combine_s=combine, expert_imbalance=imbalance, drop_fraction=load.drop_fraction,
                reroute_fraction=load.reroute_fraction, backup_fraction=load.backup_fraction,
                ffn_memory_fraction=min(mem / ffn, 1.0) if ffn > 0 else 0.0,
                dispatch_hbm_share=h_dispatch, combine_hbm_share=h_combine)


def dense_block(setup: LayerSetup, tokens: float) -> dict:
    """A dense FFN layer (TP-sharded); its sequence-parallel collective is added by ``layer_ops``."""
    tp, model = setup.attention_tp, setup.model
    t, mem = _gemm_memory_s(setup.hw, tokens * tp, _ffn_shapes(model, model.dense_ffn // tp), setup.dtype)
    return dict(dense_ffn_s=pricing.dense_ffn_s(setup.hw, model, tokens * tp, model.dense_ffn // tp, setup.dtype),
                ffn_memory_fraction=mem / t if t > 0 else 0.0)


def fuses_moe_quant(setup: LayerSetup, moe: bool) -> bool:
    """Whether the layer's MoE runs TensorRT-LLM's CUTLASS fused-MoE chain (moesim/step/
    elementwise.py ``fused_moe_quant``): its serving phases under a TensorRT-LLM stack
    (``is_trtllm``). In that chain the permute kernel (``expandInputRowsKernel``, cpp/tensorrt_llm/
    kernels/cutlass_kernels/moe_gemm/moe_kernels.cu) writes the k copies of each token already in
    the GEMM's input format and the activation kernel (``doActivationKernel``) writes the down
    projection's input requantized, so no separate quantization kernel runs for the experts."""
    return moe and setup.phase != "train" and is_trtllm(setup.stack)


def sorts_chunks(setup: LayerSetup, moe: bool) -> bool:
    """Whether the layer's dispatched copies are re-sorted by local expert around the all-to-all
    (moesim/step/elementwise.py ``sort_chunks``): Megatron-Core's all-to-all dispatcher, i.e. the
    training phase, with EP > 1 and more than one expert slot per rank."""
    if not moe or setup.phase != "train" or setup.ep <= 1:
        return False
    return (setup.model.moe.num_experts + setup.redundant_experts) // setup.ep > 1


def _routing_free_ops(setup: LayerSetup, layer: int, tokens: float, context: float) -> dict:
    """The layer's operations that routing and capacity never change: attention and its
    collectives, elementwise, host issue, compute share, and a dense layer's FFN. Memoized in
    ``setup.shared``, which setups differing only in capacity fields share (moesim/step/cache.py)."""
    model = setup.model
    moe = model.layer_is_moe(layer)
    key = (moe, model.layer_is_windowed(layer), tokens, context)
    if key in setup.shared:
        return setup.shared[key]
    att, att_comm, core = attention_ops(setup, tokens, context, layer)
    out = {}
    if not moe:
        out = dense_block(setup, tokens)
        if setup.attention_tp > 1:  # the dense FFN's reduce-scatter + all-gather (sequence parallel)
            tp = setup.attention_tp
            att_comm += pricing.collective_s(setup.tp_topology, "all_reduce", tokens * tp * model.hidden * 2.0, tp)
    elif setup.etp > 1:  # expert TP: the group's tokens gathered before the experts and reduced after
        etp = setup.etp
        att_comm += pricing.collective_s(setup.etp_topology, "all_reduce", tokens * etp * model.hidden * 2.0, etp)
    phase, stack = setup.phase, setup.stack
    train = phase == "train"
    floor = kernel_floor_s(setup.hw, model, moe, phase)  # non-GEMM kernel boundaries (step/kernels.py)
    out.update(
        attention_s=att, attention_comm_s=att_comm, attention_core_s=core,
        elementwise_s=floor + memory_bound_s(setup.hw, elementwise_bytes(
            model, moe, tokens, setup.attention_tp, setup.dtype, phase, sorts_chunks(setup, moe), setup.etp,
            projection_dtype=setup.projection_dtype, expert_dtype=setup.expert_dtype,
            fused_moe_quant=fuses_moe_quant(setup, moe))),
        kernel_floor_s=floor, kernel_floor_backward_s=kernel_floor_s(setup.hw, model, moe, phase, backward=True),
        host_s=layer_host_s(setup.hw, model, moe, phase, stack=stack),
        host_pre_s=layer_host_pre_s(setup.hw, model, moe, phase, stack=stack),
        host_backward_s=layer_host_s(setup.hw, model, moe, phase, backward=True, stack=stack) if train else 0.0,
        host_pre_backward_s=layer_host_pre_s(setup.hw, model, moe, phase, backward=True, stack=stack) if train else 0.0,
        compute_share=layer_compute_share(setup, tokens) if moe and setup.ep > 1 else 1.0,
        gemm_share=(gemm_grid_share(setup.hw, _mode(setup, tokens), phase, setup.dtype, setup.comm_sms)
                    if model.is_moe and setup.ep > 1 else 1.0),
        projection_memory_fraction=projection_memory_fraction(setup, tokens),
        core_memory_bound=phase == "decode",
        host_sync=dispatch_syncs_host(moe, setup.ep, _mode(setup, tokens), phase, stack=stack),
    )
    setup.shared[key] = out
    return out


def layer_ops(setup: LayerSetup, layer: int, tokens: float, context: float,
              rank_load: pricing.RankLoad | None = None) -> LayerOps:
    """``LayerOps`` of layer ``layer`` (0-based) for one micro-batch of ``tokens`` per device."""
    model = setup.model
    key = (model.layer_is_moe(layer), model.layer_is_windowed(layer), tokens, context, rank_load is None)
    if rank_load is None and key in setup._cache:
        return setup._cache[key]
    block = moe_block(setup, tokens, rank_load) if model.layer_is_moe(layer) else {}
    ops = at_device_fraction(LayerOps(**_routing_free_ops(setup, layer, tokens, context), **block),
                             setup.device_fraction, setup.expert_fraction)
    if rank_load is None:
        setup._cache[key] = ops
    return ops


# LayerOps fields that are device compute (divided by the stack's device fraction); the rest is
# communication (attention_comm_s, dispatch_s, combine_s), host time, or a share / fraction
# compute times scaled by the device fraction; the kernel floors are parts of elementwise_s and
# scale with it (so the backward's floor swap in training.backward_ops stays consistent)
COMPUTE_OP_FIELDS: tuple[str, ...] = ("attention_s", "attention_core_s", "elementwise_s", "router_s", "experts_s",
                                      "shared_experts_s", "dense_ffn_s", "kernel_floor_s", "kernel_floor_backward_s")


def at_device_fraction(ops: LayerOps, fraction: float, expert: float = 1.0) -> LayerOps:
    """``ops`` with every compute operation's time divided by the stack's achievable device
    fraction (moesim/specs/software_stack.py ``device_fraction``) and the routed experts'
    (``experts_s``) by its ``expert_fraction`` too; communication, host issue and the shares
    unchanged. Both 1 returns ``ops`` itself."""
    if fraction == 1.0 and expert == 1.0:
        return ops
    scaled = {f: getattr(ops, f) / fraction for f in COMPUTE_OP_FIELDS}
    scaled["experts_s"] /= expert
    return replace(ops, **scaled)


@dataclass(frozen=True)
class StackTime:
    """One column of ``moesim.step.stack.StackTimes`` (s)."""

    time_s: float
    exposed_comm_s: float
    exposed_host_s: float
    host_s: float


def stack_times(ops: list[LayerOps], overlap: Overlap) -> StackTime:
    """``StackTime`` of running ``ops`` (one entry per layer) under ``overlap``: the array
    schedule of moesim/step/stack.py on one column."""
    st = stack.stack_times(stack.StackArrays.of([[o] for o in ops]) if ops else _EMPTY, overlap)
    return StackTime(float(st.time_s[0]), float(st.exposed_comm_s[0]), float(st.exposed_host_s[0]),
                     float(st.host_s[0]))


def stack_time(ops: list[LayerOps], overlap: Overlap) -> tuple[float, float]:
    """(time, exposed comm) of ``stack_times``."""
    st = stack_times(ops, overlap)
    return st.time_s, st.exposed_comm_s
