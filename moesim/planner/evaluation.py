"""What the planner asks of the models: the ``Evaluator`` protocol and its frozen results.

The search, ranking, frontier, executors and resume logic only see this interface, so they are
tested with a closed-form evaluator (:mod:`moesim.planner.testing`) and run with the real one
(:mod:`moesim.planner.analytic`: step model + memory model + serving DES).

A :class:`Candidate` is one deployment: hardware, devices, parallel layout, batch and capacity
factor. Serving candidates are *one replica*; the planner adds replicas to meet the rate.
``batch`` is decode sequences in flight per device (serving) or the micro-batch (training).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Protocol, Sequence, runtime_checkable

from moesim.prices import PriceEntry
from moesim.specs import Parallelism

# Why a configuration was set aside (the rejection summary groups by these).
REASONS: dict[str, str] = {
    "invalid_layout": "parallel sizes do not fit the model (heads, experts or layers do not divide)",
    "does_not_fit": "does not fit in device memory",
    "exceeds_engine_limits": "more sequences per rank than the serving engine's scheduler sustains (its batch, "
                             "token and whole-request KV limits: moesim/planner/serving_policy.py)",
    "misses_slo_tpot": "misses the TPOT SLO",
    "misses_slo_ttft": "misses the TTFT SLO",
    "misses_slo_e2e": "misses the end-to-end latency SLO (TTFT plus output_len - 1 TPOTs)",
    "drops_too_many": "drops more tokens than limits.max_drop_fraction",
    "loses_too_much_quality": "predicted loss increase above limits.max_loss_increase (or not predicted)",
    "over_max_devices": "needs more devices than max_devices to meet the target",
    "misses_deadline": "cannot finish the tokens by the deadline",
    "error": "the evaluation failed (reported, not fatal)",
    "screened_out": "set aside by the screening stage (plan(screen=True): clearly misses the SLO or costs more "
                    "than the ranked ones by its lower bound; not evaluated exactly)",
}
BOTTLENECKS = ("compute", "HBM", "scale-up", "scale-out", "memory capacity", "imbalance", "latency", "token budget")


def etp_suffix(etp: int, key: bool = False) -> str:
    """What expert TP adds to a layout's label (`` ETP8``) or key (``|etp8``): nothing at etp 1,
    so layouts without expert TP keep the labels and keys they had before it existed."""
    if etp <= 1:
        return ""
    return f"|etp{etp}" if key else f" ETP{etp}"


@dataclass(frozen=True)
class Candidate:
    """One deployment to evaluate (one replica when serving, the whole cluster when training)."""

    hardware: str
    devices: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    attention_layout: Literal["tp", "dp"] = "tp"
    batch: int = 1
    capacity_factor: float | None = None
    redundant_experts: int = 0
    etp: int = 1  # expert TP: experts sharded over the attention TP group (moesim/planner/space.py)

    def key(self) -> str:
        """A stable identity (used to resume sweeps and to join results; etp only when > 1)."""
        cf = "none" if self.capacity_factor is None else f"{self.capacity_factor:g}"
        return (
            f"{self.hardware}|n{self.devices}|tp{self.tp}|pp{self.pp}|dp{self.dp}|ep{self.ep}"
            f"|{self.attention_layout}|b{self.batch}|cf{cf}|r{self.redundant_experts}{etp_suffix(self.etp, True)}"
        )

    def parallelism(self) -> Parallelism:
        return Parallelism(
            tp=self.tp, pp=self.pp, dp=self.dp, ep=self.ep, etp=self.etp,
            attention_layout=self.attention_layout, redundant_experts=self.redundant_experts,
        )

    def layout(self) -> str:
        """Short human form, e.g. ``TP4 EP32 PP1 DP8 attn=tp``."""
        return f"TP{self.tp} EP{self.ep}{etp_suffix(self.etp)} PP{self.pp} DP{self.dp} attn={self.attention_layout}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(**d)


@dataclass(frozen=True)
class Evaluation:
    """The model's verdict on one candidate. Times in seconds, memory in GiB.

    Serving: ``tokens_per_s`` is output tokens/s one replica sustains at ``batch``;
    ``tpot_s`` / ``ttft_s`` are the analytic latency estimates (the DES gives tails).
    Training: ``tokens_per_s`` is training tokens/s of the whole cluster, ``step_time_s`` one
    optimizer step, ``mfu`` model FLOPs utilisation.
    ``memory_headroom_GiB`` < 0 is the shortfall of a deployment that does not fit.
    ``decode_steps_per_prefill``: the prefill-batching K the serving estimate assumes (the DES
    check runs the same; :mod:`moesim.planner.serving_policy`).
    Quality: ``drop_fraction``, ``reroute_fraction``, ``backup_fraction`` are the step model's
    shares of routed token copies under the candidate's capacity factor; ``loss_increase`` is the
    quality model's predicted loss increase in nats (moesim/planner/quality_cost.py), within
    ``loss_increase_low`` - ``loss_increase_high`` (None: not predicted).
    """

    candidate: Candidate
    status: Literal["ok", "rejected", "error"] = "ok"
    reason: str | None = None
    detail: str = ""
    tokens_per_s: float = 0.0
    step_time_s: float | None = None
    tpot_s: float | None = None
    ttft_s: float | None = None
    memory_headroom_GiB: float | None = None
    bottleneck: str = ""
    drop_fraction: float = 0.0
    reroute_fraction: float = 0.0
    backup_fraction: float = 0.0
    loss_increase: float | None = None
    loss_increase_low: float | None = None
    loss_increase_high: float | None = None
    imbalance: float = 1.0
    mfu: float | None = None
    decode_steps_per_prefill: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def rejected(self, reason: str, detail: str) -> "Evaluation":
        """A copy set aside for ``reason`` (a key of REASONS)."""
        from dataclasses import replace

        return replace(self, status="rejected", reason=reason, detail=detail)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["key"] = self.candidate.key()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["candidate"] = Candidate.from_dict(d["candidate"])
        return cls(**kw)

    @classmethod
    def failed(cls, candidate: Candidate, message: str) -> "Evaluation":
        return cls(candidate=candidate, status="error", reason="error", detail=message[:300])


@dataclass(frozen=True)
class Verification:
    """Serving-DES check of one candidate: per-replica sustainable rate with a confidence interval.

    When the verifier decides the replica count directly (``replicas`` set; see
    :mod:`moesim.planner.verify`), ``replicas_ci`` is its 95% interval, ``max_request_rate_per_s``
    the per-replica load verified within the SLO and ``probes`` the simulated loads; otherwise the
    plan derives replicas from the rate and its interval.
    """

    candidate: Candidate
    max_request_rate_per_s: float
    rate_ci_low: float
    rate_ci_high: float
    output_tokens_per_s: float
    ttft_p99_s: float | None = None
    tpot_p99_s: float | None = None
    ttft_p99_ci: tuple[float, float] | None = None
    tpot_p99_ci: tuple[float, float] | None = None
    engine: str = "des"
    notes: tuple[str, ...] = field(default_factory=tuple)
    replicas: int | None = None
    replicas_ci: tuple[int, int] | None = None
    probes: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["key"] = self.candidate.key()
        return d


@dataclass(frozen=True)
class HardwareFacts:
    """What the planner itself needs of a hardware profile: price, domain size, memory."""

    name: str
    usd_per_device_hour: float
    domain_size: int
    hbm_GiB: float
    price: PriceEntry | None = None  # the profile's price with provider and source (moesim.prices)


@runtime_checkable
class Evaluator(Protocol):
    """Given candidates and the scenario, return one frozen Evaluation per candidate, in order.

    ``verify`` checks one judged-feasible evaluation with a slower, stochastic model (the serving
    DES) and may return None when it cannot.
    Implementations must be picklable (they travel to worker processes and Dask workers) and
    pure: the same candidate and scenario always give the same evaluation.
    """

    name: str

    def evaluate(self, candidates: Sequence[Candidate], scenario) -> list[Evaluation]: ...

    def verify(self, evaluation: Evaluation, scenario) -> Verification | None: ...

    def hardware(self, name: str) -> HardwareFacts: ...
