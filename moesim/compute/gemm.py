"""GEMM time on one device: a tile-and-wave model with a roofline floor.

``C[m, n] = A[m, k] @ B[k, n]`` runs as output tiles of ``tm x tn`` scheduled over the device's
``U`` compute units (SMs, CUs, MXUs) in waves. For each tile shape a kernel library ships (here:
``tm`` in {tile_m, tile_m/2}, ``tn`` in {tile_n, tile_n/2, tile_n/4, tile_n/8}, tile sizes from
the profile's ``[efficiency.compute]``), the time is

    tiles   = ceil(m / tm) ceil(n / tn)                       [tiles]
    waves   = ceil(tiles / U)                                 [waves]
    steps   = ceil(k / tk)                                    [main-loop k-steps per tile]
    t_step  = max(2 tm tn tk / (P/U c),                       [s: the unit's math at fraction c]
                  (min(m, tm) e_in + tn e_w) tk / s_u)        [s: operand loads at s_u B/s per unit]
              + t_k                                           [s: per-step pipeline overhead]
    t_epi   = min(m, tm) tn e_out / min(s_u, B b / min(tiles, U))   [s: writing the tile]
    t_units = waves (steps t_step + t_epi)

and the kernel's library picks the fastest shape (an autotuner does exactly that; taking the
minimum keeps time non-decreasing in m, n and k). HBM traffic with operand reuse is

    bytes = A passes_A + B passes_B + C                       [B]

where both operands are read once when they fit in L2 together, and otherwise once per wave
footprint: a wave covers w_m = min(m_tiles, floor(sqrt(U))) tile rows and w_n = ceil(U / w_m)
tile columns, so A is read ceil(n_tiles / w_n) times and B ceil(m_tiles / w_m) times (an upper
bound: neighbouring waves may still hit in L2). Finally

    time = overhead + max(t_units, bytes / (B b)).

P: dense peak of the dtype (FLOP/s), B: HBM bandwidth (B/s), c = gemm_compute_fraction,
b = gemm_memory_fraction, s_u = gemm_sm_load_GBps, t_k = gemm_kstep_overhead_ns, tk = gemm_tile_k.
Since c <= 1, b <= 1 and padding only adds work, no prediction beats the roofline
max(2mnk / P, (mk e_in + kn e_w + mn e_out) / B).

**Mixed precision.** e_in is the bytes per element of the math dtype (A, the activations) and
e_w those of B, the weights: the same unless the weights are stored in another format
(``weight_dtype``: MXFP4 weights under MXFP8 or BF16 activations, as GPT-OSS's released
checkpoint runs). P stays the math dtype's peak: the MMA consumes both operands at the wider
one's rate (TensorRT-LLM examples/models/core/gpt_oss/README.md, MoE support matrix: MXFP4
weights x MXFP8 activations on Blackwell run UTCQMMA, the FP8-class tensor-core MMA; x BF16 on
Hopper run HGMMA after the weights are dequantized, "simulated mxfp4").

**TPU (systolic MXU cores).** A TPU TensorCore has a few large MXUs (2 of 256 x 256 on v6e,
4 of 128 x 128 per core on v4/v5e/v5p; docs/reference/hardware.md), fed from VMEM by the
compiler, not thousands of threads scheduling small tiles: the per-unit load limit and the
wave footprint above do not apply (on v6e they gave 12.8% of peak for 8192^3 bf16). For
``hw.kind == "tpu"`` the time is instead

    d       = gemm_tile_k                                    [MXU side: 128 or 256]
    work    = 2 ceil8(m) ceil_d(n) ceil_d(k)                 [FLOP: k and n padded to the
                                                              array, m streamed in rows of 8]
    bm, bn  = min(V, ceil8(m)), min(V, ceil_d(n))          [VMEM output block, V = 1024]
    steps   = ceil(m / bm) ceil(n / bn) ceil(k / d) / U      [block k-steps per MXU]
    t_mxu   = work / (P c) + steps t_k                       [s]
    bytes   = A ceil(n / bn) + B ceil(m / bm) + C            [B: each operand re-read once per
                                                              block row / column it meets]
    time    = overhead + max(t_mxu, bytes / (B b)).

(a weight-stationary systolic array, SB-TPU "Appendix B: how does a systolic array work";
VMEM blocks as in a Pallas/XLA tiled matmul). V = TPU_VMEM_BLOCK = 1024: a 4 MiB fp32
accumulator plus double-buffered operand panels, well inside VMEM (128 MiB on v5e, SB-TPU); a
modelling assumption, not a measured compiler choice, to calibrate when TPU GEMM cases exist.
The grouped-GEMM model (compute/grouped.py) still applies the tile-and-wave rules on TPUs.
Same roofline floor.

Array legend: S = shapes (the flattened broadcast of m, n and k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from moesim import units
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, bytes_per_element, canonical_dtype

BOUNDS: tuple[str, ...] = ("compute", "memory", "latency")

# Output dtype of a GEMM whose inputs are ``dtype``: low-precision inputs accumulate in fp32 and
# write bf16 (DeepGEMM gemm_fp8_fp8_bf16_nt; cuBLASLt FP8 GEMMs), others write their own dtype.
TPU_VMEM_BLOCK = 1024  # rows and columns of the VMEM output block of the TPU model (docstring)

_OUT_DTYPE: dict[str, str] = {
    "fp8": "bf16", "fp4": "bf16", "bf16": "bf16", "fp16": "fp16", "tf32": "fp32", "fp32": "fp32",
}


@dataclass(frozen=True)
class GemmParams:
    """The numbers of one (profile, dtype) the GEMM kernel needs, in SI units."""

    units: int
    peak_per_unit: float  # FLOP/s of one compute unit at the dense peak
    bandwidth: float  # achievable HBM bytes/s (b x B)
    unit_load: float  # bytes/s one unit loads (s_u)
    kstep_s: float
    overhead_s: float
    compute_fraction: float
    tile_m: int
    tile_n: int
    tile_k: int
    in_bytes: float  # bytes per element of A (the activations, at the math dtype)
    out_bytes: float
    l2_bytes: float
    peak: float  # FLOP/s
    hbm: float  # B/s
    systolic: bool = False  # TPU MXU cores (module docstring)
    w_bytes: float = 0.0  # bytes per element of B (the weights); 0: in_bytes (one dtype)

    @property
    def b_bytes(self) -> float:
        """Bytes per element of B: the stored weight format when it differs from the math dtype."""
        return self.w_bytes or self.in_bytes


def gemm_params(hw: HardwareProfile, dtype: str, out_dtype: str | None = None,
                weight_dtype: str | None = None) -> GemmParams:
    """Collect the GEMM inputs of ``hw`` for ``dtype``; SpecError on an unknown dtype or no peak.
    ``weight_dtype``: B (the weights) stored in another format than the math runs in (a
    mixed-precision GEMM, e.g. MXFP4 weights with MXFP8 or BF16 activations: the MMA runs at
    ``dtype``'s peak, the weights stream at their own bytes); None: B is ``dtype`` too."""
    key = canonical_dtype(dtype)
    peak = hw.peak_flops(dtype)
    out = canonical_dtype(out_dtype, field="out_dtype") if out_dtype else _OUT_DTYPE[key]
    eff = hw.efficiency.compute
    n_units = hw.compute.compute_units
    if n_units is None:
        raise SpecError(
            f"{hw.name}.compute.compute_units", None,
            "the GEMM model schedules tiles over compute units (SMs, CUs, MXUs); add the count to the profile",
        )
    return GemmParams(
        units=n_units,
        peak_per_unit=peak / n_units,
        bandwidth=hw.hbm_bandwidth_Bps * eff.gemm_memory_fraction,
        unit_load=eff.gemm_sm_load_GBps * units.GBps,
        kstep_s=eff.gemm_kstep_overhead_ns * 1e-9,
        overhead_s=eff.kernel_overhead_us * units.us,
        compute_fraction=eff.gemm_fraction(key),
        tile_m=eff.gemm_tile_m,
        tile_n=eff.gemm_tile_n,
        tile_k=eff.gemm_tile_k,
        in_bytes=bytes_per_element(dtype),
        out_bytes=bytes_per_element(out),
        l2_bytes=(hw.memory.l2_MB or 0.0) * units.MB,
        peak=peak,
        hbm=hw.hbm_bandwidth_Bps,
        systolic=hw.kind == "tpu",
        w_bytes=bytes_per_element(weight_dtype) if weight_dtype else 0.0,
    )


@numba.njit(cache=True, inline="always")
def _cdiv(a, b):
    return -(-a // b)


@numba.njit(cache=True)
def _hbm_bytes(m, n, k, p_units, tile_m, tile_n, e_in, e_b, e_out, l2_bytes):
    """HBM bytes of one GEMM with operand reuse (module docstring); A at e_in, B at e_b bytes."""
    a = m * k * e_in
    b = k * n * e_b
    c = m * n * e_out
    if a + b <= l2_bytes:
        return a + b + c
    m_t = _cdiv(m, tile_m)
    n_t = _cdiv(n, tile_n)
    w_m = min(m_t, max(1.0, math.floor(math.sqrt(p_units))))
    w_n = _cdiv(p_units, w_m)
    return a * _cdiv(n_t, w_n) + b * _cdiv(m_t, w_m) + c


@numba.njit(cache=True)
def _unit_time(m, n, k, tm, tn, units_, peak_u, frac, bw, load, kstep, tk, e_in, e_b, e_out):
    """(t_units, math-bound?) of tile shape tm x tn (module docstring)."""
    tiles = _cdiv(m, tm) * _cdiv(n, tn)
    waves = _cdiv(tiles, units_)
    steps = _cdiv(k, tk)
    rows = min(m, tm)
    t_math = 2.0 * tm * tn * tk / (peak_u * frac)
    t_load = (rows * e_in + tn * e_b) * tk / load
    t_step = max(t_math, t_load) + kstep
    store = min(load, bw / min(tiles, units_))
    t_epi = rows * tn * e_out / store
    return waves * (steps * t_step + t_epi), t_math >= t_load


@numba.njit(cache=True)
def _gemm_kernel(m_S, n_S, k_S, units_, peak_u, frac, bw, load, kstep, overhead, tile_m, tile_n,
                 tk, e_in, e_b, e_out, l2_bytes, time_S, bytes_S, bound_S):
    """Fill time_S, bytes_S (HBM traffic) and bound_S (index into BOUNDS) for every shape."""
    tms = (tile_m, max(1, tile_m // 2))
    tns = (tile_n, max(1, tile_n // 2), max(1, tile_n // 4), max(1, tile_n // 8))
    for i in range(m_S.shape[0]):
        m, n, k = m_S[i], n_S[i], k_S[i]
        best, best_math = np.inf, False
        for tm in tms:
            for tn in tns:
                t, is_math = _unit_time(m, n, k, tm, tn, units_, peak_u, frac, bw, load, kstep, tk,
                                        e_in, e_b, e_out)
                if t < best:
                    best, best_math = t, is_math
        hbm = _hbm_bytes(m, n, k, units_, tile_m, tile_n, e_in, e_b, e_out, l2_bytes)
        t_hbm = hbm / bw
        body = max(best, t_hbm)
        time_S[i] = overhead + body
        bytes_S[i] = hbm
        if overhead >= body:
            bound_S[i] = 2
        elif t_hbm >= best:
            bound_S[i] = 1
        else:
            bound_S[i] = 0


@numba.njit(cache=True)
def _systolic_kernel(m_S, n_S, k_S, units_, peak, frac, bw, kstep, overhead, tile_m, tile_n, d,
                     e_in, e_b, e_out, time_S, bytes_S, bound_S):
    """The MXU model of the module docstring for every shape (TPU profiles)."""
    for i in range(m_S.shape[0]):
        m, n, k = m_S[i], n_S[i], k_S[i]
        m8 = _cdiv(m, 8.0) * 8.0
        n_d = _cdiv(n, d) * d
        k_d = _cdiv(k, d) * d
        bm = min(tile_m, m8)
        bn = min(tile_n, n_d)
        steps = _cdiv(m, bm) * _cdiv(n, bn) * _cdiv(k, d) / units_
        t_mxu = 2.0 * m8 * n_d * k_d / (peak * frac) + steps * kstep
        hbm = m * k * e_in * _cdiv(n, bn) + k * n * e_b * _cdiv(m, bm) + m * n * e_out
        t_hbm = hbm / bw
        body = max(t_mxu, t_hbm)
        time_S[i] = overhead + body
        bytes_S[i] = hbm
        if overhead >= body:
            bound_S[i] = 2
        elif t_hbm >= t_mxu:
            bound_S[i] = 1
        else:
            bound_S[i] = 0


def _shapes(**sizes: Any) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Broadcast the named sizes; SpecError naming the first non-positive or non-integer one."""
    arrays = []
    for name, value in sizes.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0:
            raise SpecError(name, value, "needs at least one size")
        bad = ~np.isfinite(arr) | (arr <= 0) | (arr != np.floor(arr))
        if bad.any():
            first = arr[bad].flat[0].item()
            raise SpecError(name, int(first) if float(first).is_integer() else first, "must be a positive integer")
        arrays.append(arr)
    try:
        shaped = np.broadcast_arrays(*arrays)
    except ValueError:
        shapes = ", ".join(f"{k}{np.shape(v)}" for k, v in sizes.items())
        raise SpecError("shape", shapes, "m, n and k must broadcast together (numpy rules)") from None
    return shaped[0].shape, [np.ascontiguousarray(a).ravel() for a in shaped]


def gemm_time_arrays(hw: HardwareProfile, m, n, k, dtype: str, out_dtype: str | None = None,
                     weight_dtype: str | None = None):
    """(time_s, hbm_bytes, bound index) arrays for broadcast shapes: the planner's fast path.
    ``weight_dtype``: see ``gemm_params``."""
    shape, (m_S, n_S, k_S) = _shapes(m=m, n=n, k=k)
    p = gemm_params(hw, dtype, out_dtype, weight_dtype)
    return _run(p, m_S, n_S, k_S, shape)


def _run(p: GemmParams, m_S, n_S, k_S, shape):
    time_S = np.empty_like(m_S)
    bytes_S = np.empty_like(m_S)
    bound_S = np.empty(m_S.shape, dtype=np.int8)
    if p.systolic:
        _systolic_kernel(m_S, n_S, k_S, float(p.units), p.peak, p.compute_fraction, p.bandwidth,
                         p.kstep_s, p.overhead_s, float(TPU_VMEM_BLOCK), float(TPU_VMEM_BLOCK), float(p.tile_k),
                         p.in_bytes, p.b_bytes, p.out_bytes, time_S, bytes_S, bound_S)
        return time_S.reshape(shape), bytes_S.reshape(shape), bound_S.reshape(shape)
    _gemm_kernel(m_S, n_S, k_S, float(p.units), p.peak_per_unit, p.compute_fraction, p.bandwidth,
                 p.unit_load, p.kstep_s, p.overhead_s, float(p.tile_m), float(p.tile_n),
                 float(p.tile_k), p.in_bytes, p.b_bytes, p.out_bytes, p.l2_bytes, time_S, bytes_S, bound_S)
    return time_S.reshape(shape), bytes_S.reshape(shape), bound_S.reshape(shape)


@dataclass(frozen=True)
class GemmEstimate:
    """Predicted time of one GEMM (or an array of them: then every field is an array).

    ``flops`` = 2mnk (useful work); ``bytes`` = modelled HBM traffic; ``bound`` = compute (the
    compute units are busiest: math or feeding their operands from L2), memory (HBM traffic
    takes longer than the units' work) or latency (launch overhead dominates);
    ``efficiency`` = flops / (time x peak).
    """

    time_s: Any
    flops: Any
    bytes: Any
    bound: Any
    efficiency: Any
    dtype: str

    @property
    def tflops(self):
        """Achieved TFLOP/s."""
        return self.flops / self.time_s / units.TFLOPS

    def to_dict(self) -> dict:
        def plain(x):
            return x.tolist() if isinstance(x, np.ndarray) else x

        return {
            "time_s": plain(self.time_s),
            "flops": plain(self.flops),
            "bytes": plain(self.bytes),
            "bound": plain(self.bound),
            "efficiency": plain(self.efficiency),
            "tflops": plain(self.tflops),
            "dtype": self.dtype,
        }


def gemm_time(hw: HardwareProfile, m, n, k, dtype: str, out_dtype: str | None = None) -> GemmEstimate:
    """Time of ``C[m,n] = A[m,k] B[k,n]`` in ``dtype`` on ``hw`` (scalars or broadcastable arrays)."""
    scalar = all(np.ndim(x) == 0 for x in (m, n, k))
    shape, (m_S, n_S, k_S) = _shapes(m=m, n=n, k=k)
    p = gemm_params(hw, dtype, out_dtype)
    time_, bytes_, bound_ = _run(p, m_S, n_S, k_S, shape)
    flops = 2.0 * (m_S * n_S * k_S).reshape(shape)
    eff = flops / (time_ * p.peak)
    bound = np.asarray(BOUNDS, dtype=object)[bound_]
    if scalar:
        return GemmEstimate(float(time_), float(flops), float(bytes_), BOUNDS[int(bound_)], float(eff),
                            canonical_dtype(dtype))
    return GemmEstimate(time_, flops, bytes_, bound, eff, canonical_dtype(dtype))


def roofline_time(hw: HardwareProfile, m, n, k, dtype: str, out_dtype: str | None = None,
                  weight_dtype: str | None = None):
    """The physical floor max(2mnk / P, minimal bytes / B) in seconds (no efficiency, no overhead)."""
    shape, (m_S, n_S, k_S) = _shapes(m=m, n=n, k=k)
    p = gemm_params(hw, dtype, out_dtype, weight_dtype)
    flops = 2.0 * m_S * n_S * k_S
    byts = m_S * k_S * p.in_bytes + k_S * n_S * p.b_bytes + m_S * n_S * p.out_bytes
    return np.maximum(flops / p.peak, byts / p.hbm).reshape(shape)
