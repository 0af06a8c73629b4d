"""Memory-bound (non-GEMM) kernels of one layer: norms, residual adds, the gated activation,
permute/unpermute around the all-to-all, FP8 quantization passes.

Their time is bytes at the achievable HBM bandwidth, ``bytes / (B b)`` with b =
gemm_memory_fraction (the same streaming kernels a memory-bound GEMM is); the kernels' launch
cost is the host's (moesim/step/host.py), not added here. Byte counts per token are derived from
the operations in ``elementwise_bytes``.
"""
from __future__ import annotations

from moesim.specs import HardwareProfile, ModelSpec, bytes_per_element, canonical_dtype

# Bytes per token (in activation elements of 2 B) that a layer's memory-bound kernels move:
# two RMSNorms (read + write D each) and two residual adds (read 2D, write D): 10 D.
NORM_RESIDUAL_ELEMENTS_PER_D = 10.0
ACT_BYTES = 2.0
# FP8 quantization of one GEMM input element: read it in bf16 (2 B), write it in fp8 (1 B);
# training also writes the transposed fp8 copy the weight-gradient GEMM reads (+1 B).
QUANT_BYTES = {"train": 4.0, "prefill": 3.0, "decode": 3.0}


def gemm_input_parts(model: ModelSpec, moe: bool, tp: int, etp: int = 1) -> tuple[float, float, float]:
    """Activation elements per owned token that enter a GEMM of one layer (each is quantized once
    when its GEMM runs in fp8 / fp4), as (attention, routed experts, the rest): qkv input D and
    o-projection input heads x v_dim / tp; MoE: k D (experts' gate/up) + k F (down), and the
    shared experts' D + F_s / tp; dense: D + F / tp. Expert TP: an etp group's ranks each
    quantize every group token's k D inputs (etp k D per owned token) and their own F / etp slice
    of the down input (k F in all)."""
    d, a = model.hidden, model.attention
    attention = d + a.num_heads * a.v_dim / tp
    experts = rest = 0.0
    if moe:
        m = model.moe
        experts = m.top_k * (d * etp + m.expert_ffn)
        if m.num_shared_experts:
            rest = d + m.num_shared_experts * m.shared_expert_ffn / tp
    else:
        rest = d + model.dense_ffn / tp
    return attention, experts, rest


def gemm_input_elements(model: ModelSpec, moe: bool, tp: int, etp: int = 1) -> float:
    """All of ``gemm_input_parts``: the elements quantized when every GEMM of the layer runs low-precision."""
    return sum(gemm_input_parts(model, moe, tp, etp))


def gate_elements(model: ModelSpec) -> float:
    """Activation elements the FFN activation moves per FFN row: a gated one (SwiGLU) reads gate
    and up and writes one (3), a plain one reads and writes one (2)."""
    return 3.0 if model.ffn_activation != "relu" else 2.0


def is_low_precision(dtype: str) -> bool:
    """Whether ``dtype`` is a quantized GEMM format (fp8 / fp4 and their MX / NV aliases)."""
    return canonical_dtype(dtype) in ("fp8", "fp4")


def elementwise_bytes(model: ModelSpec, moe: bool, tokens: float, tp: int, dtype: str = "bf16",
                      phase: str = "prefill", sort_chunks: bool = False, etp: int = 1,
                      projection_dtype: str | None = None, expert_dtype: str | None = None,
                      fused_moe_quant: bool = False) -> float:
    """HBM bytes of one layer's non-GEMM kernels for ``tokens`` owned tokens (forward).

    norms + residuals: 10 D; gated activation: read 2F, write F per FFN row (F / tp for dense);
    MoE: permute (read D, write k D) and unpermute (read k D, write D) around the all-to-all,
    and the activation of k routed copies plus the shared experts. All 2-byte activations.
    ``sort_chunks`` (Megatron-Core's all-to-all token dispatcher with more than one local
    expert): the received copies are sorted by local expert after the dispatch ("Permutation 2",
    ``sort_chunks_by_idxs`` in megatron/core/transformer/moe/token_dispatcher.py
    ``MoEAlltoAllTokenDispatcher``) and back before the combine: read + write k D twice, 4 k D.
    fp8/fp4 GEMMs add one quantization pass over their inputs (``gemm_input_parts`` x
    ``QUANT_BYTES[phase]``: bf16 read, fp8 write, + transposed copy in training): the attention
    projections' at ``projection_dtype``, the routed experts' at ``expert_dtype`` (each ``dtype``
    when not given; moesim/step/setup.py ``projection_dtype`` / ``expert_gemm_dtypes``), the rest
    at ``dtype``. Expert TP (``etp``): every rank of the group permutes and unpermutes all the
    group's tokens (etp x per owned token) while the activation of its F / etp slice stays k F
    per owned token.
    ``fused_moe_quant`` (TensorRT-LLM's CUTLASS fused MoE, moesim/step/layer.py
    ``fuses_moe_quant``): with low-precision experts the permute writes its k D copies already
    quantized and the gated activation writes the down projection's input quantized, so the
    routed experts take no quantization pass of their own and those two writes move the expert
    dtype's bytes instead of 2.
    """
    d = model.hidden
    gate = gate_elements(model)
    el = NORM_RESIDUAL_ELEMENTS_PER_D * d
    attention, experts, rest = gemm_input_parts(model, moe, tp, etp if moe else 1)
    experts_quantized = is_low_precision(expert_dtype or dtype)
    fused = fused_moe_quant and moe and experts_quantized
    written = 0.0  # bytes of the fused kernels' quantized writes (permuted copies, down input)
    if moe:
        m = model.moe
        copies, down_in = m.top_k * d * etp, m.top_k * m.expert_ffn
        # permute read (D), unpermute read (k D) and write (D), activation reads; the two writes below
        el += 2.0 * d * etp + copies + (gate - 1.0) * down_in
        if fused:
            written = (copies + down_in) * bytes_per_element(expert_dtype or dtype)
        else:
            el += copies + down_in
        if sort_chunks:
            el += 4.0 * copies
        el += gate * m.num_shared_experts * m.shared_expert_ffn / tp
    else:
        el += gate * model.dense_ffn / tp
    byts = el * ACT_BYTES + written
    quantized = (attention * is_low_precision(projection_dtype or dtype) + experts * (experts_quantized and not fused)
                 + rest * is_low_precision(dtype))
    return tokens * (byts + quantized * QUANT_BYTES[phase])


def memory_bound_s(hw: HardwareProfile, nbytes: float) -> float:
    """Seconds to stream ``nbytes`` through HBM at the memory-bound kernel fraction."""
    if nbytes <= 0:
        return 0.0
    return nbytes / (hw.hbm_bandwidth_Bps * hw.efficiency.compute.gemm_memory_fraction)
