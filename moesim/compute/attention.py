"""Attention time of one layer on one device: projections (GEMMs) plus the attention core.

Core, prefill (flash attention, causal): FLOPs = attention_context_flops_per_key (counts.py:
2 heads (qk_head_dim + v_dim) per query-key pair) x attended keys, keys per sequence of S tokens
= S(S+1)/2, or with a window w: w(w+1)/2 + (S - w) w; time = max(FLOPs / (P a_c),
bytes(Q, K, V, O once) / (B a_m)) + overhead. Decode: each of B sequences reads its cache of
min(L, w) tokens x kv bytes per token per layer once; time = max(FLOPs / (P a_c), KV bytes /
(B a_m)) + overhead. MLA decode uses absorbed weights (scores and values in the latent:
2 heads (2 kv_lora_rank + rope) per key) and reads only the latent cache. Heads are split over
tp (MHA/GQA KV heads too; MLA's latent is read by every rank).
a_c = attention_compute_fraction, a_m = attention_memory_fraction.

Keys a fused kernel computes per query (train/prefill, ``kernel_keys_per_query``): flash
attention works on ATTENTION_TILE x ATTENTION_TILE (query x key) tiles, skips the tiles wholly
outside the mask and computes every tile the mask cuts in full (Dao 2023, FlashAttention-2,
s3.1.1 "causal masking"; the sliding-window bounds of flash-attn's forward kernel,
csrc/flash_attn/src/flash_fwd_kernel.h ``n_block_min`` / ``n_block_max``). With B = the tile:
    causal (mean over the sequence):    (S + 1) / 2 + (B - 1) / 2
    sliding window w (w keys incl. self): B (1 + ceil((w - 1) / B)), at most the causal count
    chunked c (B divides c):            min((S + 1) / 2, (c + 1) / 2) + (B - 1) / 2
GPT-OSS (window 128, B 128) thus computes 256 keys per query on its sliding layers, twice the
128 it uses. Learned attention sinks (GPT-OSS) add one logit per query row (and one reduction
in the backward): below one key, not priced. These are cuDNN's fused path in Megatron/TE for
GPT-OSS (sinks need cuDNN >= 9.13, cudnn-frontend 1.14.1 release notes; the unfused path would
store a 2 x B x H x S^2-byte softmax per layer and cannot fit the published runs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from moesim.compute.counts import attention_context_flops_per_key
from moesim.compute.gemm import gemm_time_arrays
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, ModelSpec, bytes_per_element

import numpy as np


@dataclass(frozen=True)
class AttentionTime:
    """Seconds of one attention layer on one device, and the core's FLOPs and bytes."""

    projections_s: float
    core_s: float
    total_s: float
    core_flops: float
    core_bytes: float

    def to_dict(self) -> dict:
        return asdict(self)


