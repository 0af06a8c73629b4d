"""Vectorized decode iterations for the planner: a whole grid of (hardware, devices, batch,
context) deployments at once.

Legend: H hardware profiles, V device counts, B batch sizes per device, C context lengths,
L layers, N = H x V x B flattened configurations.

Deployment per device count v: DP attention (tp 1), EP = v over all devices, the fewest
redundant expert slots that make E + r divisible by v, pp 1 (DeepSeek/SGLang large-EP decode).
Per-configuration constants come from the scalar layer model (``layer_ops`` at context 0 for
each (h, v, b): projections, router, dispatch, experts on the busiest rank, shared experts,
combine); only core attention depends on the context, linearly:
    P_l(c) = P_l(0) + s_h x (b / mb) x keys_l(c)     [s], keys_l = min(c, window) or c
with s_h the attention slope (seconds per query token x key). The schedule (sum, or the
two-micro-batch recurrence) then runs on (L, N, C) arrays. Equal to ``decode_iteration`` at
every grid point (test). Decode replays CUDA graphs, so it has no host issue time and no host
sync (moesim/step/host.py): the schedules run without the host, as the scalar path's do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from moesim.compute.attention import core_s_per_token_key
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, ModelSpec, Parallelism
from moesim.specs.parallel import check_parallelism, smallest_redundancy
from moesim.step import _adapters as ad
from moesim.step.layer import OVERLAPS, layer_ops, make_setup, two_microbatch_time
from moesim.step.schedule import serial_time


@dataclass(frozen=True)
class DecodeGrid:
    """Decode estimates on the grid; arrays are indexed [h, v, b, c]."""

    hardware: tuple[str, ...]
    devices: np.ndarray
    batch: np.ndarray
    context: np.ndarray
    overlap: str
    step_time_s: np.ndarray
    fits: np.ndarray

    @property
    def tokens_per_s_per_device(self) -> np.ndarray:
        return self.batch[None, None, :, None] / self.step_time_s

    @property
    def size(self) -> int:
        return int(self.step_time_s.size)

    def to_dict(self) -> dict:
        return {"hardware": list(self.hardware), "devices": self.devices.tolist(), "batch": self.batch.tolist(),
                "context": self.context.tolist(), "overlap": self.overlap,
                "step_time_s": self.step_time_s.tolist(), "fits": self.fits.tolist(),
                "tokens_per_s_per_device": self.tokens_per_s_per_device.tolist()}


def _keys_LC(model: ModelSpec, context_C: np.ndarray) -> np.ndarray:
    """Attended keys per layer and context (window-capped)."""
    out = np.empty((model.num_layers, context_C.size))
    for i in range(model.num_layers):
        out[i] = np.minimum(context_C, model.attention.window_tokens) if model.layer_is_windowed(i) else context_C
    return out


@dataclass(frozen=True)
class DecodeConstants:
    """Per-configuration constants of a decode grid: arrays [l, h, v, b] (P at context 0, D, X,
    C), head [h, v, b], attention slope [h, v] (s per token-key), KV tokens that fit [h, v]
    (-1: the weights alone do not fit), compute share under overlapped all-to-all [l, h, v, b]."""

    model: ModelSpec
    hardware: tuple[str, ...]
    devices: np.ndarray
    batch: np.ndarray
    overlap: str
    P0_LHVB: np.ndarray
    D_LHVB: np.ndarray
    X_LHVB: np.ndarray
    C_LHVB: np.ndarray
    head_HVB: np.ndarray
    slope_HV: np.ndarray
    kv_fit_HV: np.ndarray
    share_LHVB: np.ndarray | float = 1.0  # compute speed while layer l's all-to-all runs (step/sharing.py)

    @property
    def configurations(self) -> int:
        return int(self.head_HVB.size)


def _layer_kinds(model: ModelSpec) -> dict[tuple[bool, bool], list[int]]:
    """Layers grouped by (MoE?, windowed?): layers of one kind have identical context-free ops."""
    kinds: dict[tuple[bool, bool], list[int]] = {}
    for i in range(model.num_layers):
        kinds.setdefault((model.layer_is_moe(i), model.layer_is_windowed(i)), []).append(i)
    return kinds


def _constants(model, hw, v, batch_B, *, devices_per_node, dtype, kv_dtype, skew, halves, comm_sms=None):
    """Per-layer (P at context 0, D, X, C) arrays of shape (L, B), head (B,), slope, KV fit."""
    par = Parallelism(dp=v, ep=v, attention_layout="dp",
                      redundant_experts=smallest_redundancy(model.moe.num_experts, v) if model.moe else 0)
    check_parallelism(model, par)
    setup = make_setup(model, hw, dtype=dtype, phase="decode", attention_tp=1, cp=1, ep=v,
                       redundant_experts=par.redundant_experts, ranks_per_node=min(devices_per_node, v),
                       skew=skew, kv_dtype=kv_dtype, comm_sms=comm_sms)
    L = model.num_layers
    P, D, X, C, S = (np.empty((L, batch_B.size)) for _ in range(5))
    head = np.empty(batch_B.size)
    kinds = _layer_kinds(model)
    for j, b in enumerate(batch_B):
        mb = b / halves
        for layers in kinds.values():
            o = layer_ops(setup, layers[0], mb, 0.0)
            P[layers, j], D[layers, j], X[layers, j], C[layers, j] = o.pre_s, o.dispatch_s, o.ffn_s, o.combine_s
            S[layers, j] = o.compute_share
        head[j] = ad.gemm_s(hw, mb, model.vocab_size, model.hidden, "bf16") * halves
    slope = core_s_per_token_key(hw, model, phase="decode", tp=1, dtype=dtype, kv_dtype=kv_dtype)
    fit = ad.memory(model, hw, par, mode="serve", weight_dtype=dtype, kv_dtype=kv_dtype, kv_tokens=0)
    return P, D, X, C, S, head, slope, fit.kv_tokens_fit if fit.fits else -1


def decode_constants(model: ModelSpec, hws: Sequence[HardwareProfile], devices: Sequence[int],
                     batch: Sequence[int], *, devices_per_node: int = 8, dtype: str = "fp8",
                     kv_dtype: str = "bf16", overlap: str = "none", skew: str = "uniform",
                     comm_sms: int | None = None) -> DecodeConstants:
    """The scalar model's context-free constants of every (hardware, devices, batch) configuration
    (``comm_sms``: SMs of the normal all-to-all kernels, as ``decode_iteration``)."""
    if overlap not in OVERLAPS:
        raise SpecError("overlap", overlap, f"one of {', '.join(OVERLAPS)}")
    batch_B = np.asarray(batch, dtype=float)
    if batch_B.size == 0 or (batch_B <= 0).any():
        raise SpecError("batch", batch, "every batch must be positive")
    devices_V = np.asarray(devices, dtype=int)
    halves = 2 if overlap == "two_microbatch" else 1
    H, V, B, L = len(hws), devices_V.size, batch_B.size, model.num_layers
    P0, D, X, C, S = (np.empty((L, H, V, B)) for _ in range(5))
    head, slope, fit = np.empty((H, V, B)), np.empty((H, V)), np.empty((H, V))
    for h, hw in enumerate(hws):
        for k, v in enumerate(devices_V):
            P0[:, h, k], D[:, h, k], X[:, h, k], C[:, h, k], S[:, h, k], head[h, k], slope[h, k], fit[h, k] = _constants(
                model, hw, int(v), batch_B, devices_per_node=devices_per_node, dtype=dtype,
                kv_dtype=kv_dtype, skew=skew, halves=halves, comm_sms=comm_sms)
    return DecodeConstants(model, tuple(hw.name for hw in hws), devices_V, batch_B, overlap, P0, D, X, C,
                           head, slope, fit, S)


def evaluate(k: DecodeConstants, context: Sequence[int]) -> DecodeGrid:
    """Decode step time at every context for every configuration of ``k`` (numpy only)."""
    context_C = np.asarray(context, dtype=float)
    if context_C.size == 0 or (context_C <= 0).any():
        raise SpecError("context", context, "every context must be positive")
    halves = 2 if k.overlap == "two_microbatch" else 1
    L, H, V, B = k.P0_LHVB.shape
    keys_LC = _keys_LC(k.model, context_C)
    mb_B = k.batch / halves
    P = k.P0_LHVB[..., None] + (k.slope_HV[None, :, :, None, None] * mb_B[None, None, None, :, None]
                                * keys_LC[:, None, None, None, :])
    if k.overlap == "none":
        t = P.sum(axis=0) + (k.D_LHVB + k.X_LHVB + k.C_LHVB).sum(axis=0)[..., None]
    else:
        n = H * V * B * context_C.size
        full = P.shape

        def flat(a):
            return np.broadcast_to(a[..., None], full).reshape(L, n)

        share = np.broadcast_to(np.asarray(k.share_LHVB, dtype=float), k.D_LHVB.shape)
        t = two_microbatch_time(P.reshape(L, n), flat(k.D_LHVB), flat(k.X_LHVB), flat(k.C_LHVB), flat(share))
        t = t.reshape(H, V, B, context_C.size)
    t = t + k.head_HVB[..., None]
    fits = k.batch[None, None, :, None] * context_C[None, None, None, :] <= k.kv_fit_HV[:, :, None, None]
    return DecodeGrid(k.hardware, k.devices, k.batch, context_C, k.overlap, t, fits)


def decode_grid(model: ModelSpec, hws: Sequence[HardwareProfile], devices: Sequence[int],
                batch: Sequence[int], context: Sequence[int], **kw) -> DecodeGrid:
    """Decode-iteration time of every (hardware, devices, batch per device, context) point:
    ``evaluate(decode_constants(...), context)``."""
    return evaluate(decode_constants(model, hws, devices, batch, **kw), context)


# ---- one layout, many iterations (the planner's analytic stage) ------------------------------
# Legend (here): L layers, K layer kinds (MoE?, windowed?), N iterations of one layout (batches
# or prompt sizes). Layers of one kind have identical ops at a given (tokens, context) (the
# scalar model's own ``layer_ops`` cache key), so one ``layer_ops`` per (kind, n) and the
# schedule (``two_microbatch_time`` / ``serial_time``, element-wise over N) on (L, N) arrays
# reproduce ``decode_iteration`` / ``prefill_iteration`` for a single pipeline stage (pp 1);
# pp > 1 falls back to the scalar calls. Equal to the scalar model to rounding (test).


def _kind_of_L(model: ModelSpec) -> tuple[list[list[int]], np.ndarray]:
    kinds = list(_layer_kinds(model).values())
    kind_L = np.empty(model.num_layers, dtype=int)
    for k, layers in enumerate(kinds):
        kind_L[layers] = k
    return kinds, kind_L


def _core_KN(setup, kinds, tokens_N, context_N) -> np.ndarray:
    """Decode core attention per layer kind beyond context 0 (s): slope x tokens x tp x keys,
    keys = min(context, window) in windowed layers (``attention_ops``; the module docstring's
    linear-in-context rule)."""
    model = setup.model
    slope = core_s_per_token_key(setup.hw, model, phase="decode", tp=setup.attention_tp, dtype=setup.dtype,
                                 kv_dtype=setup.kv_dtype)
    keys_KN = np.array([np.minimum(context_N, model.attention.window_tokens) if model.layer_is_windowed(layers[0])
                        else context_N for layers in kinds], dtype=float)
    return slope * np.asarray(tokens_N, dtype=float) * setup.attention_tp * keys_KN


def _stack_N(setup, tokens_N, context_N, overlap: str):
    """Schedule of one stage of every layer at each (tokens, context): returns (ops per kind and
    n, layer count per kind, total_N, rec_N (no host), issue_N, compute_N, core_KN) as
    ``stack_times`` defines them. Decode: the layer model runs at context 0 (its context-free
    part is then shared by every context of one batch) and ``core_KN`` (:func:`_core_KN`) is
    added to P and to ``attention_s``; other phases: at the context itself, ``core_KN`` = 0."""
    kinds, kind_L = _kind_of_L(setup.model)
    linear = setup.phase == "decode"
    ctx_N = np.zeros(len(tokens_N)) if linear else context_N
    ops_KN = [[layer_ops(setup, layers[0], float(t), float(c)) for t, c in zip(tokens_N, ctx_N)]
              for layers in kinds]
    core_KN = _core_KN(setup, kinds, tokens_N, context_N) if linear else np.zeros((len(kinds), len(tokens_N)))

    def arr(name):
        return np.array([[getattr(o, name) for o in row] for row in ops_KN])[kind_L]

    P, D, X, C, share, hP, hX = (arr(n) for n in ("pre_s", "dispatch_s", "ffn_s", "combine_s", "compute_share",
                                                   "host_pre_s", "host_post_s"))
    P = P + core_KN[kind_L]
    sync_LN = arr("host_sync").astype(bool)
    issue_N = (hP + hX).sum(axis=0)
    N = len(tokens_N)
    total, rec = np.zeros(N), np.empty(N)
    for pattern in {tuple(col) for col in sync_LN.T}:  # the schedule takes one sync flag per layer
        cols = np.flatnonzero((sync_LN.T == np.array(pattern)).all(axis=1))
        sub = [a[:, cols] for a in (P, D, X, C, share, hP, hX)]
        hosted = bool((issue_N[cols] > 0).any())  # decode replays graphs: no host, one schedule
        if overlap == "none":
            rec[cols] = sub[0].sum(0) + sub[1].sum(0) + sub[2].sum(0) + sub[3].sum(0)
            if hosted:
                total[cols] = serial_time(*sub[:4], hP_L=sub[5], hX_L=sub[6], sync_L=np.array(pattern))
        else:
            rec[cols] = two_microbatch_time(*sub[:5])
            if hosted:
                total[cols] = two_microbatch_time(*sub, sync_L=np.array(pattern))
    total = np.where(issue_N > 0, total, rec)
    counts_K = np.array([len(layers) for layers in kinds], dtype=float)
    return ops_KN, counts_K, total, rec, issue_N, (P.sum(0) + X.sum(0)), core_KN


class LayoutIterations:
    """Decode and prefill iterations of ONE deployment (model, hardware, cluster, layout, dtypes,
    routing, overlap), many at a time: the deployment is checked and its ``LayerSetup`` built once
    per phase (the scalar model rebuilds both per call; the setup also memoizes ``layer_ops`` per
    (kind, tokens, context)). Times equal ``decode_iteration`` / ``prefill_iteration``'s."""

    def __init__(self, model: ModelSpec, hw: HardwareProfile, cluster, par: Parallelism, *, dtype: str = "fp8",
                 kv_dtype: str = "bf16", routing=None, overlap: str = "none", prefill_overlap: str | None = None,
                 a2a_mode: str = "auto", comm_sms: int | None = None):
        from moesim.step.common import check_deployment, check_routing
        from moesim.step.inference import UNIFORM

        self.routing = UNIFORM if routing is None else routing
        self.prefill_overlap = overlap if prefill_overlap is None else prefill_overlap
        check_deployment(model, hw, cluster, par, overlap)
        check_deployment(model, hw, cluster, par, self.prefill_overlap)
        check_routing(self.routing)
        self.model, self.hw, self.cluster, self.par, self.overlap = model, hw, cluster, par, overlap
        self.kw = dict(dtype=dtype, kv_dtype=kv_dtype, routing=self.routing, a2a_mode=a2a_mode, comm_sms=comm_sms)
        self._setups: dict[str, object] = {}

    def setup(self, phase: str):
        from moesim.step.inference import _setup

        if phase not in self._setups:
            kw = self.kw
            self._setups[phase] = _setup(self.model, self.hw, self.cluster, self.par, dtype=kw["dtype"], phase=phase,
                                         routing=kw["routing"], a2a_mode=kw["a2a_mode"], kv_dtype=kw["kv_dtype"],
                                         comm_sms=kw["comm_sms"])
        return self._setups[phase]

    def decode(self, batch_per_device: Sequence[float], context: int) -> list:
        """``decode_iteration(..., check_memory=False)`` at every batch (see ``decode_breakdowns``)."""
        from moesim.step.inference import decode_iteration

        batch_B = np.asarray(batch_per_device, dtype=float)
        if batch_B.size and (batch_B <= 0).any():
            raise SpecError("batch_per_device", batch_per_device, "every batch must be positive")
        if context <= 0:
            raise SpecError("context", context, "must be positive")
        if self.par.pp > 1:
            return [decode_iteration(self.model, self.hw, self.cluster, self.par, batch_per_device=float(b),
                                     context=context, overlap=self.overlap, check_memory=False, **self.kw)
                    for b in batch_B]
        return _decode_breakdowns(self, batch_B, context)

    def prefill(self, prompt_len: Sequence[int], prompts_per_device: Sequence[float],
                overlap: str | None = None) -> np.ndarray:
        """``prefill_iteration(...).step_time_s`` at every (prompt_len, prompts_per_device) pair
        (causal attention: context (S + 1) / 2; no LM head in prefill; host in the loop) under
        ``overlap`` (default: the deployment's prefill overlap)."""
        from moesim.step.common import check_deployment
        from moesim.step.inference import prefill_iteration

        if overlap is not None and overlap != self.prefill_overlap:
            check_deployment(self.model, self.hw, self.cluster, self.par, overlap)
        overlap = self.prefill_overlap if overlap is None else overlap

        S_N = np.asarray(prompt_len, dtype=float)
        n_N = np.asarray(prompts_per_device, dtype=float)
        if S_N.shape != n_N.shape or (S_N <= 0).any() or (n_N <= 0).any():
            raise SpecError("prompt_len/prompts_per_device", (prompt_len, prompts_per_device),
                            "positive, of equal length")
        if self.par.pp > 1:
            return np.array([prefill_iteration(self.model, self.hw, self.cluster, self.par, prompt_len=int(s),
                                               prompts_per_device=float(n), overlap=overlap,
                                               check_memory=False, **self.kw).step_time_s for s, n in zip(S_N, n_N)])
        halves = 2 if overlap == "two_microbatch" else 1
        return _stack_N(self.setup("prefill"), S_N * n_N / halves, (S_N + 1) / 2, overlap)[2] * self.par.pp


