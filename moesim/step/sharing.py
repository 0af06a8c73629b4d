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

NOTE: the comm kernels also move their bytes through HBM (send buffer read + receive buffer
write, at most about 2 x the link bandwidth, e.g. 2 x 0.4 of 3.35 TB/s on H100 NVLink). That
contention only slows memory-bound kernels and is not modelled; (1) is applied to the whole
compute stream, which slightly over-slows its memory-bound part (norms, decode attention).
"""
from __future__ import annotations

from moesim.errors import SpecError
from moesim.specs import HardwareProfile

# DeepEP Buffer.num_sms default = Megatron-Core moe_deepep_num_sms default = DeepSeek-V3's 20 SMs
DEEPEP_NORMAL_SMS = 20
# SMs the comm kernels of each all-to-all mode occupy by default (see module doc)
DEFAULT_COMM_SMS: dict[str, int] = {"normal": DEEPEP_NORMAL_SMS, "low_latency": 0}


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
