"""Grouped GEMM time: one kernel multiplying G groups (experts) of rows by their own weights.

Group g has ``m_g`` rows (tokens routed to expert g; 0 = empty expert) and its own ``k x n``
weight. Three layouts (the first two DeepGEMM's names):

- ``contiguous`` (training; DeepGEMM's m-grouped kernels): the groups' rows are concatenated,
  each group padded to the tile height ``tile_m`` so no tile mixes experts. Padding rows are real memory: they are
  loaded, multiplied and written.
- ``masked`` (decode, CUDA graphs): every group has a fixed buffer of ``capacity`` rows of which
  the first ``m_g`` are valid; tiles past the valid rows exit at once, only valid rows are
  loaded and written (the tile still multiplies its full height).
- ``token_tiled`` (serving engines' fused-MoE kernels): as ``contiguous``, but when the groups
  are short (mean rows per non-empty group m_bar below ``tile_m``) the kernel tiles the
  tokens at tt = clamp(next power of two of m_bar, 8, 64) rows and pads each group only to
  tt: the weights take the MMA's wide side and the tokens its narrow one. TensorRT-LLM's
  trtllm-gen fused MoE (tensorrt_llm/_torch/custom_ops/trtllm_gen_custom_ops.py,
  ``calculate_tile_tokens_dim``: "Guess tokens per expert assuming perfect expert distribution
  first ... pad the number to the next power of 2 ... Cap to 8-64 tokens per CTA tile as it's
  the range supported by the kernel"; the routing pads each expert's rows to that tile, the
  weights are shuffled "for transposed MMA output" at epilogue_tile_m 128) and vLLM/SGLang's
  Triton fused_moe (BLOCK_SIZE_M 16 or 64 by batch, moe_align_block_size padding every expert
  to it) both work so. With m_bar >= ``tile_m`` it is ``contiguous``.

Per tile shape (tm, tn) as in ``gemm`` (same symbols, see moesim/compute/gemm.py):

    tiles  = n_tiles x sum_g ceil(rows_g / tm)        rows_g = padded (contiguous, token_tiled) or valid (masked)
    waves  = ceil(tiles / U)
    t_units = waves (steps t_step(r) + t_epi(r)),    r = rows loaded per tile (mean over tiles)

all groups' tiles share the waves. HBM bytes: every non-empty group's weight read once
(G_nonempty k n e_in), the rows read once, the output written once. time = overhead +
max(min over tile shapes t_units, bytes / (B b)).

On TPU profiles (systolic MXU cores, moesim/compute/gemm.py) a grouped GEMM runs as one kernel
over the non-empty groups one after another (MegaBlocks-style ``megablox`` on TPU): time =
overhead + sum over non-empty groups of that group's MXU GEMM time without its launch.

Array legend: G groups, C tile-shape candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from moesim.compute.gemm import BOUNDS, gemm_params
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, canonical_dtype

Layout = Literal["contiguous", "masked", "token_tiled"]
LAYOUTS: tuple[str, ...] = ("contiguous", "masked", "token_tiled")
TOKEN_TILE_MIN, TOKEN_TILE_MAX = 8, 64  # token_tiled: the fused-MoE kernels' token tile range


def token_tile(mean_rows: float, tile_m: int) -> int:
    """Token-tile height of the ``token_tiled`` layout for ``mean_rows`` rows per group: the
    next power of two, clamped to [TOKEN_TILE_MIN, TOKEN_TILE_MAX]; ``tile_m`` (the contiguous
    layout) once the groups fill a full tile."""
    if mean_rows >= tile_m:
        return int(tile_m)
    pow2 = 1 << (max(int(np.ceil(mean_rows)), 1) - 1).bit_length()
    return int(min(max(pow2, TOKEN_TILE_MIN), TOKEN_TILE_MAX, tile_m))


@dataclass(frozen=True)
class GroupedGemmEstimate:
    """Predicted time of one grouped GEMM.

    ``flops`` counts valid rows only (2 sum(m_g) n k); ``padded_rows`` = rows the kernel
    multiplies including padding; ``bytes`` = modelled HBM traffic.
    """

    time_s: float
    flops: float
    bytes: float
    bound: str
    efficiency: float
    layout: str
    groups: int
    nonempty_groups: int
    rows: int
    padded_rows: int

    @property
    def tflops(self) -> float:
        return self.flops / self.time_s / 1e12

    def to_dict(self) -> dict:
        return {
            "time_s": self.time_s, "flops": self.flops, "bytes": self.bytes, "bound": self.bound,
            "efficiency": self.efficiency, "tflops": self.tflops, "layout": self.layout,
            "groups": self.groups, "nonempty_groups": self.nonempty_groups, "rows": self.rows,
            "padded_rows": self.padded_rows,
        }


def _check(m_per_group, n, k, layout, capacity) -> tuple[np.ndarray, int, int]:
    m_G = np.atleast_1d(np.asarray(m_per_group, dtype=np.float64))
    if m_G.ndim != 1 or m_G.size == 0:
        raise SpecError("m_per_group", m_per_group, "a non-empty list of rows per group")
    bad = ~np.isfinite(m_G) | (m_G < 0) | (m_G != np.floor(m_G))
    if bad.any():
        raise SpecError("m_per_group", m_G[bad][0].item(), "rows per group must be integers >= 0")
    for name, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not float(v).is_integer() or v <= 0:
            raise SpecError(name, v, "must be a positive integer")
    if layout not in LAYOUTS:
        raise SpecError("layout", layout, f"allowed: {', '.join(LAYOUTS)}")
    if capacity is not None and layout != "masked":
        raise SpecError("capacity", capacity, f"applies to layout masked only (layout is {layout})")
    if layout == "masked" and capacity is not None:
        if capacity <= 0 or m_G.max() > capacity:
            raise SpecError("capacity", capacity, f"must be positive and >= the largest group ({int(m_G.max())})")
    return m_G, int(n), int(k)


def grouped_gemm_time(hw: HardwareProfile, m_per_group, n: int, k: int, dtype: str,
                      layout: Layout = "contiguous", capacity: int | None = None,
                      out_dtype: str | None = None, weight_dtype: str | None = None) -> GroupedGemmEstimate:
    """Time of a grouped GEMM with ``m_per_group[g]`` rows in group g (shape G, ints >= 0).
    ``weight_dtype``: the groups' weights stored in another format than the math dtype
    (moesim/compute/gemm.py ``gemm_params``)."""
    m_G, n, k = _check(m_per_group, n, k, layout, capacity)
    p = gemm_params(hw, dtype, out_dtype, weight_dtype)
    rows = float(m_G.sum())
    nonempty = int((m_G > 0).sum())
    tm_list: tuple[int, ...] = (p.tile_m, max(1, p.tile_m // 2))
    align = float(p.tile_m)
    if layout == "token_tiled":
        align = float(token_tile(rows / max(nonempty, 1), p.tile_m))
        if align < p.tile_m:
            tm_list = (int(align),)
    padded_G = np.ceil(m_G / align) * align if layout != "masked" else m_G
    stored_rows = float(padded_G.sum())
    hbm = stored_rows * k * p.in_bytes + nonempty * k * n * p.b_bytes + stored_rows * n * p.out_bytes
    t_hbm = hbm / p.bandwidth
    flops = 2.0 * rows * n * k
    if rows == 0:
        return GroupedGemmEstimate(p.overhead_s, 0.0, 0.0, "latency", 0.0, layout, m_G.size, 0, 0, 0)
    if p.systolic:
        return _systolic_grouped(hw, m_G, n, k, dtype, out_dtype, layout, p, weight_dtype)
    best, best_math, best_padded = np.inf, False, stored_rows
    steps = -(-k // p.tile_k)
    for tm in tm_list:
        m_tiles = float(np.ceil(padded_G / tm).sum())
        for tn in (p.tile_n, max(1, p.tile_n // 2), max(1, p.tile_n // 4), max(1, p.tile_n // 8)):
            tiles = m_tiles * -(-n // tn)
            waves = -(-tiles // p.units)
            r = min(float(tm), stored_rows / m_tiles)  # mean rows loaded per tile
            t_math = 2.0 * tm * tn * p.tile_k / (p.peak_per_unit * p.compute_fraction)
            t_load = (r * p.in_bytes + tn * p.b_bytes) * p.tile_k / p.unit_load
            t_epi = r * tn * p.out_bytes / min(p.unit_load, p.bandwidth / min(tiles, p.units))
            t = waves * (steps * (max(t_math, t_load) + p.kstep_s) + t_epi)
            if t < best:
                best, best_math, best_padded = t, t_math >= t_load, m_tiles * tm
    body = max(best, t_hbm)
    time = p.overhead_s + body
    bound = 2 if p.overhead_s >= body else (1 if t_hbm >= best else 0)
    return GroupedGemmEstimate(
        time_s=time, flops=flops, bytes=hbm, bound=BOUNDS[bound], efficiency=flops / (time * p.peak),
        layout=layout, groups=int(m_G.size), nonempty_groups=nonempty, rows=int(rows),
        padded_rows=int(best_padded),
    )


def _systolic_grouped(hw, m_G, n, k, dtype, out_dtype, layout, p, weight_dtype=None) -> GroupedGemmEstimate:
    """Grouped GEMM on TPU MXU cores: the non-empty groups' GEMMs back to back (module docstring)."""
    from moesim.compute.gemm import gemm_time_arrays

    used_G = m_G[m_G > 0]
    t_G, bytes_G, bound_G = gemm_time_arrays(hw, used_G, n, k, dtype, out_dtype, weight_dtype)
    body_G = t_G - p.overhead_s
    time = p.overhead_s + float(body_G.sum())
    memory_s = float(body_G[bound_G == 1].sum())
    bound = 2 if p.overhead_s >= time - p.overhead_s else (1 if memory_s >= 0.5 * float(body_G.sum()) else 0)
    flops = 2.0 * float(used_G.sum()) * n * k
    return GroupedGemmEstimate(
        time_s=time, flops=flops, bytes=float(bytes_G.sum()), bound=BOUNDS[bound],
        efficiency=flops / (time * p.peak), layout=layout, groups=int(m_G.size), nonempty_groups=int(used_G.size),
        rows=int(used_G.sum()), padded_rows=int((np.ceil(used_G / 8.0) * 8).sum()),
    )


__all__ = ["GroupedGemmEstimate", "LAYOUTS", "Layout", "grouped_gemm_time", "canonical_dtype"]