def decode_breakdowns(model: ModelSpec, hw: HardwareProfile, cluster, par: Parallelism, *,
                      batch_per_device: Sequence[float], context: int, overlap: str = "none", **kw) -> list:
    """``decode_iteration(..., check_memory=False)`` of one layout at every batch (one context):
    a ``StepBreakdown`` per batch (``LayoutIterations.decode``)."""
    return LayoutIterations(model, hw, cluster, par, overlap=overlap, **kw).decode(batch_per_device, context)


def prefill_times(model: ModelSpec, hw: HardwareProfile, cluster, par: Parallelism, *,
                  prompt_len: Sequence[int], prompts_per_device: Sequence[float], overlap: str = "none",
                  **kw) -> np.ndarray:
    """``prefill_iteration(...).step_time_s`` at every pair (``LayoutIterations.prefill``)."""
    return LayoutIterations(model, hw, cluster, par, overlap=overlap, **kw).prefill(prompt_len, prompts_per_device)


def _decode_breakdowns(it: LayoutIterations, batch_B: np.ndarray, context: int) -> list:
    """One ``layer_ops`` per (layer kind, batch) and the schedule on (L, B) arrays; memory: the
    footprint is linear in KV tokens (moesim/compute/memory.py): total(kv) = total(0) + kv x
    kv_bytes_per_token."""
    from moesim.compute.counts import forward_flops_per_token
    from moesim.step.breakdown import COMPONENTS, StepBreakdown

    model, hw, par, overlap = it.model, it.hw, it.par, it.overlap
    dtype, kv_dtype = it.kw["dtype"], it.kw["kv_dtype"]
    setup = it.setup("decode")
    halves = 2 if overlap == "two_microbatch" else 1
    mb_B = batch_B / halves
    ops_KN, counts_K, total, rec, issue, compute, core_KN = _stack_N(setup, mb_B, np.full(mb_B.size, float(context)),
                                                                    overlap)
    fp0 = ad.memory(model, hw, par, mode="serve", weight_dtype=dtype, kv_dtype=kv_dtype, kv_tokens=0)
    flops = forward_flops_per_token(model, context, mla_absorbed=True)
    peak = hw.peak_flops(setup.dtype)
    out = []
    for j, b in enumerate(batch_B):
        head = ad.gemm_s(hw, mb_B[j] * setup.attention_tp, model.vocab_size / setup.attention_tp, model.hidden,
                         "bf16") * halves
        comp = {name: 0.0 for name in COMPONENTS if name in ops_KN[0][0].components()}
        for k, row in enumerate(ops_KN):
            for name, v in row[j].components().items():
                comp[name] += counts_K[k] * halves * v
            comp["attention_s"] += counts_K[k] * halves * core_KN[k, j]
        if overlap == "none":
            exposed = comp["dispatch_s"] + comp["combine_s"]
            waited = max(0.0, float(total[j] - rec[j])) if issue[j] > 0 else 0.0
        else:
            exposed = max(0.0, rec[j] - 2.0 * compute[j])
            waited = max(0.0, float(total[j] - rec[j]))
        kv = b * par.tp * par.pp * context
        out.append(StepBreakdown(
            phase="decode", overlap=overlap, step_time_s=float(total[j] + head), tokens_per_step_per_device=float(b),
            **comp, embedding_head_s=head, exposed_comm_s=float(exposed), host_s=waited,
            host_issue_s=float(issue[j] * halves), model_flops_per_step_per_device=flops * b, peak_flops=peak,
            memory_GiB=(fp0.total_bytes + kv * fp0.kv_bytes_per_token) / 2**30,
            memory_capacity_GiB=fp0.capacity_bytes / 2**30,
            expert_imbalance=max(row[j].expert_imbalance for row in ops_KN)))
    return out


