"""Planner scenarios: what the user wants served or trained, on which hardware, within what limits.

A scenario is data (a TOML file, ``kind = "serving"`` or ``kind = "training"``), validated at the
boundary with pydantic (``extra="forbid"``, units in key names). The workload, SLO and routing
sections reuse the library's specs (:class:`~moesim.specs.ServingWorkload`,
:class:`~moesim.specs.SLO`, :class:`~moesim.specs.RoutingSpec`,
:class:`~moesim.specs.TrainingWorkload`), so the planner and the serving simulator read the same
fields. ``[search]`` bounds the search space; ``[prices]`` names the one price basis costs are
compared on and the user's own prices (:mod:`moesim.prices`); ``[verify]`` sets the serving-DES check of the top candidates.
``stack`` names the software stack every candidate runs under (``Deployment.stack``: which
phases pay per-operator host issue time, moesim/step/host.py); ``auto`` is each phase's
production default. The allowed names are ``Deployment``'s own (``deployment_stacks``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from moesim.catalog import build, load_profile, read_toml, resolve_file_names
from moesim.errors import MoesimError, SpecError
from moesim.prices import PricesSpec
from moesim.planner.disagg_search import DisaggSearch
from moesim.specs import SLO, Deployment, RoutingSpec, ServingWorkload, TrainingWorkload
from moesim.specs.common import Spec
from moesim.specs.software_stack import check_stack_vendor
from moesim.specs.serving_features import ServingFeatures

DEFAULT_SCENARIO_PATH = Path(__file__).with_name("default_scenario.toml")

_POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# The software stacks ``Deployment.stack`` accepts: its own annotation (read, not copied, so the
# scenario follows when the stacks table gains a stack): a name of the table, or explicit values
# (``SoftwareStack``, e.g. a trial table's numbers inlined while fitting).
from moesim.specs.deployment import Stack as _StackNames  # noqa: E402

DeploymentStack = Deployment.model_fields["stack"].annotation


def deployment_stacks() -> tuple[str, ...]:
    """The stack names ``DeploymentStack`` allows."""
    return tuple(get_args(_StackNames))


class ServingSearch(Spec):
    """Bounds of the serving search space (every list is searched as a grid)."""

    devices_per_replica: tuple[int, ...] = Field(
        (8, 16, 32, 64), description="devices one model replica spans (replicas are added to meet the rate)"
    )
    batch_per_device: tuple[int, ...] = Field(
        (1, 2, 4, 8, 16, 32, 64, 128, 256), description="decode sequences in flight per device"
    )
    tp: tuple[int, ...] = Field((1, 2, 4, 8), description="tensor-parallel sizes tried (attention)")
    pp: tuple[int, ...] = Field((1,), description="pipeline sizes tried")
    attention_layouts: tuple[Literal["tp", "dp"], ...] = ("tp", "dp")
    moe_layouts: tuple[Literal["ep", "tp"], ...] = Field(
        ("ep",), description="how MoE layers use the non-pipeline ranks: ep = experts spread over "
        "them (ep = tp x dp); tp = every expert sharded over them (etp = tp x dp, ep = 1), vLLM's and SGLang's "
        "layout without expert parallelism enabled")
    capacity_factors: tuple[float, ...] | None = Field(
        None, description="capacity factors tried; None = only routing.capacity_factor"
    )
    overlap: Literal["auto", "none", "two_microbatch"] = Field(
        "auto", description="step overlap mode; auto (serving, MoE) = per candidate the faster of none / "
        "two_microbatch for the decode step (at its batch) and for prefill (at one prompt per device); auto "
        "(training, MoE) = two_microbatch; none for dense"
    )
    attention_dtype: str | None = Field(
        None, description="precision of the attention projections and core when it differs from workload.dtype "
        "(Deployment.attention_dtype, e.g. bf16 attention with fp8 MoE); None: workload.dtype for the projections, "
        "bf16 for the core")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict) and "max_drop_fraction" in data:
            raise SpecError("max_drop_fraction", None, "moved to the [limits] table: limits.max_drop_fraction")
        return data

    @field_validator("devices_per_replica", "batch_per_device", "tp", "pp")
    @classmethod
    def _positive(cls, value, info):
        return _positive_ints(value, info.field_name)

    @field_validator("moe_layouts")
    @classmethod
    def _moe_layouts(cls, value):
        # here rather than min_length: pydantic adds a length error to every bad entry's error
        if not value:
            raise SpecError("moe_layouts", value, "allowed: one or more of ep, tp")
        return value

    @field_validator("attention_dtype")
    @classmethod
    def _attention_dtype(cls, value):
        from moesim.specs.common import canonical_dtype

        if value is not None:
            canonical_dtype(value, "attention_dtype")
        return value

    @field_validator("capacity_factors")
    @classmethod
    def _cf(cls, value):
        if value is not None and (not value or any(v <= 0 for v in value)):
            raise SpecError("capacity_factors", value, "allowed: one or more positive numbers")
        return value


def _positive_ints(value, field: str) -> tuple[int, ...]:
    """A search axis: at least one value, all positive; sorted without repeats."""
    if not value or any(v <= 0 for v in value):
        raise SpecError(field, value, "allowed: one or more positive integers")
    return tuple(sorted(set(value)))


class TrainingSearch(Spec):
    """Bounds of the training search space."""

    devices: tuple[int, ...] = Field(
        (64, 128, 256, 512, 1024, 2048, 4096), description="cluster sizes tried"
    )
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1, 2, 4, 8, 16)
    ep: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    micro_batch: tuple[int, ...] = (1, 2)
    capacity_factors: tuple[float, ...] | None = None

    @field_validator("devices", "tp", "pp", "ep", "micro_batch")
    @classmethod
    def _positive(cls, value, info):
        return _positive_ints(value, info.field_name)


class QualityLimits(Spec):
    """What a deployment may cost in quality: drops are never free.

    ``max_drop_fraction``: the largest expected share of routed token copies no expert processes
    (default 0: no dropped tokens). ``max_loss_increase``: the largest predicted loss increase
    (nats; moesim/planner/quality_cost.py) a candidate may have (None: no limit); a candidate the
    quality model cannot price (a training capacity limit that overflows, top-k above the trained)
    is rejected when it is set (``loses_too_much_quality``, moesim/planner/rank.py), and the
    scenario's ``routing.overflow`` must be a policy the quality model was measured for.
    """

    max_drop_fraction: float = Field(0.0, ge=0, le=1, description="expected dropped token copies (0 = none)")
    max_loss_increase: float | None = Field(None, ge=0, description="predicted loss increase (nats/token)")


class VerifySpec(Spec):
    """Serving-DES verification of the best analytic candidates."""

    top_n: int = Field(2, ge=0, description="hardware types verified by the serving DES: the cheapest "
                       "candidate of each of the top_n cheapest hardware types (0 = none)")
    duration_s: float = Field(60.0, gt=0, description="simulated seconds of arrivals per load probe; longer "
                              "where the SLO needs it: at least 10 TTFT limits and 2,000 arrivals (at most 10 x "
                              "this); a probe whose backlog grows is missed (moesim/planner/verify.py)")
    seeds: int = Field(2, gt=0, description="most seeds per load probe (more are run only while the "
                       "95% interval of the SLO percentile straddles the limit)")
    seed: int = Field(0, ge=0)


class _ScenarioBase(Spec):
    name: str = Field("scenario", min_length=1)
    description: str = ""
    model: str = Field(description="model preset name or a model TOML path")
    model_overrides: dict = Field(
        default_factory=dict, description="fields changed in the model (what-if), e.g. {moe={top_k=4}}"
    )
    hardware: tuple[str, ...] = Field(min_length=1, description="candidate hardware profiles")
    max_devices: int = Field(4096, gt=0, description="largest total device count allowed")
    prices_usd_per_device_hour: dict[str, float] = Field(
        default_factory=dict, description="price overrides per hardware profile (same as prices.usd_per_device_hour)"
    )
    prices: PricesSpec = Field(default_factory=PricesSpec,
                               description="the one price basis costs are compared on (moesim/prices.py)")
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    limits: QualityLimits = Field(default_factory=QualityLimits)
    stack: DeploymentStack = Field("auto", description="software stack of every candidate (Deployment.stack: "
                                   "which phases pay per-operator host time; auto: each phase's production default)")

    @model_validator(mode="after")
    def _stack_runs_on_hardware(self):
        """A named stack must run on every candidate hardware (its vendor: software_stack.STACK_VENDORS);
        an unknown hardware name is left to the planner's own report."""
        if isinstance(self.stack, str):
            for name in self.hardware:
                try:
                    hw = load_profile(name)
                except MoesimError:
                    continue
                check_stack_vendor(self.stack, hw.vendor, hw.name)
        return self

    @model_validator(mode="after")
    def _static_routing(self):
        """The planner's step model routes one static popularity per step (moesim/step/pricing.py
        ``rank_load``): a drifting popularity is priced by ``moesim route --drift``, not here, so a
        plan scenario that states one is refused rather than silently priced static."""
        if self.routing.drift != 0:
            raise SpecError("routing.drift", self.routing.drift, "0 in a plan scenario (the planner prices a static "
                                                                 "popularity; moesim route --drift prices drift)")
        return self

    @model_validator(mode="after")
    def _quality_policy(self):
        """A loss limit needs a quality model measured for the overflow policy (moesim/quality)."""
        if self.limits.max_loss_increase is not None:
            from moesim.planner.quality_cost import measured_policies

            policies = measured_policies()
            if self.routing.overflow not in policies:
                raise SpecError("routing.overflow", self.routing.overflow, "limits.max_loss_increase needs a policy "
                                f"the quality model was measured for: {', '.join(policies)}")
        return self

    @field_validator("stack", mode="before")
    @classmethod
    def _stack_name(cls, value):
        """A stack name must be one of the table's (one readable line, not the union's two errors)."""
        if isinstance(value, str) and value not in deployment_stacks():
            raise SpecError("stack", value, f"allowed: {', '.join(deployment_stacks())}")
        return value

    @field_validator("hardware", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return (value,) if isinstance(value, str) else value

    @field_validator("prices_usd_per_device_hour")
    @classmethod
    def _prices(cls, value):
        from moesim.prices import positive_prices

        return positive_prices(value)


class EngineSettings(Spec):
    """The serving engine's own limits as the run sets them; None keeps what the engine chooses
    itself. Under the ``trtllm`` scheduler: trtllm-bench's options of the same names
    (moesim/planner/trtllm_engine.py; its heuristic, its 0.95 KV fraction, no concurrency cap
    otherwise), per attention-DP rank as TensorRT-LLM reads them ("--max_batch_size: Max batch
    size in each rank"), except ``concurrency``, the requests the benchmark client keeps in flight
    over the whole replica. Under ``batched_prefill`` (vLLM, SGLang): ``max_num_seqs``, the
    sequences one rank's scheduler runs (the stack's default for the GPU, ``SoftwareStack.running_seqs_default``,
    when not stated), and ``max_num_batched_tokens``, the tokens one rank's iteration carries (the
    stack's default for the GPU, ``SoftwareStack.batched_tokens_default``, else 8192)."""

    max_batch_size: int | None = Field(None, ge=1, description="sequences one rank's scheduler holds")
    max_num_tokens: int | None = Field(None, ge=1, description="tokens one rank's iteration carries (a whole "
                                                                "prompt plus one per generating sequence)")
    kv_cache_free_gpu_mem_fraction: float | None = Field(
        None, gt=0, le=1, description="share of the memory the weights leave that becomes KV cache")
    concurrency: int | None = Field(None, ge=1, description="requests in flight over the replica (client cap)")
    cuda_graph_batch_sizes: tuple[int, ...] | None = Field(
        None, min_length=1, description="per-rank batches captured in CUDA graphs, generation iterations padded to "
                                        "the next one (cuda_graph_config batch_sizes); None: the perf-overview's list")
    max_num_seqs: int | None = Field(
        None, ge=1, description="vLLM --max-num-seqs / SGLang --max-running-requests: sequences one rank's scheduler "
                                "runs (honoured under the batched_prefill scheduler); None: the stack's default")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="vLLM --max-num-batched-tokens / SGLang --chunked-prefill-size per rank: tokens one "
                                "rank's iteration carries, prompt chunks plus one per decoding sequence (honoured "
                                "under the batched_prefill scheduler); None: the stack's default for the GPU")

    @field_validator("cuda_graph_batch_sizes")
    @classmethod
    def _graph_batches(cls, value):
        if value is not None and min(value) < 1:
            raise SpecError("engine.cuda_graph_batch_sizes", list(value), "allowed: batch sizes >= 1")
        return None if value is None else tuple(sorted(set(value)))


