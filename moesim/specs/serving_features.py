"""Serving-workload features that change a plan: prefix/KV-cache hits, speculative decoding (MTP),
and the request-length distribution as the scheduler sees it.

- ``prefix_cache_hit_rate`` h in [0, 1): the share of prompt tokens whose KV is already cached
  (a shared system prompt, a multi-turn history). Cached tokens skip the prefill compute (their
  projections, MoE and KV writes), but the new tokens still attend to them, so their KV is read:
  a prompt of P tokens prefills ``P_new = ceil(P (1 - h))`` tokens whose mean query attends
  ``P - P_new + (P_new + 1) / 2`` keys. Decode is unchanged (the whole context is in the cache).
  h = 1 (nothing to prefill) is not a serving workload and is refused.
- ``speculative``: draft ``draft_tokens`` tokens d per step (MTP: the model's own
  ``mtp_layers``), verify them in one target pass. With a per-token acceptance probability a
  (each draft token accepted only if all before it were; the usual chain model, Leviathan et
  al. 2023, "Fast Inference from Transformers via Speculative Decoding", eq. 1), the expected
  tokens emitted per verify step are ``E = 1 + a + a^2 + ... + a^d = (1 - a^(d+1)) / (1 - a)``
  (E = d + 1 at a = 1, E = 1 at a = 0). The step costs a verify pass (the decode of (1 + d)
  query tokens per sequence, the KV of each sequence read once) plus d draft passes of
  ``draft_cost_fraction`` of a decode step each (MTP default: ``mtp_layers / num_layers``:
  one extra transformer block per draft token). At a = 0 MTP therefore never beats no MTP.
- in-flight context: a decoding sequence is sampled in proportion to its output length
  (length-biased), so the mean KV context of the sequences in flight is
  ``E[P] + E[L^2] / (2 E[L])`` for independent prompt P and output L. Fixed lengths give
  ``P + L / 2``; lognormal lengths with sigma s give ``P + L e^(s^2) / 2``
  (E[L^2] = E[L]^2 e^(s^2)), a longer mean context than one mean suggests.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from moesim.errors import SpecError
from moesim.specs.common import Spec


class SpeculativeDecoding(Spec):
    """Speculative decoding: ``draft_tokens`` drafted per step, accepted with ``acceptance_rate``."""

    method: Literal["mtp", "draft_model"] = Field(
        "mtp", description="mtp: the model's multi-token-prediction layers draft; draft_model: a separate "
                           "draft model whose cost per draft token is draft_cost_fraction of a decode step")
    draft_tokens: int = Field(1, ge=1, le=16, description="draft depth d: tokens proposed per verify step")
    acceptance_rate: float = Field(ge=0, le=1, description="probability that a draft token is accepted "
                                                           "given that the ones before it were")
    draft_cost_fraction: float | None = Field(
        None, ge=0, le=1, description="one draft pass as a fraction of a decode step; None = mtp_layers / "
                                      "num_layers of the model (method mtp only)")

    @model_validator(mode="after")
    def _cost(self):
        if self.method == "draft_model" and self.draft_cost_fraction is None:
            raise SpecError("draft_cost_fraction", None, "required with method draft_model (0 to 1)")
        return self

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens emitted per verify step, ``(1 - a^(d+1)) / (1 - a)`` (module docstring)."""
        a, d = self.acceptance_rate, self.draft_tokens
        if a >= 1.0:
            return float(d + 1)
        return (1.0 - a ** (d + 1)) / (1.0 - a)

    def draft_fraction(self, model) -> float:
        """One draft pass as a fraction of a decode step (``mtp_layers / num_layers`` for MTP)."""
        if self.draft_cost_fraction is not None:
            return self.draft_cost_fraction
        if model.mtp_layers < 1:
            raise SpecError("speculative.method", "mtp", f"model {model.name} has no MTP layers "
                            "(set method = draft_model with draft_cost_fraction)")
        return model.mtp_layers / model.num_layers


class ServingFeatures(Spec):
    """Workload features of a serving scenario (``[features]``); the defaults are today's plan."""

    prefix_cache_hit_rate: float = Field(0.0, ge=0, lt=1, description="share of prompt tokens served from "
                                                                      "the prefix/KV cache, in [0, 1)")
    speculative: SpeculativeDecoding | None = Field(None, description="speculative decoding / MTP; None = off")

    @property
    def tokens_per_step(self) -> float:
        return 1.0 if self.speculative is None else self.speculative.tokens_per_step


def new_prompt_tokens(prompt_len: int, hit_rate: float) -> int:
    """Prompt tokens a request prefills: ``ceil(P (1 - h))``, at least 1."""
    return max(1, math.ceil(prompt_len * (1.0 - hit_rate) - 1e-9))


def prefill_context(prompt_len: int, hit_rate: float) -> float:
    """Mean keys a prefilled token attends: the cached prefix plus the causal mean of the new part."""
    new = new_prompt_tokens(prompt_len, hit_rate)
    return (prompt_len - new) + (new + 1) / 2.0


def inflight_context(workload) -> float:
    """Mean KV context of the sequences decoding at a time, ``E[P] + E[L^2] / (2 E[L])``."""
    spread = math.exp(workload.length_sigma ** 2) if workload.length_distribution == "lognormal" else 1.0
    return workload.prompt_len + workload.output_len * spread / 2.0


def inflight_context_tokens(workload) -> int:
    """``inflight_context`` in whole tokens: ``P + L // 2`` for fixed lengths (the planner's rounding
    since it began), rounded up otherwise."""
    if workload.length_distribution == "fixed":
        return workload.prompt_len + workload.output_len // 2
    return math.ceil(inflight_context(workload))