# ---- decode step times of many layouts, one schedule call (the planner's screening stage) ----
# Legend: L layers, N = sum over layouts of their batches (columns). Decode replays CUDA graphs
# (no host time, no sync), so its schedule is the host-free recurrence, element-wise over
# columns: the layer-model numbers of every layout are gathered first and the schedule (a
# Python loop over L layers, ~3 ms whatever N) runs once per overlap mode for all of them.


def _decode_columns(it: LayoutIterations, batch_B: np.ndarray, context: int):
    """Per-layer (P, D, X, C, share) arrays (L, B) and the LM head (B,) of ``it``'s decode at each
    batch per device: the same ``layer_ops`` (context 0) + core attention as ``_stack_N``."""
    setup = it.setup("decode")
    halves = 2 if it.overlap == "two_microbatch" else 1
    mb_B = batch_B / halves
    kinds, kind_L = _kind_of_L(setup.model)
    ops_KN = [[layer_ops(setup, layers[0], float(t), 0.0) for t in mb_B] for layers in kinds]
    core_KN = _core_KN(setup, kinds, mb_B, np.full(mb_B.size, float(context)))

    def arr(name):
        return np.array([[getattr(o, name) for o in row] for row in ops_KN])[kind_L]

    P = arr("pre_s") + core_KN[kind_L]
    cols = (P, arr("dispatch_s"), arr("ffn_s"), arr("combine_s"), arr("compute_share"))
    model, atp = setup.model, setup.attention_tp
    head_B = np.array([ad.gemm_s(it.hw, m * atp, model.vocab_size / atp, model.hidden, "bf16") * halves
                       for m in mb_B])
    return cols, head_B