class ServingScenario(_ScenarioBase):
    """Serve ``model`` at ``workload``'s rate within ``slo``: which hardware, layout, how many."""

    kind: Literal["serving"] = "serving"
    workload: ServingWorkload
    slo: SLO = Field(default_factory=SLO)
    search: ServingSearch = Field(default_factory=ServingSearch)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    # serving modes and workload features (moesim/planner/disagg.py, moesim/specs/serving_features.py)
    modes: tuple[Literal["colocated", "disaggregated"], ...] = Field(
        ("colocated",), min_length=1, description="serving modes searched side by side")
    features: ServingFeatures = Field(default_factory=ServingFeatures)
    disaggregated: DisaggSearch = Field(default_factory=DisaggSearch)
    engine: EngineSettings = Field(default_factory=EngineSettings,
                                   description="the engine's stated limits (honoured under the trtllm scheduler)")
    scheduler: Literal["auto", "batched_prefill", "trtllm"] = Field(
        "auto", description="the co-located replica's scheduler (moesim/planner/serving_policy.py): batched_prefill "
        "(per-rank token budget, prompts batched every K iterations), trtllm (TensorRT-LLM's trtllm-bench limits); "
        "auto: trtllm when stack is a TensorRT-LLM stack (trtllm: PyTorch backend, trtllm-engine: TensorRT "
        "engines), else batched_prefill")

    @model_validator(mode="after")
    def _targets(self):
        if self.slo.ttft_s is None and self.slo.tpot_s is None:
            raise SpecError("slo", None, "needs ttft_s or tpot_s (a serving plan without a latency limit is unbounded)")
        if self.slo.e2e_s is not None and "disaggregated" in self.modes:
            raise SpecError("slo.e2e_s", self.slo.e2e_s, "co-located plans only (modes = [\"colocated\"]): the "
                                                         "disaggregated search sizes the prefill pool to ttft_s and "
                                                         "the decode pools to tpot_s apart")
        return self

    @property
    def target_output_tokens_per_s(self) -> float:
        """Output tokens/s to sustain (from the request rate when no token target is given)."""
        w = self.workload
        if w.target_output_tokens_per_s is not None:
            return w.target_output_tokens_per_s
        return w.request_rate * w.output_len

    @property
    def capacity_factors(self) -> tuple[float | None, ...]:
        if self.search.capacity_factors is not None:
            return self.search.capacity_factors
        return (self.routing.capacity_factor,)


