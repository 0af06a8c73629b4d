"""Hardware profile: what one accelerator can do, and the fabric it sits in.

A profile is data (one TOML file per accelerator in ``hwprofiles/``). Every number in it names
its source in the ``sources`` table of its section, and the loader refuses a profile where one
does not. Units are in the key names (``hbm_bandwidth_GBps``); properties give SI values.
Peaks are *dense* (never the 2:4-sparsity figure).

Efficiency parameters (achievable bandwidth fractions, tile efficiency, overheads) are the only
numbers fitted to measurements; they live in ``[efficiency]`` with an ``origin`` that says
whether they are the generic prior or were calibrated, on which set and when.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from moesim import units
from moesim.errors import SpecError
from moesim.specs.common import DTYPES, Dtype, Spec, canonical_dtype

# dtypes whose tensor-core math runs at one rate on every profile (equal dense peaks, one kernel
# family): a GEMM fraction measured on one holds for the other (ComputeEfficiency.gemm_fraction)
_SAME_RATE: dict[str, set[str]] = {"bf16": {"bf16", "fp16"}, "fp16": {"bf16", "fp16"}}


class Sourced(Spec):
    """A section whose numeric fields each need an entry in ``sources`` (or a ``"*"`` entry)."""

    sources: dict[str, str] = Field(default_factory=dict, description="field name -> source")

    @model_validator(mode="after")
    def _every_number_has_a_source(self):
        if "*" in self.sources:
            return self
        for name in type(self).model_fields:
            if name == "sources":
                continue
            value = getattr(self, name)
            numeric = isinstance(value, (int, float, dict, list)) and not isinstance(value, bool)
            if numeric and value not in ({}, []) and name not in self.sources:
                raise SpecError(name, value, f"every number needs a source: add sources.{name} naming where it came from")
        return self


class ComputeSpec(Sourced):
    """Peak dense math throughput and the parallel units that waves are counted over."""

    peak_dense_tflops: dict[Dtype, float] = Field(
        description="dense peak per dtype in TFLOP/s (never the sparsity figure)"
    )
    compute_units: int | None = Field(
        None, gt=0, description="SMs (NVIDIA), CUs (AMD) or MXUs (TPU): tiles are scheduled over these"
    )
    compute_unit_kind: Literal["sm", "cu", "mxu", "core"] = "sm"
    clock_MHz: float | None = Field(None, gt=0)

    @field_validator("peak_dense_tflops", mode="before")
    @classmethod
    def _canonical_dtypes(cls, value):
        if not isinstance(value, dict):
            return value
        out = {}
        for key, tflops in value.items():
            key = canonical_dtype(key, field="compute.peak_dense_tflops")
            if not isinstance(tflops, (int, float)) or isinstance(tflops, bool) or tflops <= 0:
                raise SpecError(f"peak_dense_tflops.{key}", tflops, "allowed: a positive number of TFLOP/s")
            out[key] = float(tflops)
        if not out:
            raise SpecError("peak_dense_tflops", value, f"allowed: at least one dtype of {', '.join(DTYPES)}")
        return out


RUNTIME_TO_PRINTED_RANGE = (0.9, 1.15)


class MemorySpec(Sourced):
    """On-package memory (HBM) and on-chip cache."""

    hbm_GB: float = Field(gt=0, description="HBM capacity in decimal GB as the vendor prints it")
    runtime_MiB: float | None = Field(
        None, gt=0,
        description="device memory the driver reports (nvidia-smi / NVML memory.total, rocm-smi "
        "VRAM total) in MiB; serving engines size their KV cache from it. Unset: hbm_GB is used",
    )
    hbm_bandwidth_GBps: float = Field(gt=0, description="HBM bandwidth in decimal GB/s")
    l2_MB: float | None = Field(None, gt=0, description="L2 / on-chip SRAM in MB")

    @model_validator(mode="after")
    def _runtime_close_to_printed(self):
        # The driver's total differs from the printed capacity by the GB/GiB convention and
        # by reserved or extra stacks (H100 81,559 MiB = 1.07 x 80 GB; H200 1.07 x 141 GB):
        # outside 0.9-1.15 the two numbers describe different parts.
        if self.runtime_MiB is not None:
            ratio = self.runtime_MiB * units.MiB / (self.hbm_GB * units.GB)
            if not RUNTIME_TO_PRINTED_RANGE[0] <= ratio <= RUNTIME_TO_PRINTED_RANGE[1]:
                lo, hi = RUNTIME_TO_PRINTED_RANGE
                raise SpecError("runtime_MiB", self.runtime_MiB,
                                f"allowed: {lo} to {hi} x the printed hbm_GB (a different part's figure?)")
        return self

    @property
    def capacity_bytes(self) -> float:
        """What software can allocate from: the driver's total when known, else the printed GB."""
        if self.runtime_MiB is not None:
            return self.runtime_MiB * units.MiB
        return self.hbm_GB * units.GB


