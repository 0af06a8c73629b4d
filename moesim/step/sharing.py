"""Communication kernels share the GPU with the compute they overlap.

High-throughput all-to-all kernels (DeepEP "normal" dispatch/combine, HybridEP, Megatron's
DeepEP flex dispatcher) are persistent kernels that occupy ``u`` of the device's ``U`` SMs for
their whole run; GEMMs launched on another stream meanwhile get the other ``U - u``. A GEMM's
throughput is proportional to the SMs its tiles run on (full waves; moesim/compute/gemm.py), so
while a comm kernel runs the compute stream progresses at the rate

    share = (U - u) / U        [fraction of full-device compute speed]            (1)

and at rate 1 otherwise (fluid model: an op of full-device duration w that overlaps a comm
interval [a, b] for part of its run finishes when its work w is done at the piecewise rate).
Only overlapped schedules (``two_microbatch``) are affected: under ``none`` no compute runs
while a comm kernel does.

Sources for u (a kernel setting, not a fitted parameter; override with ``comm_sms``):
- DeepEP ``Buffer.num_sms = 20`` (deep_ep/buffer.py, the default SMs of the normal kernels);
  Megatron-Core ``moe_deepep_num_sms = 20``; DeepSeek-V3 technical report s3.2.2 (training):
  "only 20 SMs are sufficient to fully utilize the bandwidths of IB and NVLink" (of 132 on H800).
- DeepEP low-latency kernels: "a hook-based communication-computation overlapping method that
  does not occupy any SM resource" (DeepEP README) -> u = 0.
- TPUs move ICI traffic with DMA engines, not compute units -> share 1.

What else limits the overlap, each a property of the kernels, not a fitted factor:

(2) The GEMM library's fixed grid. SGLang's prefill two-batch overlap gives DeepGEMM the SMs the
    comm kernels leave, ``U - u``, for the whole overlapped forward pass, whether a comm kernel
    runs at that moment or not: sglang/srt/operations_strategy.py
    ``_compute_moe_deepseek_blog_prefill`` (``deep_gemm_num_sms = total_num_sms -
    DeepEPConfig.num_sms``) and two_batch_overlap.py ``_model_forward_tbo`` (``with
    configure_deep_gemm_num_sms(deep_gemm_num_sms)``); the decode strategy passes ``None`` (all
    SMs). DeepGEMM runs SGLang's FP8 GEMMs on Hopper and later (``SGL_ENABLE_JIT_DEEPGEMM``
    defaults to true on sm90+, deep_gemm_wrapper/configurer.py): linear layers and MoE experts.
    So in an FP8 prefill under overlap with normal kernels the compute-bound GEMMs run at

        gemm_share = (U - u) / U   at all times                                      (2)

    (``gemm_grid_share``); other kernels (flash attention, norms) are placed by the hardware on
    whatever SMs are free, the fluid rule (1).
(3) HBM contention. A comm kernel reads its send buffer and writes its receive buffer through
    HBM. On the critical rank a dispatch or combine of ``t`` seconds moving ``S`` bytes out and
    ``R`` bytes in takes the share

        h = (S + R) / t / (B a_m)           [fraction of the achievable HBM bandwidth]  (3)

    (B the profile's HBM bandwidth, a_m the memory-bound kernel fraction that prices every
    memory-bound op, moesim/step/elementwise.py; ``hbm_share``). Memory-bound kernels run at
    ``1 - h`` of full speed while it runs; their speed is set by HBM, not by the SMs (the
    ``U - u`` SMs keep enough bytes in flight: assumed). Compute-bound kernels hide it (their HBM
    traffic per second is far below B). NOTE: ``S + R`` is the least traffic: DeepEP stages
    internode tokens through RDMA and NVLink buffers (more reads and writes), so h is a lower
    bound; low-latency kernels hold no SMs but still move their bytes, so (3) applies to them.

An operation of one micro-batch (P or X, moesim/step/layer.py) is a mixture of kernels: ``g``
seconds of fixed-grid GEMMs, ``m`` of memory-bound kernels, the rest ``o`` other compute, all at
full-device speed. Its kernels interleave finely against a comm interval (P and X are tens of
kernels), so the op progresses at one rate per state (homogeneous-mixture fluid model,
``op_rates``): with w = g + m + o,

    idle rate   = w / (g / gemm_share + m + o)                                          (4)
    comm rate   = w / ((g + o) / share + m / (1 - h))                                   (5)

(fixed-grid GEMMs run at ``gemm_share = share`` in both states; other compute-bound kernels at
``share`` only while a comm kernel holds its SMs). With h = 0, m = 0 and gemm_share = 1 this is
equation (1) exactly.

Checked against (not fitted to): SGLang reports two-batch overlap "achieves a 27% to 35%
throughput increase compared to the vanilla setup, even when processing the same token count per
device" in prefill and 25.5% in decode at 256 tokens per device (lmsys.org/blog/2025-05-05-
large-scale-ep, "Ablation Study: Two-batch Overlap"). Not priced here:
- uneven DP ranks: every step workload has one prompt length (equal attention work per rank);
  uneven expert loads are priced at the busiest rank in every micro-batch (the critical device),
  which the layer DES with sampled per-rank loads reproduces (moesim/des/layer.py);
- SGLang runs the shared experts after both micro-batches' routed experts, under the combine
  (operations_strategy.py: ``op_combine_a`` before ``op_shared_experts``); the layer model puts
  them in X before the combine, slightly pessimistic for the overlap;
- comm kernels running slower beside compute than alone (the blog: "communication time slower
  than unit test results, while the latter is achievable when disabling TBO"): no mechanism for
  it is identified beyond (3).
"""
from __future__ import annotations

