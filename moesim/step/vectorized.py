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