class ScaleUpSpec(Sourced):
    """The scale-up domain (NVLink/NVSwitch, Infinity Fabric, TPU ICI): who talks at memory-like speed."""

    fabric: str = Field(description="for example nvlink4, nvlink5, infinity-fabric, ici")
    topology: Literal["switch", "full_mesh", "torus"] = Field(
        description="switch: any device to any at full per-device bandwidth (NVSwitch); "
        "full_mesh: one direct link per peer (AMD xGMI); torus: TPU ICI"
    )
    domain_size: int = Field(gt=0, description="devices per scale-up domain in the usual system")
    max_domain_size: int = Field(gt=0, description="largest scale-up domain the platform supports")
    bandwidth_per_direction_GBps: float = Field(gt=0, description="per device, one direction")
    bandwidth_bidirectional_GBps: float = Field(gt=0, description="per device, both directions")
    links_per_device: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self):
        if self.domain_size > self.max_domain_size:
            raise SpecError("domain_size", self.domain_size, "allowed: at most max_domain_size")
        if self.bandwidth_per_direction_GBps > self.bandwidth_bidirectional_GBps:
            raise SpecError("bandwidth_per_direction_GBps", self.bandwidth_per_direction_GBps,
                            "allowed: at most bandwidth_bidirectional_GBps")
        return self

    @property
    def bandwidth_Bps(self) -> float:
        """Per-device one-direction bandwidth in bytes/s."""
        return self.bandwidth_per_direction_GBps * units.GBps


class ScaleOutSpec(Sourced):
    """The scale-out network between scale-up domains (InfiniBand/RoCE NICs, TPU DCN)."""

    nic_Gbps_per_device: float = Field(gt=0, description="NIC line rate per device, Gb/s, one direction")
    rail_aligned: bool = True

    @property
    def bandwidth_Bps(self) -> float:
        """Per-device one-direction NIC bandwidth in bytes/s."""
        return self.nic_Gbps_per_device * units.Gbps


class IciSpec(Sourced):
    """TPU inter-chip interconnect: a 2D or 3D torus of point-to-point links."""

    torus_dims: Literal[2, 3]
    links_per_chip: int = Field(gt=0)
    link_bandwidth_per_direction_GBps: float = Field(gt=0)
    wraparound: bool = True
    max_slice_chips: int = Field(gt=0)
    chips_per_host: int = Field(gt=0)


PriceQuality = Literal["list", "secondary", "estimate", "user"]
EfficiencyOrigin = Literal["calibrated", "transferred", "prior"]


class PriceSpec(Sourced):
    """A default on-demand price per device-hour; users override it.

    ``provider`` names whose price list it is (``runpod``, ``gcp``, ...): the planner compares
    prices of one provider only unless a scenario states the mix (:mod:`moesim.prices`).
    ``quality``: ``list`` read from the provider's own price page, ``secondary`` a price a third
    party reports, ``estimate`` computed from other prices (no public price found).
    """

    usd_per_device_hour: float = Field(gt=0)
    as_of: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$",
                       description="date the price was read, YYYY-MM or YYYY-MM-DD")
    provider: str = Field("unstated", pattern=r"^[a-z0-9][a-z0-9.\-]*$",
                          description="whose price list this is, e.g. runpod, gcp, tensorwave")
    quality: PriceQuality = Field("list", description="list, secondary, estimate or user")


class ComputeEfficiency(Spec):
    """Compute-side efficiencies (fractions of peak, tile shape, overheads); calibration fits these."""

    gemm_compute_fraction: float = Field(
        0.80, gt=0, le=1, description="fraction of the dense peak a large GEMM sustains"
    )
    gemm_fraction_dtypes: tuple[str, ...] = Field(
        (), description="the math dtypes gemm_compute_fraction was measured on (its calibration "
        "rows); a GEMM in another dtype runs at the generic prior fraction, since a fraction fitted "
        "on one kernel family (FP8 DeepGEMM, BF16 cuBLAS) says nothing of another's sustained rate. "
        "fp16 and bf16 share one tensor-core rate, so either covers both. Empty: every dtype"
    )
    gemm_memory_fraction: float = Field(
        0.85, gt=0, le=1, description="fraction of HBM bandwidth a memory-bound GEMM sustains"
    )
    gemm_tile_m: int = Field(128, gt=0, description="rows of one output tile")
    gemm_tile_n: int = Field(128, gt=0, description="columns of one output tile")
    kernel_overhead_us: float = Field(3.0, ge=0, description="fixed launch and prologue time per kernel")
    gemm_tile_k: int = Field(
        128, gt=0, description="depth (k elements) of one main-loop step of a GEMM tile; the unit "
        "gemm_kstep_overhead_ns is paid per (FP8 block-scaled kernels promote partial sums every 128)"
    )
    gemm_kstep_overhead_ns: float = Field(
        0.0, ge=0, description="time one SM spends per main-loop k-step of a tile beyond the math and "
        "the loads (pipeline barrier, accumulator promotion); 0 = none (neutral prior)"
    )
    gemm_sm_load_GBps: float = Field(
        1000.0, gt=0, description="operand bytes one SM can pull into shared memory per second (from L2 "
        "or HBM); limits GEMMs that run on few SMs or re-read a shared operand from L2. The prior "
        "1000 GB/s per SM is effectively unlimited (neutral)"
    )
    attention_compute_fraction: float = Field(
        0.60, gt=0, le=1, description="fraction of peak flash attention sustains in prefill"
    )
    attention_memory_fraction: float = Field(
        0.80, gt=0, le=1, description="fraction of HBM bandwidth decode attention sustains"
    )

    @field_validator("gemm_fraction_dtypes", mode="before")
    @classmethod
    def _canonical_dtypes(cls, v):
        return tuple(sorted({canonical_dtype(d, field="gemm_fraction_dtypes") for d in v}))

    def gemm_fraction(self, dtype: str) -> float:
        """The compute fraction a GEMM whose math runs in ``dtype`` sustains: the fitted
        ``gemm_compute_fraction`` where its calibration measured ``dtype`` (or any dtype, when
        ``gemm_fraction_dtypes`` is empty), the generic prior elsewhere."""
        if not self.gemm_fraction_dtypes:
            return self.gemm_compute_fraction
        key = canonical_dtype(dtype)
        family = _SAME_RATE.get(key, {key})
        if family & set(self.gemm_fraction_dtypes):
            return self.gemm_compute_fraction
        return type(self).model_fields["gemm_compute_fraction"].default

    @model_validator(mode="before")
    @classmethod
    def _drop_host(cls, data):
        """Accept profiles written before software stacks: ``host_op_overhead_us`` (host time
        per operator, once copied into every GPU profile) is a property of the software stack
        now (moesim/data/stacks.toml); the field still loads and is ignored."""
        if isinstance(data, dict) and "host_op_overhead_us" in data:
            data = {k: v for k, v in data.items() if k != "host_op_overhead_us"}
        return data


