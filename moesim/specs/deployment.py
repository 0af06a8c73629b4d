"""Deployment: how a model runs on hardware, in one frozen spec.

One ``Deployment`` says everything the step model, the DES, the serving model and the planner
need to know about *how* a model is run (the model itself and the workload are separate specs):

- hardware: the ``HardwareProfile`` itself (its content, not its name, decides every number, so
  a recalibrated profile is a different deployment), ``devices`` and ``devices_per_domain``;
- parallel sizes (Megatron-Core convention, moesim/specs/parallel.py): world = tp x cp x dp x pp,
  MoE layers re-fold the non-pipeline ranks into ep x etp x expert-dp; ``vpp`` virtual stages;
- ``attention_layout``: ``tp`` shards heads over tp devices, ``dp`` runs one attention per
  device on its own requests (SGLang/DeepSeek "DP attention", needs tp = 1);
- ``redundant_experts`` slots and their ``placement`` (EPLB-style load-aware replicas);
- ``overlap`` (decode and training) and ``prefill_overlap`` (None: the same), ``a2a_mode``
  (DeepEP normal / low-latency kernels, ``auto`` picks by phase and tokens) and ``comm_sms``
  (SMs the normal kernels hold; None: DeepEP's default);
- ``dtype`` of weights and GEMMs, ``kv_dtype`` of the KV cache;
- ``capacity_factor`` (None: dropless) and ``overflow`` (drop / reroute / shared: what happens to
  a token copy whose expert slot is full; moesim/routing);
- training: ``recompute``, ``dp_overlap``, ``distributed_optimizer``, ``mtp_layers`` (the
  multi-token-prediction modules trained after the last layer; None: the model's),
  ``pipeline_layout`` (Megatron's layout string placing layers on pipeline ranks; None: the
  ceil split; moesim/specs/pipeline_layout.py);
- ``stack``: the software stack that issues the operators, a property of the run (not of the
  GPU): a name of the table moesim/data/stacks.toml or an explicit ``SoftwareStack``
  (moesim/specs/software_stack.py; priced by moesim/step/host.py). ``megatron`` (eager
  PyTorch/TE training), ``megatron-cudagraph`` (attention and router in TE CUDA graphs, the
  experts eager: the GB200/GB300 recipes), ``sglang`` (eager prefill, CUDA-graph decode),
  ``vllm`` (piecewise-graph prefill, full-graph decode), ``trtllm`` (prefill without graphs,
  graph decode), ``maxtext`` (= ``xla``: a compiled step, no per-operator host), and
  ``eager`` (host issue in every phase), ``cuda_graphs`` (one graph per step in every phase).
  ``auto`` resolves per phase: train -> ``megatron``, prefill / decode -> ``sglang``
  (moesim/step/stacks.py ``AUTO``). The stack also carries each phase's ``device_fraction``:
  the achievable fraction of the kernel models' device throughput in its full step, by which
  every compute operation's time is divided (communication not; moesim/step/layer.py
  ``at_device_fraction``), fitted per stack with its host time (moesim/data/stacks.toml).
- ``sharding`` (training): ``ddp`` replicates everything, ``zero1`` shards the optimizer states
  (Megatron's distributed optimizer), ``fsdp`` also the weights and gradients (ZeRO-3, PyTorch
  FSDP, MaxText's fsdp axis) with per-layer all-gathers and reduce-scatters (moesim/step/
  train_comm.py); None: zero1 when ``distributed_optimizer`` else ddp (the behaviour before the
  field existed).
- ``attention_dtype``: the precision of the attention block (projections and core) when it
  differs from ``dtype`` (SGLang "BF16 attention + FP8 MoE"); None: the projections run at
  ``dtype`` (a served checkpoint that ships only its experts quantized, GPT-OSS, at its released
  ``weight_dtype``: moesim/step/setup.py ``projection_dtype``) and the core at bf16
  (moesim/compute/attention.py ``_core_dtype``).

Checks that need only the deployment run when it is built (``ValueError`` naming the field);
``check(model)`` adds the ones that need the model (heads, experts, layers dividing).
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from moesim.errors import SpecError
from moesim.specs.cluster import Cluster, partial_domain_note, rack_aligned_domain
from moesim.specs.common import canonical_dtype
from moesim.specs.hardware import HardwareProfile
from moesim.specs.model import ModelSpec
from moesim.specs.parallel import Parallelism, check_parallelism
from moesim.specs.pipeline_layout import pipeline_stages, virtual_stages
from moesim.specs.software_stack import SoftwareStack, StackName, check_stack_vendor

Overlap = Literal["none", "two_microbatch"]
A2AMode = Literal["auto", "normal", "low_latency"]
Overflow = Literal["drop", "reroute", "shared"]
Stack = StackName  # moesim/specs/software_stack.py STACK_NAMES
Sharding = Literal["ddp", "zero1", "fsdp"]
OVERFLOWS: tuple[str, ...] = ("drop", "reroute", "shared")
# fields that schedule stacks of layers (and training steps) but never enter one layer's operations
SCHEDULE_FIELDS: tuple[str, ...] = ("overlap", "prefill_overlap", "recompute", "recompute_modules", "dp_overlap",
                                    "distributed_optimizer", "mtp_layers", "pipeline_layout")
# Selective recompute modules (Megatron-Core transformer_config.py ``recompute_modules``; its
# default ["core_attn"]) and how sources write them (the Megatron-Core GB200 guide: "up_proj")
RECOMPUTE_MODULES: tuple[str, ...] = ("core_attn", "layernorm", "moe_act", "mla_up_proj", "mlp", "moe",
                                      "shared_experts")
DEFAULT_SELECTIVE: tuple[str, ...] = ("core_attn",)
MODULE_SPELLINGS: dict[str, str] = {"up_proj": "mla_up_proj", "mla-up-proj": "mla_up_proj",
                                    "core_attention": "core_attn", "norm": "layernorm", "rmsnorm": "layernorm"}


def canonical_recompute_modules(value) -> tuple[str, ...] | None:
    """``recompute_modules`` as Megatron names them, in ``RECOMPUTE_MODULES`` order, no repeats;
    a comma string or a list; None stays None; SpecError naming the field for an unknown one."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {MODULE_SPELLINGS.get(str(x).strip().lower(), str(x).strip().lower()) for x in items if str(x).strip()}
    bad = sorted(names - set(RECOMPUTE_MODULES))
    if bad or not names:
        raise SpecError("recompute_modules", value, f"allowed: one or more of {', '.join(RECOMPUTE_MODULES)}")
    return tuple(m for m in RECOMPUTE_MODULES if m in names)


