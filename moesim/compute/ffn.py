"""FFN time on one rank: routed experts (grouped GEMMs), shared experts, router, dense FFN.

SwiGLU expert (Shazeer 2020): h = (silu(x W_gate) * (x W_up)) W_down. Gate and up are fused into
one GEMM of width 2F (n = 2F, k = D), then the elementwise SwiGLU (reads 2F, writes F per row,
at the HBM fraction b), then down (n = D, k = F). With ETP the expert width F is split: F / etp.
The router is a GEMM of the rank's tokens (n = E, k = D) in bf16. Array legend: E local experts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moesim.compute.gemm import gemm_time
from moesim.compute.grouped import Layout, grouped_gemm_time
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, ModelSpec, bytes_per_element


@dataclass(frozen=True)
class FFNTime:
    """Seconds per part of one FFN block on one rank."""

    router_s: float
    gate_up_s: float
    activation_s: float
    down_s: float
    shared_s: float
    total_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _activation_s(hw: HardwareProfile, rows: float, width: int, act_dtype: str) -> float:
    """SwiGLU elementwise: read 2F, write F per row (bytes / (B b)) plus one kernel overhead."""
    if rows <= 0:
        return 0.0
    eff = hw.efficiency.compute
    byts = rows * 3 * width * bytes_per_element(act_dtype)
    return eff.kernel_overhead_us * 1e-6 + byts / (hw.hbm_bandwidth_Bps * eff.gemm_memory_fraction)


def _dense_swiglu(hw: HardwareProfile, rows: int, d: int, width: int, dtype: str) -> float:
    if rows <= 0:
        return 0.0
    up = gemm_time(hw, rows, 2 * width, d, dtype).time_s
    down = gemm_time(hw, rows, d, width, dtype).time_s
    return up + _activation_s(hw, rows, width, "bf16") + down


def expert_ffn_time(hw: HardwareProfile, model: ModelSpec, tokens_E, tokens: int, dtype: str,
                    etp: int = 1, layout: Layout = "contiguous", capacity: int | None = None,
                    router: bool = True) -> FFNTime:
    """One MoE layer's FFN on one rank.

    tokens_E: rows each local expert slot receives (shape E, ints >= 0, from RoutingStats);
    tokens: tokens the rank routes (router GEMM rows, and the shared experts' rows).
    """
    m = model.moe
    if m is None:
        raise SpecError("model", model.name, "is dense; use dense_ffn_time")
    if tokens < 0:
        raise SpecError("tokens", tokens, "must be >= 0")
    if etp <= 0 or m.expert_ffn % etp:
        raise SpecError("etp", etp, f"must divide expert_ffn = {m.expert_ffn}")
    d, f = model.hidden, m.expert_ffn // etp
    tokens_E = np.asarray(tokens_E)
    up = grouped_gemm_time(hw, tokens_E, 2 * f, d, dtype, layout, capacity).time_s
    down = grouped_gemm_time(hw, tokens_E, d, f, dtype, layout, capacity).time_s
    act = _activation_s(hw, float(tokens_E.sum()), f, "bf16")
    shared = 0.0
    if m.num_shared_experts:
        shared = _dense_swiglu(hw, tokens, d, m.num_shared_experts * m.shared_expert_ffn // etp, dtype)
    r = gemm_time(hw, tokens, m.num_experts, d, "bf16").time_s if (router and tokens > 0) else 0.0
    return FFNTime(r, up, act, down, shared, r + up + act + down + shared)


def dense_ffn_time(hw: HardwareProfile, model: ModelSpec, tokens: int, dtype: str, tp: int = 1) -> FFNTime:
    """A dense SwiGLU FFN of width dense_ffn, split over ``tp`` ranks (column then row parallel)."""
    if model.dense_ffn is None:
        raise SpecError("model", model.name, "has no dense_ffn")
    if tp <= 0 or model.dense_ffn % tp:
        raise SpecError("tp", tp, f"must divide dense_ffn = {model.dense_ffn}")
    if tokens <= 0:
        raise SpecError("tokens", tokens, "must be positive")
    d, f = model.hidden, model.dense_ffn // tp
    up = gemm_time(hw, tokens, 2 * f, d, dtype).time_s
    act = _activation_s(hw, tokens, f, "bf16")
    down = gemm_time(hw, tokens, d, f, dtype).time_s
    return FFNTime(0.0, up, act, down, 0.0, up + act + down)
