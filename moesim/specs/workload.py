"""Workloads (training, serving), routing assumptions and service-level objectives."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from moesim.errors import SpecError
from moesim.specs.common import Spec, canonical_dtype

_SKEW = re.compile(
    r"^(uniform|balanced|zipf:(?P<s>[0-9.eE+-]+)|dirichlet:(?P<a>[0-9.eE+-]+)|trace:(?P<f>.+)|"
    r"explicit:(?P<v>[0-9.eE+-]+(,[0-9.eE+-]+)*))$"
)


def parse_skew(text: str) -> tuple[str, float | str | tuple[float, ...] | None]:
    """Parse a skew string: ``uniform``, ``balanced``, ``zipf:S``, ``dirichlet:ALPHA``,
    ``trace:FILE`` or ``explicit:p1,p2,...``. Returns ``(kind, parameter)``; raises ValueError."""
    m = _SKEW.match(str(text).strip())
    if not m:
        raise SpecError("skew", text, "allowed: uniform, balanced, zipf:S (S >= 0), "
                        "dirichlet:ALPHA (ALPHA > 0), trace:FILE or explicit:p1,p2,...")
    kind = m.group(1).split(":")[0]
    if kind in ("uniform", "balanced"):
        return kind, None
    if kind == "zipf":
        s = float(m.group("s"))
        if not s >= 0:
            raise SpecError("skew", text, "allowed: zipf:S with the exponent S >= 0")
        return kind, s
    if kind == "dirichlet":
        a = float(m.group("a"))
        if not a > 0:
            raise SpecError("skew", text, "allowed: dirichlet:ALPHA with ALPHA > 0")
        return kind, a
    if kind == "trace":
        return kind, m.group("f")
    probs = tuple(float(x) for x in m.group("v").split(","))
    if any(p < 0 for p in probs) or sum(probs) <= 0:
        raise SpecError("skew", text, "allowed: explicit:p1,p2,... with every p >= 0 and a positive sum")
    return kind, probs


class RoutingSpec(Spec):
    """What routing to assume: popularity skew, capacity limit and overflow policy, placement."""

    skew: str = Field("uniform", description="uniform | balanced | zipf:S | dirichlet:A | trace:FILE | explicit:p,...")
    capacity_factor: float | None = Field(None, gt=0, description="None = dropless")
    overflow: Literal["drop", "reroute", "shared"] = "drop"
    placement: Literal["auto", "contiguous", "round_robin", "load_aware"] = Field(
        "auto", description="expert slots on the EP ranks; auto = load_aware with redundant expert slots (EPLB), "
                            "else contiguous (Deployment.placement)")
    drift: float = Field(0.0, ge=0, description="per-step popularity resampling strength (0 = static)")

    @field_validator("skew")
    @classmethod
    def _parse(cls, value: str) -> str:
        parse_skew(value)
        return value


class SLO(Spec):
    """Latency objectives at a percentile; ``None`` means no limit on that metric."""

    percentile: float = Field(99.0, gt=0, lt=100)
    ttft_s: float | None = Field(None, gt=0, description="time to first token")
    tpot_s: float | None = Field(None, gt=0, description="time per output token after the first")
    e2e_s: float | None = Field(None, gt=0, description="end-to-end request latency (moesim plan: TTFT + "
                                "(output_len - 1) TPOT in the closed form, co-located plans only; the serving "
                                "DES: each request's)")


class TrainingWorkload(Spec):
    """Pre-training or fine-tuning: batch, sequence, precision, recompute and the token budget."""

    global_batch: int = Field(gt=0, description="sequences per optimizer step")
    seq_len: int = Field(gt=0)
    micro_batch: int = Field(1, gt=0, description="sequences per micro-batch")
    dtype: str = Field("bf16", description="compute dtype of the GEMMs (fp8 = FP8 training)")
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_modules: tuple[str, ...] | None = Field(
        None, description="selective recompute: the Megatron-Core modules recomputed (core_attn, layernorm, "
                          "moe_act, mla_up_proj, mlp, moe, shared_experts); None: core_attn")
    optimizer: Literal["adam"] = "adam"
    distributed_optimizer: bool = True
    mtp_layers: int | None = Field(
        None, ge=0, description="multi-token-prediction modules trained on the last pipeline stage; None: the "
                                "model's mtp_layers (DeepSeek-V3: 1), 0: MTP off")
    tokens_to_train: float | None = Field(None, gt=0, description="token budget, for time and cost")
    deadline_days: float | None = Field(None, gt=0)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value):
        canonical_dtype(value, field="dtype")
        return value

    @field_validator("recompute_modules", mode="before")
    @classmethod
    def _recompute_modules(cls, value):
        from moesim.specs.deployment import canonical_recompute_modules

        return canonical_recompute_modules(value)

    @model_validator(mode="after")
    def _batch(self):
        if self.global_batch % self.micro_batch:
            raise SpecError("global_batch", self.global_batch, "allowed: a multiple of micro_batch")
        from moesim.specs.deployment import check_modules_need_selective

        check_modules_need_selective(self.recompute, self.recompute_modules)
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


class ServingWorkload(Spec):
    """Online serving: request lengths, load and precision."""

    prompt_len: int = Field(gt=0, description="mean prompt tokens per request")
    output_len: int = Field(gt=0, description="mean output tokens per request")
    length_distribution: Literal["fixed", "lognormal"] = "fixed"
    length_sigma: float = Field(0.5, ge=0, description="lognormal sigma of both lengths")
    request_rate: float | None = Field(None, gt=0, description="requests per second")
    target_output_tokens_per_s: float | None = Field(None, gt=0)
    dtype: str = Field("fp8", description="compute dtype of the GEMMs")
    kv_dtype: str = Field("bf16", description="KV-cache dtype")

    @field_validator("dtype", "kv_dtype")
    @classmethod
    def _dtype(cls, value, info):
        canonical_dtype(value, field=info.field_name)
        return value

    @model_validator(mode="after")
    def _load(self):
        if self.request_rate is None and self.target_output_tokens_per_s is None:
            raise SpecError("request_rate", None, "give request_rate or target_output_tokens_per_s")
        return self

    @property
    def rate_per_s(self) -> float:
        """Requests per second (from the output-token target when no rate is given)."""
        if self.request_rate is not None:
            return self.request_rate
        return self.target_output_tokens_per_s / self.output_len
