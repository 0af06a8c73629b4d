"""What one serving pool's iterations cost: the ONE seam between the serving-mode planner
(:mod:`moesim.planner.disagg`) and the step model.

Every time the disaggregated search uses comes from here, built on the step model's one
estimator (``moesim.step.estimate`` on the pool's ``Deployment``, made by the co-located
planner's own ``moesim.planner.costs.deployment_of``, dropless: pools run no capacity limit),
so a new estimator is switched in by changing this module alone:

- ``decode_breakdowns(layout, batch_B, context)``: ``estimate``'s StepBreakdown of a ``Decode``
  at each batch per device (one context, the scenario's routing skew), one array call per
  context;
- ``decode_overlap(layout, batch, context)``: the decode overlap of a pool replica planned at
  ``batch`` per device, by the co-located planner's rule (``serving_policy.faster_overlap``: with
  ``search.overlap = "auto"`` the faster of none / two micro-batches on the plain step); every
  decode time below is under the mode chosen at the pool's planned batch unless one is given;
- ``decode_step_s(layout, batch, context)``: the time of one decode step of ``batch`` sequences
  per device, with speculative decoding when the features ask for it
  (moesim/specs/serving_features.py): a verify pass of ``b (1 + d)`` query tokens per device
  whose KV is read once per sequence, ``t(b (1 + d), 1) + t(b, C) - t(b, 1)`` (decode time is
  affine in context: moesim/des/serving/cost.py), never below the plain step ``t(b, C)``, plus
  ``d x draft_fraction x t(b, C)`` for the draft passes;
- ``prefill_s(layout, new_tokens_per_device_N, context)``: a prefill iteration of that many new
  tokens per device whose mean query attends ``context`` keys (prefix-cache hits: the cached
  prefix is attended, not recomputed), under the layout's prefill overlap (the co-located
  planner's rule: ``serving_policy.prefill_overlap``), uniform routing (the replica cost's, as
  ``from_deployment``). It runs ``estimate``'s own prefill stages (moesim/step/estimate.py: the
  layer model per layer kind, each pipeline stage's schedule, no LM head) with the context
  given rather than tied to the prompt; with no cache hit ``context = (S + 1)/2`` and the value
  equals ``estimate(Prefill(S, T / S))``'s (tests/test_disagg.py);
- ``kv_capacity(layout)``: KV tokens one replica holds at the serving memory fraction (the DES's
  ``kv_capacity_tokens``).

Pools run one pipeline stage (pp 1), as the published large-EP deployments do. ``PoolCosts`` is
an explicit cache keyed by the layout and arguments, one per plan; its ``PlanCache`` holds the
deployments and the step model's layer setups (content-keyed, moesim/planner/costs.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


from moesim.errors import MoesimError
from moesim.planner import serving_policy
from moesim.planner.evaluation import Candidate, etp_suffix


@dataclass(frozen=True)
class PoolLayout:
    """One replica of a pool: hardware, devices, attention TP, EP, attention layout, redundant
    slots, expert TP (``etp`` = devices with ep = 1: every expert sharded over the replica)."""

    hardware: str
    devices: int
    tp: int
    ep: int
    attention_layout: str
    redundant_experts: int = 0
    etp: int = 1

    @property
    def attention_ranks(self) -> int:
        """Attention data-parallel ranks (each holds its own sequences)."""
        return max(1, self.devices // self.tp)

    def candidate(self, batch: int = 1) -> Candidate:
        return Candidate(self.hardware, self.devices, self.tp, 1, self.devices // self.tp, self.ep,
                         self.attention_layout, batch, None, self.redundant_experts, self.etp)

    def describe(self) -> str:
        r = f" +{self.redundant_experts} redundant" if self.redundant_experts else ""
        return (f"{self.hardware} x{self.devices} TP{self.tp} EP{self.ep}{etp_suffix(self.etp)} "
                f"attn={self.attention_layout}{r}")

    def key(self) -> str:
        return (f"{self.hardware}|n{self.devices}|tp{self.tp}|ep{self.ep}|{self.attention_layout}"
                f"|r{self.redundant_experts}{etp_suffix(self.etp, True)}")


class PoolCosts:
    """Memoized iteration costs of pools for one scenario and model (module docstring)."""

    def __init__(self, scenario, model, cache=None):
        from moesim.planner.costs import PlanCache

        self.scenario, self.model = scenario, model
        self.cache = PlanCache() if cache is None else cache
        self.skew = scenario.routing.skew
        self.spec = scenario.features.speculative
        self._decode: dict = {}
        self._prefill: dict = {}
        self._cap: dict = {}
        self._deps: dict = {}
        self._overlap: dict = {}

    def deployment(self, layout: PoolLayout, overlap: str | None = None):
        """The pool replica's ``Deployment``: the scenario's dtypes and decode overlap (or
        ``overlap``), dropless (one per layout and mode for this PoolCosts' life: one plan, one
        snapshot of the profiles)."""
        dep = self._deps.get(layout)
        if dep is None:
            dep = self._deps[layout] = self.cache.deployment(layout.candidate(), self.scenario, self.model,
                                                             capacity=False)
        if overlap is None or overlap == dep.overlap:
            return dep
        other = self._deps.get((layout, overlap))
        if other is None:
            other = self._deps[(layout, overlap)] = dep.with_(overlap=overlap)
        return other

    def decode_breakdowns(self, layout: PoolLayout, batch_B, context: int, overlap: str | None = None) -> list:
        """``estimate``'s decode StepBreakdown at each batch per device under ``overlap`` (None: the
        scenario's mode), memoized per node."""
        from moesim.step import Decode, estimate

        dep = self.deployment(layout, overlap)
        mode = dep.overlap
        todo = sorted({float(b) for b in batch_B if (layout, mode, float(b), int(context)) not in self._decode})
        if todo:
            est = estimate(self.model, dep, Decode(todo, int(context), self.skew), check_memory=False,
                           cache=self.cache.step)
            for b, bd in zip(todo, est.breakdowns()):
                self._decode[(layout, mode, b, int(context))] = bd
        return [self._decode[(layout, mode, float(b), int(context))] for b in batch_B]

    def prefetch_decode(self, layout: PoolLayout, batch_B, context: int) -> None:
        """Price every decode node ``decode_step_s`` will ask for at these batches in one vectorized
        call per context and overlap mode (the plain step, and the verify pass's nodes with
        speculative decoding)."""
        if not batch_B:
            return
        from moesim.planner.serving_policy import overlap_choices

        for mode in overlap_choices(self.scenario, self.model):
            self.decode_breakdowns(layout, batch_B, context, mode)
            if self.spec is not None:
                d = self.spec.draft_tokens
                self.decode_breakdowns(layout, list(batch_B) + [b * (1 + d) for b in batch_B], 1, mode)

    def decode_overlap(self, layout: PoolLayout, batch: float, context: int) -> str:
        """The decode overlap of a replica planned at ``batch`` per device and ``context``
        (``serving_policy.faster_overlap`` on the plain step; module docstring)."""
        key = (layout, float(batch), int(context))
        if key not in self._overlap:
            self._overlap[key] = serving_policy.faster_overlap(
                self.scenario, self.model, lambda m: self.decode_breakdowns(layout, [batch], context, m)[0].step_time_s)
        return self._overlap[key]

    def decode_info(self, layout: PoolLayout, batch: float, context: int) -> tuple[str, float]:
        """(bottleneck in the planner's words, expert imbalance max/mean) of the plain decode step
        under the overlap chosen at ``batch``."""
        from moesim.planner.analytic import bottleneck_name

        bd = self.decode_breakdowns(layout, [batch], context, self.decode_overlap(layout, batch, context))[0]
        headroom = 1.0 - bd.memory_GiB / bd.memory_capacity_GiB
        return (bottleneck_name(bd, self.deployment(layout).hardware, layout.candidate(int(batch)), headroom),
                bd.expert_imbalance)

    def _t(self, layout, batch: float, context: int, overlap: str) -> float:
        return self.decode_breakdowns(layout, [batch], context, overlap)[0].step_time_s

    def decode_step_s(self, layout: PoolLayout, batch: float, context: int, overlap: str | None = None) -> float:
        """One (verify) decode step of ``batch`` sequences per device (module docstring) under
        ``overlap``; None: the mode ``decode_overlap`` chooses at this batch and context."""
        mode = self.decode_overlap(layout, batch, context) if overlap is None else overlap
        return speculative_step_s(self.spec, self.model, lambda b, c: self._t(layout, b, c, mode), batch, context)

    def tokens_per_step(self) -> float:
        return 1.0 if self.spec is None else self.spec.tokens_per_step

    def prefill_s(self, layout: PoolLayout, new_tokens_per_device: float, context: float) -> float:
        """A prefill iteration of ``new_tokens_per_device`` tokens attending ``context`` keys each."""
        key = (layout, float(new_tokens_per_device), float(context))
        if key not in self._prefill:
            c = layout.candidate()
            overlap = serving_policy.prefill_overlap(c, self.scenario, self.model, self.cache)
            dep = self.deployment(layout).with_(prefill_overlap=overlap)
            self._prefill[key] = prefill_stage_s(self.model, dep, new_tokens_per_device, context, self.cache.step,
                                                 self.skew)
        return self._prefill[key]

    def kv_capacity(self, layout: PoolLayout) -> int:
        """KV tokens of one replica (InfeasibleError when the weights leave no room)."""
        from moesim.des.serving.deployment import kv_capacity_tokens

        if layout not in self._cap:
            try:
                self._cap[layout] = kv_capacity_tokens(self.model, self.deployment(layout))
            except MoesimError as err:  # no KV room: kept, and raised on every call
                self._cap[layout] = err
        cap = self._cap[layout]
        if isinstance(cap, MoesimError):
            raise cap
        return cap


