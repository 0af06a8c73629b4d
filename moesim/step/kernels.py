"""Device-side floor of a training layer's small kernels: every kernel boundary costs time.

A kernel on the device pays a fixed cost besides its work: the grid launch and the first
blocks' ramp-up (first DRAM latency), the tail wave, and the gap before the next kernel. The
hardware profile carries it as ``kernel_overhead_us`` ("fixed launch and prologue time per
kernel"; fitted on the GEMM measurements: 1.477 us on H100/H800, prior 3 us elsewhere), and the
GEMM, grouped-GEMM and attention models already add it once per kernel. The memory-bound
(non-GEMM) kernels of a layer are priced as one byte stream (moesim/step/elementwise.py), so
their boundaries were free. Per layer pass:

    floor = n_kernels(layer kind, attention variant, pass) x kernel_overhead_us          [s]

with n_kernels the layer's MEASURED non-GEMM kernel launches: the aten launches of the reference
torch layer (validation/count_ops.py, stored in validation/data/op-counts.json "detail"), less its
GEMMs (``mm``, ``_grouped_mm``; priced by the GEMM models) and less the scaled-dot-product
attention's math decomposition (11 forward, 9 backward launches counted the same way on CPU,
which a flash kernel runs as one kernel priced by moesim/compute/attention.py). A CUDA graph
removes the host's launch call, not this device-side cost, so the floor holds under every
training stack.

NOTE: the counts are of an unfused PyTorch layer, close to what eager Megatron + Transformer
Engine trains with (TE fuses some norms and the permute, and adds FP8 quantization kernels). The
floor is applied to the training phase only: serving engines (SGLang, vLLM, TensorRT-LLM) run
fused norm, RoPE and MoE kernels whose counts are not measured here. TPU profiles run XLA fusions
(not these kernels): no floor.
"""
from __future__ import annotations

from moesim import units
from moesim.specs import HardwareProfile, ModelSpec
from moesim.step.host import layer_count

# validation/data/op-counts.json "detail": launches - mm - _grouped_mm - SDPA math (11 / 9), per
# layer and pass; "moe" counts the reference layer with one shared expert (moe_grouped_mm),
# "shared_experts" its share (moe_grouped_mm - moe_grouped_mm_no_shared)
NON_GEMM_KERNELS: dict[str, dict[str, int]] = {
    "dense": {"forward": 19, "backward": 43},
    "moe": {"forward": 66, "backward": 71},
    "shared_experts": {"forward": 3, "backward": 5},
}
# the same count's excess of an MLA layer over the GQA layer (mla_* minus the GQA detail)
ATTENTION_EXTRA_KERNELS: dict[str, dict[str, int]] = {
    "gqa": {"forward": 0, "backward": 0},
    "mla": {"forward": 22, "backward": 37},
    "mla_no_q_lora": {"forward": 16, "backward": 23},
}
# launches of F.scaled_dot_product_attention(causal) under the same counter (CPU math path)
SDPA_MATH_LAUNCHES: dict[str, int] = {"forward": 11, "backward": 9}


def non_gemm_kernels(model: ModelSpec, moe: bool, backward: bool) -> int:
    """Non-GEMM kernel launches of one layer pass (module docstring)."""
    return layer_count(model, moe, backward, NON_GEMM_KERNELS, ATTENTION_EXTRA_KERNELS)


def kernel_floor_s(hw: HardwareProfile, model: ModelSpec, moe: bool, phase: str, backward: bool = False) -> float:
    """Device seconds of one layer pass's non-GEMM kernel boundaries: ``non_gemm_kernels`` x the
    profile's ``kernel_overhead_us`` in training on GPUs; 0 in serving phases and on TPUs."""
    if phase != "train" or hw.kind == "tpu":
        return 0.0
    return non_gemm_kernels(model, moe, backward) * hw.efficiency.compute.kernel_overhead_us * units.us
