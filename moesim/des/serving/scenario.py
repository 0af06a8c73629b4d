"""Serving scenario files (TOML): the schema, and how a scenario becomes a simulation.

Schema (every table rejects unknown keys; units are in the key names)::

    model = "deepseek-v3"            # preset name or model TOML path
    hardware = "h100-sxm"            # profile name or profile TOML path
    mode = "disaggregated"           # colocated | disaggregated
    seed = 0                         # arrivals and lengths are drawn from this seed
    duration_s = 3600.0              # arrivals in [0, duration_s]
    warmup_s = 0.0                   # metrics over [warmup_s, duration_s]
    balancer = "least_loaded"        # round_robin | least_loaded
    dtype = "fp8"                    # GEMM dtype; kv_dtype = "bf16"; overlap = "none" | "two_microbatch"
    memory_fraction = 0.9            # share of HBM for weights + KV (vLLM gpu_memory_utilization); unset: the stack's

    [arrivals]                       # kind = poisson | gamma (cv = inter-arrival CV) | trace
    kind = "poisson"
    rate_per_s = 20.0                # trace: trace_path = "file.csv" (arrival_time_s, prompt_len, output_len)

    [prompt]                         # kind = fixed | lognormal (mean_tokens, sigma) | empirical
    kind = "lognormal"               #   empirical: values_tokens = [...], weights = [...]
    mean_tokens = 2048
    sigma = 0.8
    max_tokens = 16384               # optional; values above are redrawn, never clipped
    [output]
    kind = "fixed"
    mean_tokens = 512

    [replica]                        # colocated mode: the pool ([prefill] and [decode] when disaggregated)
    replicas = 1                     # identical replicas behind the balancer
    devices_per_replica = 16         # one TP/EP group; devices_per_node = profile's domain by default
    attention = "dp"                 # dp (DP attention, tp = 1) | tp (heads over tp devices)
    tp = 1
    ep = 16                          # default: devices_per_replica / etp
    etp = 1                          # expert TP: each expert over etp ranks (etp = 16, ep = 1: no EP)
    redundant_experts = 0
    token_budget_tokens = 8192       # tokens per iteration (prefill chunks + decoding sequences)
    max_seqs = 256                   # sequences in flight per replica
    chunked_prefill = true

    [slo]                            # moesim.specs.SLO: percentile, ttft_s, tpot_s, e2e_s
    percentile = 99.0
    ttft_s = 2.0
    tpot_s = 0.05
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from moesim.catalog import build, load_model, load_profile
from moesim.des.serving.arrivals import LengthDist, Requests, read_trace, synthetic
from moesim.des.serving.deployment import from_deployment, kv_transfer
from moesim.des.serving.metrics import ServingResult
from moesim.des.serving.replica import SchedulerConfig
from moesim.des.serving.system import Pool, ServingSystem, simulate
from moesim.errors import MoesimError, SpecError
from moesim.specs import SLO, Deployment, Spec, canonical_dtype


class LengthSpec(Spec):
    """Token lengths of prompts or outputs."""

    kind: Literal["fixed", "lognormal", "empirical"] = "fixed"
    mean_tokens: float | None = Field(None, ge=1, description="fixed: the length; lognormal: the mean")
    sigma: float = Field(0.5, ge=0, description="lognormal sigma of ln(length)")
    values_tokens: list[int] = Field(default_factory=list, description="empirical: the lengths")
    weights: list[float] | None = Field(None, description="empirical: relative frequencies")
    max_tokens: int | None = Field(None, ge=1, description="lognormal: redraw values above this")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind in ("fixed", "lognormal") and self.mean_tokens is None:
            raise SpecError("mean_tokens", None, f"kind {self.kind} needs mean_tokens")
        if self.kind == "empirical":
            if not self.values_tokens or min(self.values_tokens) < 1:
                raise SpecError("values_tokens", self.values_tokens, "kind 'empirical' needs values_tokens, all >= 1")
            if self.weights is not None and (len(self.weights) != len(self.values_tokens)
                                             or min(self.weights) < 0 or sum(self.weights) <= 0):
                raise SpecError("weights", self.weights, "allowed: one value >= 0 per entry of values_tokens, positive sum")
        return self

    def dist(self) -> LengthDist:
        return LengthDist(self.kind, mean=float(self.mean_tokens or 0), sigma=self.sigma,
                          values=tuple(self.values_tokens),
                          weights=tuple(self.weights) if self.weights is not None else None,
                          max_tokens=self.max_tokens)

    @property
    def mean(self) -> float:
        if self.kind == "empirical":
            w = self.weights or [1.0] * len(self.values_tokens)
            return sum(v * x for v, x in zip(self.values_tokens, w)) / sum(w)
        return float(self.mean_tokens)


class ArrivalSpec(Spec):
    kind: Literal["poisson", "gamma", "trace"] = "poisson"
    rate_per_s: float | None = Field(None, gt=0, description="mean requests per second")
    cv: float = Field(1.0, gt=0, description="gamma: coefficient of variation of inter-arrival times")
    trace_path: str | None = Field(None, description="trace: CSV or JSONL (relative to the scenario file)")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "trace" and not self.trace_path:
            raise SpecError("trace_path", None, "kind 'trace' needs trace_path")
        if self.kind != "trace" and self.rate_per_s is None:
            raise SpecError("rate_per_s", None, f"kind {self.kind} needs rate_per_s")
        return self


class PoolSpec(Spec):
    """A pool of identical replicas; each replica one TP/EP group."""

    replicas: int = Field(1, ge=1)
    devices_per_replica: int = Field(ge=1)
    devices_per_node: int | None = Field(None, ge=1)
    attention: Literal["dp", "tp"] = "dp"
    tp: int = Field(1, ge=1)
    ep: int | None = Field(None, ge=1, description="default: devices_per_replica / etp")
    etp: int = Field(1, ge=1, description="expert TP: each expert sharded over etp ranks (devices_per_replica "
                                          "with ep = 1: MoE layers without expert parallelism)")
    redundant_experts: int = Field(0, ge=0)
    token_budget_tokens: int = Field(8192, ge=1)
    max_seqs: int = Field(256, ge=1)
    chunked_prefill: bool = True

    @model_validator(mode="after")
    def _consistent(self):
        if self.attention == "dp" and self.tp != 1:
            raise SpecError("tp", self.tp, "attention 'dp' needs tp = 1")
        if self.devices_per_replica % self.tp:
            raise SpecError("tp", self.tp, "allowed: a divisor of devices_per_replica")
        if self.token_budget_tokens < self.max_seqs:
            raise SpecError("token_budget_tokens", self.token_budget_tokens, "allowed: at least max_seqs")
        return self

    def deployment(self, hw, scn: "ServeScenario", source: str = "deployment") -> Deployment:
        """The replica's ``Deployment`` on profile ``hw`` with the scenario's dtypes and overlap;
        an error names ``source`` (the pool's table) and the field."""
        return build(Deployment, dict(
            hardware=hw, devices=self.devices_per_replica, devices_per_domain=self.devices_per_node, tp=self.tp,
            dp=self.devices_per_replica // self.tp, ep=self.ep or max(1, self.devices_per_replica // self.etp), etp=self.etp,
            attention_layout=self.attention, redundant_experts=self.redundant_experts, dtype=scn.dtype,
            kv_dtype=scn.kv_dtype, overlap=scn.overlap), source)

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(self.token_budget_tokens, self.max_seqs, self.chunked_prefill)


class ServeScenario(Spec):
    """A serving scenario (module docstring: the TOML schema)."""

    model: str
    hardware: str
    mode: Literal["colocated", "disaggregated"] = "colocated"
    seed: int = Field(0, ge=0)
    duration_s: float = Field(600.0, gt=0)
    warmup_s: float = Field(0.0, ge=0)
    balancer: Literal["round_robin", "least_loaded"] = "least_loaded"
    dtype: str = "fp8"
    kv_dtype: str = "bf16"
    overlap: Literal["none", "two_microbatch"] = "none"
    memory_fraction: float | None = Field(
        None, gt=0, le=1, description="share of each device's memory for weights + KV cache; None: the replica stack's own (vLLM 0.9, SGLang by engine size, TensorRT-LLM 0.95 of what the weights leave; moesim/data/stacks.toml)")
    arrivals: ArrivalSpec
    prompt: LengthSpec
    output: LengthSpec
    replica: PoolSpec | None = None
    prefill: PoolSpec | None = None
    decode: PoolSpec | None = None
    slo: SLO | None = None

    @model_validator(mode="after")
    def _pools(self):
        canonical_dtype(self.dtype, "dtype")
        canonical_dtype(self.kv_dtype, "kv_dtype")
        if self.warmup_s >= self.duration_s:
            raise SpecError("warmup_s", self.warmup_s, "allowed: below duration_s")
        if self.mode == "colocated" and (self.replica is None or self.prefill or self.decode):
            raise SpecError("mode", self.mode, "mode 'colocated' needs a [replica] table (and no [prefill]/[decode])")
        if self.mode == "disaggregated" and (self.prefill is None or self.decode is None or self.replica):
            raise SpecError("mode", self.mode, "mode 'disaggregated' needs [prefill] and [decode] tables (and no [replica])")
        return self


def _pool(scn: ServeScenario, spec: PoolSpec, name: str, model, hw) -> Pool:
    dep = spec.deployment(hw, scn, source=name)  # an error reads "<table>: <field> = ...: allowed ..."
    try:
        cost = from_deployment(model, dep, prompt_len_hint=max(1, int(scn.prompt.mean)),
                               memory_fraction=scn.memory_fraction)
    except MoesimError as err:
        raise MoesimError(f"{name}: {err}") from None
    return Pool(cost, spec.replicas, spec.scheduler())


def build_system(scn: ServeScenario) -> ServingSystem:
    """Pools with step-model costs and, when disaggregated, the KV transfer of the prefill pool."""
    model, hw = load_model(scn.model), load_profile(scn.hardware)
    if scn.mode == "colocated":
        return ServingSystem(colocated=_pool(scn, scn.replica, "replica", model, hw), balancer=scn.balancer)
    p = scn.prefill
    return ServingSystem(prefill=_pool(scn, p, "prefill", model, hw), decode=_pool(scn, scn.decode, "decode", model, hw),
                         transfer=kv_transfer(p.deployment(hw, scn)), balancer=scn.balancer)


def build_requests(scn: ServeScenario, base_dir: str | Path = ".") -> Requests:
    a = scn.arrivals
    if a.kind == "trace":
        path = Path(a.trace_path)
        return read_trace(path if path.is_absolute() else Path(base_dir) / path)
    return synthetic(a.kind, a.rate_per_s, scn.duration_s, scn.prompt.dist(), scn.output.dist(), scn.seed, cv=a.cv)


def run_scenario(scn: ServeScenario, base_dir: str | Path = ".", keep_spans: bool = False,
                 system: ServingSystem | None = None, progress: bool = False) -> ServingResult:
    """Simulate a scenario; metrics over [warmup_s, duration_s] (``progress``: a bar on stderr)."""
    reqs = build_requests(scn, base_dir)
    end = scn.duration_s if scn.arrivals.kind != "trace" else max(reqs.span_s, scn.warmup_s + 1e-9)
    return simulate(system or build_system(scn), reqs, slo=scn.slo, warmup_s=scn.warmup_s,
                    window_end_s=end, keep_spans=keep_spans, progress=progress)
