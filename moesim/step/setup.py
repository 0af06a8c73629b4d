"""``LayerSetup``: one deployment's layer computation in one phase (the ``Deployment`` itself,
not a copy of its fields), with the topologies of its EP and TP x CP groups and the layer-model
memo (moesim/step/layer.py ``layer_ops``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from moesim.comm.topology import Topology
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, ModelSpec, canonical_dtype
from moesim.specs.deployment import Deployment
from moesim.step import pricing
from moesim.step.elementwise import is_low_precision
from moesim.step.sharing import compute_share
from moesim.step.stacks import device_fraction, expert_fraction, resolve

PHASES: tuple[str, ...] = ("prefill", "decode", "train")


def native_fp4(hw: HardwareProfile) -> bool:
    """Whether ``hw`` has a native FP4 tensor-core path (an fp4 peak in the profile: Blackwell)."""
    return "fp4" in hw.compute.peak_dense_tflops


def native_fp8(hw: HardwareProfile) -> bool:
    """Whether ``hw`` has FP8 tensor cores (an fp8 peak in the profile: Hopper, Blackwell, MI300)."""
    return "fp8" in hw.compute.peak_dense_tflops


def expert_gemm_dtypes(model: ModelSpec, hw: HardwareProfile, dtype: str,
                       phase: str = "decode") -> tuple[str, str | None]:
    """(math dtype, stored weight dtype or None) of the routed experts' grouped GEMMs in a run at
    ``dtype`` (moesim/compute/gemm.py, "Mixed precision").

    A checkpoint that ships its experts in their own format (``ModelSpec.expert_weight_dtype``)
    is served as stored (prefill, decode): its expert weights stream at that format's bytes; a
    training run trains its own weights at ``dtype`` (``phase`` "train": (dtype, None)). The math
    runs at the run's dtype, except for 4-bit experts (MXFP4: GPT-OSS as released) in a quantized (fp8 / fp4)
    run, whose activations the kernels keep at the precision the hardware's MMA pairs with 4-bit
    weights (TensorRT-LLM examples/models/core/gpt_oss/README.md, "MoE Support Matrix",
    recommended configurations): MXFP8 on hardware with a native FP4 tensor-core path (an fp4
    peak in the profile: Blackwell, MMA "UTCQMMA", the FP8 rate) and BF16 elsewhere (Hopper:
    "simulated mxfp4, HGMMA", the weights dequantized in registers). Without a stored format:
    (dtype, None), one dtype for both operands."""
    stored = model.expert_weight_dtype
    if not stored or phase == "train":
        return dtype, None
    if canonical_dtype(stored) != "fp4" or not is_low_precision(dtype):
        return dtype, stored
    return ("fp8" if native_fp4(hw) else "bf16"), stored


def projection_dtype(model: ModelSpec, deployment: Deployment, phase: str = "decode") -> str:
    """The attention projections' dtype: the deployment's ``attention_dtype`` when stated; else,
    served (prefill, decode), a checkpoint that ships only its experts quantized
    (``ModelSpec.expert_weight_dtype``: GPT-OSS, "MoE weights quantized with mxfp4. All the
    other weights are in bf16", TensorRT-LLM examples/models/core/gpt_oss/README.md) runs them
    at the released ``weight_dtype``, unquantized; else the run's ``dtype``."""
    return deployment.attention_dtype or unstated_projection_dtype(model, deployment.dtype, phase)


def unstated_projection_dtype(model: ModelSpec, dtype: str, phase: str = "decode") -> str:
    """``projection_dtype`` when no ``attention_dtype`` is stated: the released ``weight_dtype``
    for a served checkpoint that ships only its experts quantized, else the run's ``dtype``."""
    if model.expert_weight_dtype and phase != "train":
        return model.weight_dtype
    return dtype


@dataclass(frozen=True)
class LayerSetup:
    """One deployment's layer computation in one phase: the ``Deployment`` itself, the phase, the
    routing skew, and the topologies of the EP group and of the TP x CP group (built once, reused
    for every layer; ``layer_ops`` memoizes its results here, per (layer kind, tokens, context)).

    ``tokens`` passed to the layer functions are the tokens one device owns when entering the
    MoE block; attention is shared by ``attention_tp`` = tp devices (1 under DP attention).
    Expert TP (``etp``): the ``etp`` ranks of an expert-TP group hold every expert slot of their
    EP rank at ``expert_ffn / etp`` width and all work on the tokens of the group (gathered before
    the experts, reduced after: the all-reduce of ``layer._routing_free_ops``), as vLLM and SGLang
    run MoE layers under TP without expert parallelism.
    """

    model: ModelSpec
    deployment: Deployment
    phase: str  # prefill | decode | train
    skew: str = "uniform"
    ep_topology: Topology | None = None
    tp_topology: Topology | None = None
    etp_topology: Topology | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    shared: dict = field(default_factory=dict, compare=False, repr=False)  # routing-free ops, see layer_ops

    @property
    def hw(self) -> HardwareProfile:
        return self.deployment.hardware

    @property
    def dtype(self) -> str:
        return self.deployment.dtype

    @property
    def kv_dtype(self) -> str:
        return self.deployment.kv_dtype

    @property
    def projection_dtype(self) -> str:
        """The attention projections' dtype (``projection_dtype``)."""
        return projection_dtype(self.model, self.deployment, self.phase)

    @property
    def expert_dtype(self) -> str:
        """The routed experts' GEMM math dtype (``expert_gemm_dtypes``); also the dispatch payload's."""
        return expert_gemm_dtypes(self.model, self.hw, self.dtype, self.phase)[0]

    @property
    def expert_weight_dtype(self) -> str | None:
        """The routed experts' stored weight format when it differs from the math (``expert_gemm_dtypes``)."""
        return expert_gemm_dtypes(self.model, self.hw, self.dtype, self.phase)[1]

    @property
    def attention_tp(self) -> int:
        return self.deployment.tp

    @property
    def cp(self) -> int:
        return self.deployment.cp

    @property
    def ep(self) -> int:
        return self.deployment.ep

    @property
    def etp(self) -> int:
        return self.deployment.etp

    @property
    def expert_ffn(self) -> int:
        """One rank's slice of a routed expert's intermediate width (``expert_ffn / etp``)."""
        return self.model.moe.expert_ffn // self.deployment.etp

    def moe_tokens(self, tokens: float) -> float:
        """Tokens one EP rank's experts see when each device owns ``tokens``: those of its expert-TP group."""
        return tokens * self.deployment.etp

    @property
    def redundant_experts(self) -> int:
        return self.deployment.redundant_experts

    @property
    def ranks_per_node(self) -> int:
        """EP ranks per scale-up domain."""
        return min(self.deployment.domain_size, max(self.deployment.ep, 1))

    @property
    def a2a_mode(self) -> str:
        return self.deployment.a2a_mode

    @property
    def comm_sms(self) -> int | None:
        return self.deployment.comm_sms

    @property
    def stack(self) -> str:
        return self.deployment.stack

    @property
    def device_fraction(self) -> float:
        """The stack's achievable device fraction in this phase (moesim/step/stacks.py)."""
        return device_fraction(self.deployment.stack, self.phase)

    @property
    def expert_fraction(self) -> float:
        """The further fraction of the grouped-GEMM kernel model that the stack's routed experts
        reach in this phase (moesim/step/stacks.py ``expert_fraction``)."""
        return expert_fraction(self.deployment.stack, self.phase)

    @property
    def core_dtype(self) -> str | None:
        """The precision of the core attention (scores and values; moesim/compute/attention.py
        ``core_s_per_token_key``): the deployment's ``attention_dtype`` when stated; FP8 where the
        stack's phase lists the model's attention kind in ``fp8_kv_core`` and the KV cache is FP8
        on hardware with native FP4 tensor cores (TensorRT-LLM's generation MLA kernels quantize
        the query to FP8 and run FP8 MQA: moesim/specs/software_stack.py); FP8 where the phase
        runs ``fp8_kv_context`` (TensorRT-LLM's FP8 context FMHA / MLA) under an FP8 KV cache on
        hardware with FP8 tensor cores, for MLA or quantized attention projections; else None
        (the projections' precision rule of ``_core_dtype``)."""
        dep = self.deployment
        if dep.attention_dtype:
            return dep.attention_dtype
        if canonical_dtype(dep.kv_dtype) != "fp8":
            return None
        host, kind = resolve(dep.stack, self.phase), self.model.attention.kind
        if host.fp8_kv_core == kind and native_fp4(dep.hardware):
            return "fp8"
        if host.fp8_kv_context and native_fp8(dep.hardware):  # MLA always, other kinds with quantized projections
            return "fp8" if kind == "mla" or is_low_precision(self.projection_dtype) else None
        return None


def make_setup(model: ModelSpec, deployment: Deployment, phase: str, skew: str = "uniform",
               shared: dict | None = None) -> LayerSetup:
    """A ``LayerSetup`` of ``deployment`` in ``phase`` under routing ``skew`` (SpecError naming
    the field when the deployment cannot run the model or ``comm_sms`` is out of range).
    ``shared``: the routing-free ops memo of setups that differ only in routing and capacity."""
    if phase not in PHASES:
        raise SpecError("phase", phase, f"one of {', '.join(PHASES)}")
    deployment.check(model)
    hw, domain = deployment.hardware, deployment.domain_size
    if deployment.comm_sms is not None:
        compute_share(hw, "normal", deployment.comm_sms)  # SpecError naming comm_sms when out of range
    ep = deployment.ep
    ep_topo = pricing.topology(hw, ep, domain) if ep > 1 else None
    group = deployment.tp * deployment.cp
    tp_topo = pricing.topology(hw, group, domain) if group > 1 else None
    etp = deployment.etp
    etp_topo = pricing.topology(hw, etp, domain) if etp > 1 else None
    return LayerSetup(model, deployment, phase, skew, ep_topo, tp_topo, etp_topo,
                      shared={} if shared is None else shared)


