"""``estimate(model, deployment, workload)``: THE step model, over arrays of points.

Legend: N points of the workload, L layers, K layer kinds ((MoE?, windowed?): layers of one kind
have identical ops at a given tokens and context), S pipeline stages.

Layer -> stage -> step, for every point at once:
1. the layer model (moesim/step/layer.py ``layer_ops``) once per (kind, point): attention, its
   collectives, router, dispatch, experts on the busiest rank capped at capacity, shared
   experts, combine. Decode runs it at context 0 and adds core attention, which is linear in the
   context (slope s per query token x key, moesim/compute/attention.py), so every context of one
   batch shares the layer model: P_l(c) = P_l(0) + s x tokens x tp x keys_l(c), keys_l the
   window-capped context in windowed layers;
2. each pipeline stage (contiguous ceil(L / pp) layers, as moesim/compute/memory.py) under the
   deployment's schedule of the phase (moesim/step/stack.py), element-wise over N; the critical
   stage is the slowest (the last also runs the LM head);
3. decode / prefill: iteration = critical stage x pp (a token crosses pp stage times); no LM
   head in prefill (only the last token of each prompt needs logits); a stack with an executor
   loop's per-sequence host time (``host_seq_us``: TensorRT-LLM's PyTorch backend) then meets it
   overlapped (max) or synchronously (sum), moesim/step/host.py eqs. 4-6. Training: moesim/step/
   training.py (forward, backward, recompute, pipeline bubble, DP collectives, optimizer).
Memory: the footprint at zero KV tokens plus KV tokens x KV bytes per token (linear,
moesim/compute/memory.py); decode holds batch x tp x pp x context KV tokens per device, prefill
ceil(tokens x tp x pp).
tokens/s per device: decode batch / iteration, prefill prompt tokens / iteration.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from moesim import units
from moesim.compute.attention import core_s_per_token_key
from moesim.compute.counts import forward_flops_per_token, sequence_forward_flops_per_token
from moesim.errors import InfeasibleError, SpecError
from moesim.specs import ModelSpec
from moesim.specs.deployment import Deployment
from moesim.specs.pipeline_layout import pipeline_stages
from moesim.step import pricing
from moesim.step.breakdown import StepBreakdown
from moesim.step.cache import StepCache
from moesim.step.host import loop_host_s, loop_sequences, loop_time_s
from moesim.step.layer import layer_ops
from moesim.step.stack import StackArrays, stack_times
from moesim.step.workload import Decode, Prefill, Training

LAYER_COMPONENTS = ("attention_s", "attention_comm_s", "elementwise_s", "router_s", "dispatch_s", "experts_s",
                    "shared_experts_s", "combine_s", "dense_ffn_s")
ROUTING_FIELDS = ("expert_imbalance", "drop_fraction", "reroute_fraction", "backup_fraction")


@dataclass(frozen=True)
class StepEstimate:
    """Estimates at N points: arrays of the ``StepBreakdown`` fields; ``breakdown(i)`` one point."""

    phase: str
    overlap: str
    capacity_factor: float | None
    overflow: str
    step_time_s: np.ndarray
    tokens_per_step_per_device: np.ndarray
    memory_GiB: np.ndarray
    memory_capacity_GiB: float
    columns: dict = field(repr=False)

    def __len__(self) -> int:
        return self.step_time_s.size

    @property
    def fits(self) -> np.ndarray:
        return self.memory_GiB <= self.memory_capacity_GiB

    @property
    def tokens_per_s_per_device(self) -> np.ndarray:
        return self.tokens_per_step_per_device / self.step_time_s

    def breakdown(self, i: int = 0) -> StepBreakdown:
        return StepBreakdown(
            phase=self.phase, overlap=self.overlap, step_time_s=float(self.step_time_s[i]),
            tokens_per_step_per_device=float(self.tokens_per_step_per_device[i]),
            memory_GiB=float(self.memory_GiB[i]), memory_capacity_GiB=self.memory_capacity_GiB,
            capacity_factor=self.capacity_factor, overflow=self.overflow,
            **{k: float(v[i]) for k, v in self.columns.items()})

    def breakdowns(self) -> list[StepBreakdown]:
        return [self.breakdown(i) for i in range(len(self))]


def estimate(model: ModelSpec, deployment: Deployment, workload: Decode | Prefill | Training, *,
             check_memory: bool = True, cache: StepCache | None = None) -> StepEstimate:
    """The step model at every point of ``workload`` (module docstring).

    Raises SpecError naming the field for a deployment the model cannot run, InfeasibleError
    (with the memory model's reason) when ``check_memory`` and a point does not fit.
    ``cache``: the caller's ``StepCache`` (a fresh one when None: nothing is kept).
    """
    cache = StepCache() if cache is None else cache
    if isinstance(workload, Training):
        from moesim.step.training import training_estimate

        return training_estimate(model, deployment, workload, check_memory=check_memory, cache=cache)
    if not isinstance(workload, (Decode, Prefill)):
        raise SpecError("workload", type(workload).__name__, "a Decode, Prefill or Training workload")
    return _inference(model, deployment, workload, check_memory, cache)


def overflow_name(dep: Deployment) -> str:
    """The overflow policy reported: ``dropless`` without a capacity limit."""
    return "dropless" if dep.capacity_factor is None else dep.overflow


# ---- layers and stages over N points -----------------------------------------------------------
def layer_kinds(model: ModelSpec) -> tuple[list[list[int]], np.ndarray]:
    """Layers grouped by kind (MoE?, windowed?) and the kind of every layer (L,)."""
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i in range(model.num_layers):
        groups.setdefault((model.layer_is_moe(i), model.layer_is_windowed(i)), []).append(i)
    kinds = list(groups.values())
    kind_L = np.empty(model.num_layers, dtype=int)
    for k, layers in enumerate(kinds):
        kind_L[layers] = k
    return kinds, kind_L


def stage_layers(model: ModelSpec, pp: int) -> list[range]:
    """Contiguous layer ranges of the ``pp`` pipeline stages (the ceil split of
    moesim/specs/pipeline_layout.py ``pipeline_stages``, as compute.memory)."""
    return [range(r.layers[0], r.layers[-1] + 1) if r.layers else range(0) for r in pipeline_stages(model.num_layers, pp)]


@dataclass(frozen=True)
class KindOps:
    """The layer model's ops per layer kind and point, as arrays (K, N)."""

    ops_KN: list
    arrays: StackArrays
    comp_KN: dict
    routing_KN: dict
    core_KN: np.ndarray

    @classmethod
    def of(cls, ops_KN: list, core_KN: np.ndarray | None = None) -> "KindOps":
        arrays = StackArrays.of(ops_KN)
        K, N = arrays.P_LN.shape
        core = np.zeros((K, N)) if core_KN is None else core_KN
        comp = {n: np.array([[getattr(o, n) for o in row] for row in ops_KN]) for n in LAYER_COMPONENTS}
        comp["attention_s"] = comp["attention_s"] + core
        routing = {n: np.array([[getattr(o, n) for o in row] for row in ops_KN]) for n in ROUTING_FIELDS}
        if core_KN is not None:  # decode core attention streams the KV cache: memory-bound
            arrays = replace(arrays, P_LN=arrays.P_LN + core, Pm_LN=arrays.Pm_LN + core)
        return cls(ops_KN, arrays, comp, routing, core)

    def stage(self, kind_L: np.ndarray) -> StackArrays:
        """The (L, N) arrays of a stack whose layers have kinds ``kind_L``."""
        return self.arrays.rows(kind_L)


def stage_kind_counts(model: ModelSpec, pp: int, kinds, kind_L) -> tuple[list[np.ndarray], np.ndarray]:
    """Kinds of each stage's layers, and layer counts per (stage, kind) (S, K): the ceil split."""
    return rank_kind_counts(pipeline_stages(model.num_layers, pp), kinds, kind_L)


def rank_kind_counts(ranks, kinds, kind_L: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Kinds of each rank's layers (``pipeline_stages``: its decoder layers, then its MTP modules'
    layers, of the last layer's kind) and layer counts per (rank, kind) (S, K)."""
    mtp_kind = int(kind_L[-1])
    stages = [np.concatenate([kind_L[list(r.layers)], np.full(r.mtp, mtp_kind, dtype=kind_L.dtype)]) for r in ranks]
    counts_SK = np.array([[np.count_nonzero(ks == k) for k in range(len(kinds))] for ks in stages], dtype=float)
    return stages, counts_SK


def pick(values_SN: np.ndarray) -> np.ndarray:
    """Index of the critical (largest; first on ties) stage of every point (N,)."""
    return np.argmax(values_SN, axis=0)


def stage_sums(kops: KindOps, counts_SK: np.ndarray, crit_N: np.ndarray, scale) -> dict[str, np.ndarray]:
    """Component times summed over the critical stage's layers, x ``scale`` (N,)."""
    c_NK = counts_SK[crit_N]
    return {n: scale * np.einsum("nk,kn->n", c_NK, v) for n, v in kops.comp_KN.items()}


def stage_routing(kops: KindOps, counts_SK: np.ndarray, crit_N: np.ndarray) -> dict[str, np.ndarray]:
    """Routing figures of the critical stage: the largest over its layer kinds (N,)."""
    present_KN = counts_SK[crit_N].T > 0
    return {n: np.where(present_KN, v, -np.inf).max(axis=0) for n, v in kops.routing_KN.items()}


# ---- decode and prefill ------------------------------------------------------------------------
def _inference(model, dep: Deployment, w: Decode | Prefill, check_memory: bool, cache: StepCache) -> StepEstimate:
    phase = w.phase
    overlap = dep.overlap_of(phase)
    setup = cache.setup(model, dep, phase, w.skew)
    halves = 2 if overlap == "two_microbatch" else 1
    hw, atp = dep.hardware, dep.tp
    if phase == "decode":
        tokens_N, context_N = w.batch_per_device, w.context
        layer_ctx_N = np.zeros_like(context_N)
        kv_N = tokens_N * dep.tp * dep.pp * context_N
    else:
        tokens_N = w.prompt_len * w.prompts_per_device
        context_N = layer_ctx_N = (w.prompt_len + 1) / 2 if w.context is None else w.context
        kv_N = np.ceil(tokens_N * dep.tp * dep.pp)
    mb_N = tokens_N / halves
    kinds, kind_L = layer_kinds(model)
    ops_KN = [[layer_ops(setup, layers[0], float(t), float(c)) for t, c in zip(mb_N, layer_ctx_N)] for layers in kinds]
    core_KN = None
    if phase == "decode":
        slope = core_s_per_token_key(hw, model, phase="decode", tp=atp, dtype=setup.projection_dtype,
                                     kv_dtype=dep.kv_dtype, core_dtype=setup.core_dtype,
                                     device_fraction=setup.device_fraction)
        keys_KN = np.array([np.minimum(context_N, model.attention.window_tokens) if model.layer_is_windowed(ls[0])
                            else context_N for ls in kinds], dtype=float)
        core_KN = slope * mb_N * atp * keys_KN / setup.device_fraction  # compute at the stack's fraction, KV stream not
    kops = KindOps.of(ops_KN, core_KN)
    if phase == "decode":
        head_N = (np.asarray(pricing.gemm_s(hw, mb_N * atp, model.vocab_size / atp, model.hidden, "bf16")) * halves
                  / setup.device_fraction)
    else:
        head_N = np.zeros_like(mb_N)
    stages, counts_SK = stage_kind_counts(model, dep.pp, kinds, kind_L)
    st = [stack_times(kops.stage(ks), overlap) for ks in stages]
    last = len(stages) - 1
    t_SN = np.array([s.time_s + (head_N if i == last else 0.0) for i, s in enumerate(st)])
    crit = pick(t_SN)
    cols = np.arange(crit.size)

    def chosen(name):
        return np.array([getattr(s, name) for s in st])[crit, cols]

    comp = stage_sums(kops, counts_SK, crit, halves)
    flops_N = _flops(model, phase, w)
    fp0 = cache.get(cache.key(model, dep, "memory", "serve"),
                    lambda: pricing.memory(model, hw, dep.parallelism, mode="serve", weight_dtype=dep.dtype,
                                           kv_dtype=dep.kv_dtype, kv_tokens=0))
    total_N = fp0.total_bytes + kv_N * fp0.kv_bytes_per_token
    if check_memory and (total_N > fp0.capacity_bytes).any():
        i = int(np.flatnonzero(total_N > fp0.capacity_bytes)[0])
        fp = pricing.memory(model, hw, dep.parallelism, mode="serve", weight_dtype=dep.dtype,
                            kv_dtype=dep.kv_dtype, kv_tokens=int(kv_N[i]))
        raise InfeasibleError(fp.reason or "does not fit in device memory")
    # the executor loop's per-sequence host time (moesim/step/host.py eqs. 4-6; 0 for most stacks)
    dev_N = t_SN[crit, cols] * dep.pp
    loop_N = loop_host_s(loop_sequences(tokens_N, dep.tp, dep.pp, phase, getattr(w, "prompt_len", 1.0)), phase,
                         dep.stack) * np.ones_like(dev_N)
    step_N = loop_time_s(dev_N, chosen("host_s") * dep.pp, loop_N, phase, dep.stack)
    columns = dict(
        comp, **stage_routing(kops, counts_SK, crit),
        embedding_head_s=np.where(crit == last, head_N, 0.0), exposed_comm_s=chosen("exposed_comm_s"),
        host_s=chosen("exposed_host_s") + (step_N - dev_N) / dep.pp, host_issue_s=chosen("host_s"),
        host_loop_s=loop_N,
        model_flops_per_step_per_device=flops_N * tokens_N,
        peak_flops=np.full(crit.size, hw.peak_flops(dep.dtype)),
    )
    return StepEstimate(phase, overlap, dep.capacity_factor, overflow_name(dep), step_N, tokens_N,
                        total_N / units.GiB, fp0.capacity_bytes / units.GiB, columns)


def _flops(model: ModelSpec, phase: str, w) -> np.ndarray:
    """Model FLOPs per token at each point (one count per distinct context or prompt length)."""
    if phase == "decode":
        per = {c: forward_flops_per_token(model, int(c) if float(c).is_integer() else c, mla_absorbed=True)
               for c in set(w.context.tolist())}
        return np.array([per[c] for c in w.context.tolist()])
    per = {s: sequence_forward_flops_per_token(model, int(s)) for s in set(w.prompt_len.tolist())}
    return np.array([per[s] for s in w.prompt_len.tolist()])