class CommEfficiency(Spec):
    """Communication-side efficiencies; calibration fits these."""

    scale_up_bandwidth_fraction: float = Field(
        0.80, gt=0, le=1, description="achievable fraction of scale-up per-direction bandwidth"
    )
    scale_up_latency_us: float = Field(3.0, ge=0, description="per-operation scale-up latency")
    scale_out_bandwidth_fraction: float = Field(
        0.80, gt=0, le=1, description="achievable fraction of NIC line rate"
    )
    scale_out_latency_us: float = Field(6.0, ge=0, description="per-operation scale-out latency")
    per_peer_overhead_us: float = Field(
        0.5, ge=0, description="per destination peer cost of one all-to-all (dominates small decode batches)"
    )


class Efficiency(Spec):
    """Fitted parameters with physical meaning; ``origin`` says whether and how they were fitted."""

    origin: str = Field(
        "generic prior: the same round values on every profile, not fitted to any measurement",
        description="where these values came from (prior, or the calibration set and date)",
    )
    compute_origin: EfficiencyOrigin = Field(
        "prior", description="compute efficiencies: calibrated on this hardware's measurements, "
        "transferred from the same silicon, or the generic prior"
    )
    comm_origin: EfficiencyOrigin = Field(
        "prior", description="communication efficiencies: calibrated, transferred or prior"
    )
    compute: ComputeEfficiency = Field(default_factory=ComputeEfficiency)
    comm: CommEfficiency = Field(default_factory=CommEfficiency)


class HardwareProfile(Spec):
    """One accelerator type: compute, memory, fabrics, price and fitted efficiencies."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$", description="profile name, e.g. h100-sxm")
    display_name: str
    vendor: Literal["nvidia", "amd", "google", "cpu"]
    kind: Literal["gpu", "tpu", "cpu"]
    notes: str = ""
    compute: ComputeSpec
    memory: MemorySpec
    scale_up: ScaleUpSpec
    scale_out: ScaleOutSpec | None = None
    ici: IciSpec | None = None
    price: PriceSpec
    efficiency: Efficiency = Field(default_factory=Efficiency)
    references: dict[str, str] = Field(
        default_factory=dict, description="source key -> URL or document, as cited in sources"
    )

    @model_validator(mode="after")
    def _tpu_has_ici(self):
        if self.kind == "tpu" and self.ici is None:
            raise SpecError("ici", None, "a tpu profile needs an [ici] section (torus shape and link bandwidth)")
        return self

    # ---- SI accessors -------------------------------------------------------------------
    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; raises SpecError when the profile has no such peak."""
        key = canonical_dtype(dtype)
        peaks = self.compute.peak_dense_tflops
        if key not in peaks:
            have = ", ".join(d for d in DTYPES if d in peaks)
            raise SpecError("dtype", dtype, f"profile {self.name} has peaks for: {have}")
        return peaks[key] * units.TFLOPS

    @property
    def hbm_bytes(self) -> float:
        """Usable device memory in bytes: the driver-reported total when the profile has it."""
        return self.memory.capacity_bytes

    @property
    def hbm_bandwidth_Bps(self) -> float:
        """HBM bandwidth in bytes/s."""
        return self.memory.hbm_bandwidth_GBps * units.GBps

    def with_efficiency(self, efficiency: Efficiency) -> "HardwareProfile":
        """A copy of this profile with other efficiency parameters (profiles are frozen)."""
        return self.model_copy(update={"efficiency": efficiency})
