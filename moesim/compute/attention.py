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