def check_modules_need_selective(recompute: str, modules, field: str = "recompute_modules") -> None:
    """SpecError naming ``field`` when recompute modules are given with a recompute that is not
    selective (full re-runs the whole forward; none runs nothing again)."""
    if modules is not None and recompute != "selective":
        shown = list(modules) if isinstance(modules, tuple) else modules
        raise SpecError(field, shown, f"applies to recompute = selective only (recompute is {recompute!r})")


def recomputed_modules(recompute: str, modules) -> frozenset[str]:
    """The modules a training step recomputes: none for ``none`` and ``full`` (full re-runs the
    whole forward instead), the stated ``modules`` or Megatron's default for ``selective``."""
    if recompute != "selective":
        return frozenset()
    return frozenset(modules) if modules else frozenset(DEFAULT_SELECTIVE)


# fields that act only through the routing engine (expert loads, drops, traffic of the MoE block)
CAPACITY_FIELDS: tuple[str, ...] = ("capacity_factor", "overflow", "placement")


class Deployment(Parallelism):
    """How one model runs: hardware, layout (the ``Parallelism`` fields and checks), kernels,
    precision, capacity, software stack."""

    hardware: HardwareProfile
    devices: int = Field(gt=0, description="devices of the deployment (one replica when serving)")
    devices_per_domain: int | None = Field(None, gt=0, description="None: the profile's scale-up domain")
    placement: Literal["auto", "contiguous", "round_robin", "load_aware"] = Field(
        "auto", description="expert slots on EP ranks; auto: load_aware with redundant slots, else contiguous")
    overlap: Overlap = "none"
    prefill_overlap: Overlap | None = Field(None, description="prefill / mixed passes; None: overlap")
    a2a_mode: A2AMode = "auto"
    comm_sms: int | None = Field(None, ge=0, description="SMs of the normal all-to-all kernels; None: DeepEP default")
    dtype: str = Field("bf16", description="weights and GEMMs")
    kv_dtype: str = Field("bf16", description="KV cache")
    capacity_factor: float | None = Field(None, gt=0, description="expert capacity over the mean load; None: dropless")
    overflow: Overflow = "drop"
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_modules: tuple[str, ...] | None = Field(
        None, description="selective recompute: the Megatron-Core modules recomputed (core_attn, layernorm, "
                          "moe_act, mla_up_proj, mlp, moe, shared_experts); None: core_attn")
    dp_overlap: bool = True
    distributed_optimizer: bool = True
    mtp_layers: int | None = Field(
        None, ge=0, description="training: multi-token-prediction modules trained on the last pipeline stage "
                                "(one transformer layer, its eh_proj and one more LM head each); None: the model's "
                                "mtp_layers, 0: MTP off")
    pipeline_layout: str | None = Field(
        None, description="training: Megatron --pipeline-model-parallel-layout (E t m L, '|' between the pp x vpp "
                          "virtual stages, '*n' repeats), e.g. 'Et|(tt|)*30L'; None: layers split by ceiling")
    stack: Stack | SoftwareStack = Field("auto", description="software stack: a table name or explicit values")
    sharding: Sharding | None = Field(
        None, description="training: what the data-parallel group shards; None: zero1 with the distributed "
                          "optimizer, else ddp")
    attention_dtype: str | None = Field(None, description="attention projections and core; None: dtype")

    @field_validator("recompute_modules", mode="before")
    @classmethod
    def _recompute_modules(cls, value):
        return canonical_recompute_modules(value)

    @field_validator("pipeline_layout")
    @classmethod
    def _pipeline_layout(cls, value: str | None) -> str | None:
        if value is not None:
            virtual_stages(value)
        return value

    @field_validator("dtype", "kv_dtype")
    @classmethod
    def _dtype(cls, value: str, info) -> str:
        canonical_dtype(value, info.field_name)
        return value

    @field_validator("attention_dtype")
    @classmethod
    def _attention_dtype(cls, value: str | None, info) -> str | None:
        if value is not None:
            canonical_dtype(value, info.field_name)
        return value

    @property
    def data_sharding(self) -> str:
        """``sharding`` resolved: zero1 with the distributed optimizer, else ddp, unless stated."""
        if self.sharding is not None:
            return self.sharding
        return "zero1" if self.distributed_optimizer else "ddp"

    @model_validator(mode="after")
    def _deployable(self):
        hw = self.hardware
        dpd = self.devices_per_domain or hw.scale_up.domain_size
        if dpd > hw.scale_up.max_domain_size:
            raise SpecError("devices_per_domain", dpd, f"allowed: at most {hw.scale_up.max_domain_size} "
                            f"(the largest scale-up domain of {hw.name})")
        world = self.world
        if world != self.devices:
            raise SpecError("devices", self.devices, f"must equal tp x cp x dp x pp = {self.tp} x {self.cp} x "
                            f"{self.dp} x {self.pp} = {world}")
        check_modules_need_selective(self.recompute, self.recompute_modules)
        if self.attention_layout == "dp" and self.tp > 1:
            raise SpecError("tp", self.tp, "DP attention (attention_layout dp) needs tp = 1")
        if isinstance(self.stack, str):
            check_stack_vendor(self.stack, hw.vendor, hw.name)
        units = hw.compute.compute_units
        if self.comm_sms is not None and units is not None and self.comm_sms >= units:
            raise SpecError("comm_sms", self.comm_sms, f"allowed: below the {units} SMs of {hw.name}")
        return self

    # ---- derived ---------------------------------------------------------------------------
    @cached_property
    def parallelism(self) -> Parallelism:
        return Parallelism(tp=self.tp, pp=self.pp, dp=self.dp, cp=self.cp, ep=self.ep, etp=self.etp,
                           vpp=self.vpp, attention_layout=self.attention_layout,
                           redundant_experts=self.redundant_experts)

    @cached_property
    def cluster(self) -> Cluster:
        dpd = self.domain_size if self.partial_domain is not None else self.devices_per_domain
        return Cluster(hardware=self.hardware.name, devices=self.devices, devices_per_domain=dpd)

    @property
    def domain_size(self) -> int:
        """Devices per scale-up domain actually used (never more than ``devices``): the stated (or
        the profile's) domain, or for a job that leaves its last domain partial the equal domains
        of ``rack_aligned_domain`` (moesim/specs/cluster.py; ``partial_domain`` says so)."""
        dpd = self.devices_per_domain or self.hardware.scale_up.domain_size
        return min(rack_aligned_domain(self.devices, dpd, self.ep), self.devices)

    @property
    def partial_domain(self) -> str | None:
        """The partial-domain assumption in words (``partial_domain_note``), None for whole domains."""
        return partial_domain_note(self.devices, self.devices_per_domain or self.hardware.scale_up.domain_size,
                                   self.ep)

    @property
    def expert_placement(self) -> str:
        """The routing engine's placement name (``auto`` resolved)."""
        if self.placement != "auto":
            return self.placement
        return "load_aware" if self.redundant_experts else "contiguous"

    def overlap_of(self, phase: str) -> str:
        """The schedule of ``phase`` (prefill may differ from decode and training)."""
        if phase == "prefill" and self.prefill_overlap is not None:
            return self.prefill_overlap
        return self.overlap

    @cached_property
    def content_key(self) -> str:
        """SHA-256 of the whole spec (profile content included): the key of every cache."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @cached_property
    def layer_key(self) -> str:
        """SHA-256 of the fields one layer's operations depend on: the whole spec less the
        schedule and training settings (``SCHEDULE_FIELDS``), which act on stacks of layers
        (moesim/step/stack.py, training.py), never inside one. Key of the layer-model memo."""
        return hashlib.sha256(self.model_dump_json(exclude=set(SCHEDULE_FIELDS)).encode()).hexdigest()

    @cached_property
    def routing_free_key(self) -> str:
        """``layer_key`` less the capacity fields (``CAPACITY_FIELDS``): the key of the layer
        operations that routing never changes (attention, elementwise, host, dense FFN)."""
        fields = set(SCHEDULE_FIELDS) | set(CAPACITY_FIELDS)
        return hashlib.sha256(self.model_dump_json(exclude=fields).encode()).hexdigest()

    def check(self, model: ModelSpec) -> None:
        """SpecError naming the field when ``model`` cannot run on this deployment."""
        check_parallelism(model, self.parallelism, pipeline_layout=self.pipeline_layout)
        if model.moe is None and self.capacity_factor is not None:
            raise SpecError("capacity_factor", self.capacity_factor, f"{model.name} is dense: use None")

    def pipeline_ranks(self, model: ModelSpec):
        """What each pipeline rank holds in training (moesim/specs/pipeline_layout.py
        ``pipeline_stages``: ``pipeline_layout`` or the ceil split, the trained MTP modules);
        SpecError naming ``pipeline_layout`` when the layout does not fit the model or pp x vpp."""
        return pipeline_stages(model.num_layers, self.pp, self.vpp, self.trained_mtp(model), self.pipeline_layout)

    def trained_mtp(self, model: ModelSpec) -> int:
        """The MTP modules a training step of ``model`` runs: ``mtp_layers``, or the model's own
        (the DeepSeek-V3 report trains its one module, MTP depth 1: arXiv 2412.19437 s2.2, s4.2; the
        Megatron-Bridge DeepSeek-V3 recipes default mtp_num_layers = 1)."""
        return model.mtp_layers if self.mtp_layers is None else self.mtp_layers

    def with_(self, **changes) -> "Deployment":
        """A validated copy with ``changes`` (``model_copy`` does not re-validate)."""
        return type(self).model_validate({**self.model_dump(exclude={"hardware"}), "hardware": self.hardware,
                                          **changes})