def projection_shapes(model: ModelSpec, tp: int, phase: Literal["prefill", "decode"]) -> list[tuple[int, int]]:
    """(n, k) of each projection GEMM per token row on one TP rank."""
    a, d = model.attention, model.hidden
    h = a.num_heads // tp
    if a.kind != "mla":
        kv = max(1, a.num_kv_heads // tp)
        return [(h * a.head_dim + 2 * kv * a.head_dim, d), (d, h * a.head_dim)]
    q = [(a.q_lora_rank, d), (h * a.qk_head_dim, a.q_lora_rank)] if a.q_lora_rank else [(h * a.qk_head_dim, d)]
    shapes = q + [(a.kv_lora_rank + a.qk_rope_head_dim, d), (d, h * a.v_head_dim)]
    if phase == "prefill":  # expand the latent into per-head keys and values
        shapes.append((h * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank))
    else:  # absorbed: q_nope -> latent and latent -> v per head, as h x (rows, .) GEMMs
        shapes += [(h * a.kv_lora_rank, a.qk_nope_head_dim), (h * a.v_head_dim, a.kv_lora_rank)]
    return shapes


def _projections(hw, model, rows, tp, phase, dtype) -> float:
    shapes = projection_shapes(model, tp, phase)
    n = np.array([s[0] for s in shapes])
    k = np.array([s[1] for s in shapes])
    return float(gemm_time_arrays(hw, rows, n, k, dtype)[0].sum())


def _check(model, tp, **sizes):
    if tp <= 0 or model.attention.num_heads % tp:
        raise SpecError("tp", tp, f"must divide num_heads = {model.attention.num_heads}")
    for name, v in sizes.items():
        if v <= 0:
            raise SpecError(name, v, "must be positive")


ATTENTION_TILE = 128  # query and key rows of one flash-attention tile (FA2 fwd, head dims 64-128)


def kernel_keys_per_query(model: ModelSpec, layer: int, context: float, phase: str) -> float:
    """Keys per query the attention kernel computes in ``layer`` (module docstring): decode reads
    min(context, window) cached keys; train/prefill ``context`` is the causal mean (S + 1) / 2
    and whole tiles are computed."""
    a = model.attention
    windowed = model.layer_is_windowed(layer)
    if phase == "decode":
        return min(context, a.window_tokens) if windowed else context
    pad = (ATTENTION_TILE - 1) / 2
    if not windowed:
        return context + pad
    w = a.window_tokens
    if a.window_kind == "chunked":
        return min(context, (w + 1) / 2) + pad
    return min(context + pad, ATTENTION_TILE * (1 + np.ceil((w - 1) / ATTENTION_TILE)))


def causal_keys(seq_len: int, window: int | None) -> float:
    """Query-key pairs of one causal sequence (window-capped)."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) / 2
    return window * (window + 1) / 2 + (seq_len - window) * window


def attention_prefill_time(hw: HardwareProfile, model: ModelSpec, batch: int, seq_len: int,
                           dtype: str = "bf16", tp: int = 1, layer: int = 0) -> AttentionTime:
    """Prefill of ``batch`` sequences of ``seq_len`` tokens through attention layer ``layer``."""
    _check(model, tp, batch=batch, seq_len=seq_len)
    a, eff = model.attention, hw.efficiency.compute
    window = a.window_tokens if model.layer_is_windowed(layer) else None
    flops = batch * causal_keys(seq_len, window) * attention_context_flops_per_key(model) / tp
    kv_heads = a.num_heads if a.kind == "mla" else a.num_kv_heads
    width = (a.num_heads * (a.qk_head_dim + a.v_dim) + kv_heads * (a.qk_head_dim + a.v_dim)) / tp
    byts = batch * seq_len * width * 2.0  # Q, O and K, V in bf16, each touched once
    core = eff.kernel_overhead_us * 1e-6 + max(
        flops / (hw.peak_flops("bf16") * eff.attention_compute_fraction),
        byts / (hw.hbm_bandwidth_Bps * eff.attention_memory_fraction))
    proj = _projections(hw, model, batch * seq_len, tp, "prefill", dtype)
    return AttentionTime(proj, core, proj + core, flops, byts)


def attention_decode_time(hw: HardwareProfile, model: ModelSpec, batch: int, context: int,
                          dtype: str = "bf16", kv_dtype: str = "bf16", tp: int = 1,
                          layer: int = 0) -> AttentionTime:
    """One decode step of ``batch`` sequences with ``context`` cached tokens, layer ``layer``."""
    _check(model, tp, batch=batch, context=context)
    a, eff = model.attention, hw.efficiency.compute
    keys = min(context, a.window_tokens) if model.layer_is_windowed(layer) else context
    if a.kind == "mla":
        kv_elems = model.kv_elements_per_token("latent")
        flops = batch * keys * attention_context_flops_per_key(model, mla_absorbed=True) / tp
    else:
        kv_elems = 2 * max(1, a.num_kv_heads // tp) * a.head_dim
        flops = batch * keys * attention_context_flops_per_key(model) / tp
    byts = batch * keys * kv_elems * bytes_per_element(kv_dtype)
    core = eff.kernel_overhead_us * 1e-6 + max(
        flops / (hw.peak_flops("bf16") * eff.attention_compute_fraction),
        byts / (hw.hbm_bandwidth_Bps * eff.attention_memory_fraction))
    proj = _projections(hw, model, batch, tp, "decode", dtype)
    return AttentionTime(proj, core, proj + core, flops, byts)


def _core_dtype(hw: HardwareProfile, dtype: str) -> str:
    """Core attention runs in bf16 (FlashAttention/FlashMLA; FP8 recipes keep it in bf16) when the
    profile has a bf16 peak, else in the GEMM dtype."""
    return "bf16" if "bf16" in hw.compute.peak_dense_tflops else dtype


def core_s_per_token_key(hw: HardwareProfile, model: ModelSpec, *, phase: str, tp: int, dtype: str = "bf16",
                         kv_dtype: str = "bf16", core_dtype: str | None = None,
                         device_fraction: float = 1.0) -> float:
    """Seconds of core attention per (query token x attended key) on one device: the slope the
    step model and its vectorized planner path scale by tokens x keys.

        per key: max(F_key / tp / (P a_c), [decode] kv bytes per token x share / (B a_m))     [s]

    F_key = attention_context_flops_per_key (MLA absorbed in decode); share = 1 for MLA (every
    rank reads the latent) and 1/tp otherwise. ``phase``: prefill, train or decode. P is the
    peak of ``core_dtype`` when given (a deployment's stated ``attention_dtype``: FP8 attention
    kernels run the score and value matmuls in FP8), else of ``_core_dtype(hw, dtype)``.

    ``device_fraction`` f (the software stack's, moesim/specs/software_stack.py): the caller
    divides every compute operation by f (moesim/step/layer.py ``at_device_fraction``); the KV
    stream of decode already runs at the bandwidth fraction decode attention kernels sustain
    (``attention_memory_fraction``, prior 0.80; deepseek-ai/FlashMLA's README reports "up to
    3000 GB/s in memory-bound configuration" on H800 SXM5, 0.90 of its 3.35 TB/s: docs/accuracy.md
    "Device fraction and memory-bound kernels"), which core clocks under the power limit and
    launch gaps do not lower. Its term
    is therefore pre-scaled by f here, so that after the division the slope is
    ``max(F_key / tp / (P a_c f), bytes / (B a_m))``: only the compute-bound branch at the
    stack's fraction.
    """
    if not 0.0 < device_fraction <= 1.0:
        raise ValueError(f"device_fraction {device_fraction}: must be in (0, 1]")
    eff = hw.efficiency.compute
    per_key = attention_context_flops_per_key(model, mla_absorbed=phase == "decode") / tp
    peak = hw.peak_flops(core_dtype) if core_dtype is not None else hw.peak_flops(_core_dtype(hw, dtype))
    t_flops = per_key / (peak * eff.attention_compute_fraction)
    t_bytes = 0.0
    if phase == "decode":
        kv = model.kv_elements_per_token() * bytes_per_element(kv_dtype)
        share = 1 if model.attention.kind == "mla" else 1 / tp
        t_bytes = kv * share / (hw.hbm_bandwidth_Bps * eff.attention_memory_fraction) * device_fraction
    return max(t_flops, t_bytes)


def projections_s(hw: HardwareProfile, model: ModelSpec, *, rows: float, tp: int, phase: str, dtype: str) -> float:
    """The projection GEMMs (``projection_shapes``) of ``rows`` token rows on one TP rank (s);
    train and prefill use the prefill shapes (MLA expands the latent), decode the absorbed ones."""
    if rows <= 0:
        return 0.0
    return _projections(hw, model, max(round(rows), 1), tp, "decode" if phase == "decode" else "prefill", dtype)


def attention_block_s(hw: HardwareProfile, model: ModelSpec, *, tokens: float, context: float, phase: str,
                      tp: int, dtype: str, kv_dtype: str = "bf16", core_dtype: str | None = None,
                      device_fraction: float = 1.0) -> float:
    """One attention block on one device for ``tokens`` query rows of the TP group (s):

        projections + core_s_per_token_key x tokens x context + one kernel overhead

    ``context`` = attended keys per query (prefill/train: the causal mean (S + 1) / 2, window-
    capped by the caller; decode: the cached tokens). Equal to attention_prefill_time's core when
    tokens x context = batch x causal_keys. ``dtype``: the projections' GEMMs; ``core_dtype``:
    see ``core_s_per_token_key`` (and for ``device_fraction``).
    """
    if tokens <= 0:
        return 0.0
    proj = projections_s(hw, model, rows=tokens, tp=tp, phase=phase, dtype=dtype)
    slope = core_s_per_token_key(hw, model, phase=phase, tp=tp, dtype=dtype, kv_dtype=kv_dtype, core_dtype=core_dtype,
                                 device_fraction=device_fraction)
    return proj + slope * tokens * context + hw.efficiency.compute.kernel_overhead_us * 1e-6