def prefill_stage_s(model, dep, tokens_per_device: float, context: float, cache=None, skew: str = "uniform") -> float:
    """``estimate``'s prefill iteration (moesim/step/estimate.py ``_inference``: the layer model per
    layer kind at ``tokens / halves`` tokens, each pipeline stage's schedule under the prefill
    overlap, the slowest stage x pp, no LM head) of ``tokens_per_device`` new tokens whose mean
    query attends ``context`` keys. NOTE: ``Prefill`` ties the context to the prompt ((S + 1) / 2);
    a cached prefix is attended without being recomputed, so the stages are run with both."""
    from moesim.step.cache import StepCache
    from moesim.step.estimate import KindOps, layer_kinds, stage_kind_counts
    from moesim.step.layer import layer_ops
    from moesim.step.stack import stack_times

    cache = StepCache() if cache is None else cache
    overlap = dep.overlap_of("prefill")
    halves = 2 if overlap == "two_microbatch" else 1
    setup = cache.setup(model, dep, "prefill", skew)
    kinds, kind_L = layer_kinds(model)
    kops = KindOps.of([[layer_ops(setup, layers[0], float(tokens_per_device) / halves, float(context))]
                       for layers in kinds])
    stages, _ = stage_kind_counts(model, dep.pp, kinds, kind_L)
    return float(max(stack_times(kops.stage(ks), overlap).time_s[0] for ks in stages)) * dep.pp