def decode_step_times_many(items: Sequence[tuple[LayoutIterations, Sequence[float]]], context: int) -> list:
    """``decode_iteration(...).step_time_s`` of each ``(LayoutIterations, batches per device)``
    item at ``context``, as arrays in item order: equal to ``LayoutIterations.decode`` (test);
    the schedule runs once per overlap mode over every single-stage item's columns (pp > 1 items
    fall back to ``LayoutIterations.decode``)."""
    out: list = [None] * len(items)
    groups: dict[str, list] = {}
    for i, (it, batches) in enumerate(items):
        b_B = np.asarray(batches, dtype=float)
        if it.par.pp > 1 or b_B.size == 0:
            out[i] = np.array([bd.step_time_s for bd in it.decode(b_B, context)]) if b_B.size else np.zeros(0)
            continue
        if (b_B <= 0).any():
            raise SpecError("batch_per_device", batches, "every batch must be positive")
        groups.setdefault(it.overlap, []).append((i, _decode_columns(it, b_B, context)))
    for overlap, members in groups.items():
        P, D, X, C, S = (np.concatenate([cols[k] for _, (cols, _) in members], axis=1) for k in range(5))
        rec = P.sum(0) + D.sum(0) + X.sum(0) + C.sum(0) if overlap == "none" else two_microbatch_time(P, D, X, C, S)
        start = 0
        for i, (cols, head_B) in members:
            n = head_B.size
            out[i] = rec[start:start + n] + head_B
            start += n
    return out