import numpy as np

from moesim.errors import SpecError
from moesim.specs import HardwareProfile, canonical_dtype

# DeepEP Buffer.num_sms default = Megatron-Core moe_deepep_num_sms default = DeepSeek-V3's 20 SMs
DEEPEP_NORMAL_SMS = 20
# SMs the comm kernels of each all-to-all mode occupy by default (see module doc)
DEFAULT_COMM_SMS: dict[str, int] = {"normal": DEEPEP_NORMAL_SMS, "low_latency": 0}
# eq. (3) cap: a link-bound comm kernel never takes more HBM than this share (see hbm_share)
HBM_SHARE_MAX = 0.9


def comm_units(hw: HardwareProfile, mode: str, comm_sms: int | None = None) -> int:
    """Compute units ``u`` a comm kernel of ``mode`` holds (``comm_sms`` overrides the default for
    the normal kernels); 0 on devices whose fabric is driven by DMA engines (TPU)."""
    if hw.kind != "gpu" or mode == "low_latency":
        return 0
    return DEFAULT_COMM_SMS[mode] if comm_sms is None else int(comm_sms)


def compute_share(hw: HardwareProfile, mode: str, comm_sms: int | None = None) -> float:
    """(U - u) / U, equation (1): the compute stream's speed while a comm kernel of ``mode`` runs."""
    u = comm_units(hw, mode, comm_sms)
    if u == 0:
        return 1.0
    units = hw.compute.compute_units
    if units is None:
        raise SpecError("compute.compute_units", None, f"profile {hw.name} needs its SM count to share SMs")
    if not 0 <= u < units:
        raise SpecError("comm_sms", u, f"0 <= comm_sms < {units} (the SMs of {hw.name})")
    return (units - u) / units


def gemm_grid_share(hw: HardwareProfile, mode: str, phase: str, dtype: str, comm_sms: int | None = None) -> float:
    """Equation (2): the SM share SGLang's prefill overlap gives its FP8 GEMM library (DeepGEMM)
    for the whole overlapped pass; 1 in decode and training (all SMs; fluid sharing, eq. 1), for
    other dtypes (cuBLAS/CUTLASS GEMMs are placed fluidly) and for kernels holding no SMs."""
    if phase != "prefill" or canonical_dtype(dtype) != "fp8":
        return 1.0
    return compute_share(hw, mode, comm_sms)


def hbm_share(hw: HardwareProfile, bytes_moved: float, comm_s: float) -> float:
    """Equation (3): the share of the achievable HBM bandwidth a comm kernel moving
    ``bytes_moved`` (send-buffer reads + receive-buffer writes on this rank) in ``comm_s`` takes;
    0 without traffic. Capped at 0.9: a comm kernel cannot starve the compute stream (it is
    link-bound, and the cap is never reached by the shipped profiles: h ~ 0.07 on H100 EP32)."""
    if comm_s <= 0 or bytes_moved <= 0:
        return 0.0
    achievable = hw.hbm_bandwidth_Bps * hw.efficiency.compute.gemm_memory_fraction
    return float(min(bytes_moved / comm_s / achievable, HBM_SHARE_MAX))


def op_rates(work, gemm, memory, gemm_share, share, hbm):
    """(idle rate, comm rate) of an op of ``work`` full-speed seconds, ``gemm`` of them fixed-grid
    GEMMs and ``memory`` memory-bound, equations (4)-(5); element-wise over arrays. An op of no
    work has rates 1."""
    w = np.asarray(work, dtype=float)
    g, m = np.asarray(gemm, dtype=float), np.asarray(memory, dtype=float)
    busy = w > 0
    safe = np.where(busy, w, 1.0)
    g, m = np.where(busy, g, 0.0), np.where(busy, m, 0.0)
    idle = safe / (g / gemm_share + (safe - g))
    comm = safe / ((safe - m) / share + m / (1.0 - np.asarray(hbm, dtype=float)))
    return np.where(busy, idle, 1.0), np.where(busy, comm, 1.0)