def speculative_step_s(spec, model, step_fn, batch: float, context: float) -> float:
    """One decode step with speculative decoding ``spec`` (None: the plain step): the verify pass
    ``t(b (1 + d), 1) + t(b, C) - t(b, 1)``, at least ``t(b, C)``, plus ``d x draft_fraction x
    t(b, C)`` (module docstring); ``step_fn(batch, context)`` is the plain decode step."""
    plain = step_fn(batch, context)
    if spec is None:
        return plain
    d = spec.draft_tokens
    verify = step_fn(batch * (1 + d), 1) + plain - step_fn(batch, 1)
    return max(verify, plain) + d * spec.draft_fraction(model) * plain


def featured(prefill_fn, decode_fn, scenario, model):
    """A co-located replica's ``(prefill_fn, decode_fn)`` with the scenario's features applied:
    a prefill of T prompt tokens computes ``ceil(T (1 - h))`` of them, and one DES/closed-form
    decode iteration is the speculative step over its E emitted tokens (so every iteration still
    emits one token per sequence). Without features the functions are returned unchanged.
    NOTE: the co-located step model prices the new tokens' attention over themselves only (the
    cached prefix it attends is not in ``Prefill``'s causal context); the
    disaggregated pools price it (``PoolCosts.prefill_s``)."""
    f = scenario.features
    h, spec = f.prefix_cache_hit_rate, f.speculative
    if h == 0 and spec is None:
        return prefill_fn, decode_fn
    e = f.tokens_per_step

    def pre(tokens: int) -> float:
        return prefill_fn(max(1, math.ceil(tokens * (1.0 - h) - 1e-9)))

    def dec(batch: int, context: float) -> float:
        return speculative_step_s(spec, model, decode_fn, batch, context) / e

    return pre, dec