class TrainingScenario(_ScenarioBase):
    """Train ``model`` on ``workload.tokens_to_train`` tokens by ``workload.deadline_days``."""

    kind: Literal["training"] = "training"
    workload: TrainingWorkload
    search: TrainingSearch = Field(default_factory=TrainingSearch)

    @model_validator(mode="after")
    def _targets(self):
        if self.workload.tokens_to_train is None or self.workload.deadline_days is None:
            raise SpecError("workload", None, "a training scenario needs workload.tokens_to_train and workload.deadline_days")
        return self

    @property
    def capacity_factors(self) -> tuple[float | None, ...]:
        if self.search.capacity_factors is not None:
            return self.search.capacity_factors
        return (self.routing.capacity_factor,)


Scenario = Union[ServingScenario, TrainingScenario]
_KINDS: dict[str, type] = {"serving": ServingScenario, "training": TrainingScenario}


def scenario_from_dict(data: dict, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping (``kind`` picks serving or training); errors name the field."""
    if not isinstance(data, dict):
        raise MoesimError(f"{source}: a scenario is a table of fields")
    kind = data.get("kind", "serving")
    if kind not in _KINDS:
        raise MoesimError(f"{source}: kind = {kind!r}: allowed kinds are serving, training")
    return build(_KINDS[kind], data, source=source)


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Read a scenario TOML; ``None`` gives the built-in default scenario."""
    p = DEFAULT_SCENARIO_PATH if path is None else Path(path)
    return scenario_from_dict(resolve_file_names(read_toml(p), p), source=str(p))


def default_scenario() -> ServingScenario:
    """The built-in default: serve DeepSeek-V3 across GPU and TPU candidates (default_scenario.toml)."""
    return load_scenario(None)


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def overlap_mode(scenario: Scenario, model) -> str:
    """The step model's overlap mode for this scenario's model (``auto`` resolved)."""
    mode = getattr(scenario.search, "overlap", "none")
    if mode == "auto":
        return "two_microbatch" if model.is_moe else "none"
    return mode


def scenario_model(scenario: Scenario):
    """The scenario's ModelSpec: the preset (or file) with ``model_overrides`` applied and revalidated."""
    from moesim.catalog import load_model
    from moesim.specs import ModelSpec

    model = load_model(scenario.model)
    if not scenario.model_overrides:
        return model
    data = _merge(model.to_dict(), scenario.model_overrides)
    return build(ModelSpec, data, source=f"{scenario.name}: model {scenario.model} with overrides")
