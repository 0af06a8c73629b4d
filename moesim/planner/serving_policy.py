"""The serving system both planner stages model: scheduler limits, iteration costs, and the
closed-form latencies of co-located continuous batching under that scheduler.

The analytic stage (:mod:`moesim.planner.analytic`) and the serving-DES check
(:mod:`moesim.planner.verify`) price iterations with the SAME :class:`GridCost`
(:func:`replica_cost`, memoized per deployment content in the evaluator's ``PlanCache``) and
configure the SAME scheduler
(:func:`scheduler`), so the DES tests the analytic's tails, not a different deployment.

Choices, as a production deployment makes them (units: tokens, seconds):

- token budget per iteration = the per-rank budget x attention data-parallel ranks
  (``devices / (tp x pp)``): the scenario's ``engine.max_num_batched_tokens``, else its stack's
  default for the GPU (vLLM V1's ``max_num_batched_tokens`` for online serving: 8192 on large
  GPUs, 2048 on A100 and below 70 GiB), else ``PER_RANK_TOKEN_BUDGET`` = 8192, SGLang's default
  ``--chunked-prefill-size`` for 35-160 GB GPUs (H100/H200; 16384 above 160 GB, not modelled),
  both per engine (``token_budget_per_rank``). SGLang with ``--enable-dp-attention`` divides the flag by
  ``dp_size`` (server_args ``_handle_data_parallelism``: "The chunked prefill size is adjusted
  ... to avoid MoE kernel issues"), so DP-attention deployments pass 8192 x dp to keep 8192 per
  rank; the old replica-wide 8192 meant 128 tokens per rank at DP 64.
- sequences in flight: the candidate's ``batch`` is the MEAN occupancy the analytic plans for;
  the scheduler admits up to ``SEQ_HEADROOM`` x that (Poisson load fluctuates around the mean;
  the KV-cache admission control of the memory model stays the hard bound).
- prefill batching ``K = decode_steps_per_prefill`` (``SchedulerConfig``): prompts are scheduled
  at most once every K iterations. An eager prefill pays a host issue time per pass regardless
  of its tokens (moesim/step/host.py; the scenario's ``stack`` decides which phases are eager)
  while decode replays CUDA graphs; at K = 1 every iteration carrying a new prompt pays it. The
  analytic picks the K of most tokens/s (smallest TPOT) among those meeting the TPOT and TTFT
  limits, ties to the smaller K (``choose``), and the DES runs that K.
- TensorRT-LLM (``scenario.scheduler`` ``trtllm``, or ``auto`` with ``stack = "trtllm"``): the
  engine's own limits instead (moesim/planner/trtllm_engine.py: trtllm-bench's max_batch_size
  and max_num_tokens, KV for whole requests), no prompt held back (K = L / S_rank), candidates
  over its sequence limit rejected (``engine_rejection``).
- overlap: with ``search.overlap = "auto"`` (MoE), prefill and mixed passes use the faster of
  ``none`` / ``two_microbatch`` at one prompt per device (each micro-batch pays the host time
  again: ``prefill_overlap``), and the decode step the faster of the two at the candidate's own
  batch per device and in-flight context (``decode_overlap``; the rule ``faster_overlap``, the same
  for the disaggregated decode pools: moesim/planner/pool_cost.py). Two micro-batches hide the
  all-to-all behind the other half's compute but pay every fixed per-pass cost twice (weight
  reads, kernel launch and host time), which at small decode batches costs more than it hides
  (DeepSeek-V3 on 4 x B200, batch 64 per device: 35.8 ms with two micro-batches, 21.3 ms
  without). SGLang enables two-batch overlap per deployment (``--enable-two-batch-overlap``,
  python/sglang/srt/server_args.py), so the choice is a schedule choice made once per
  (deployment, batch), and the replica's every decode node (its ``GridCost``, which the serving
  DES runs) uses it. A fixed ``search.overlap`` applies to every phase.

Closed form (co-located, per replica, steady state at the planned occupancy S sequences; L
output tokens, P prompt tokens, C = P + L / 2 mean context, t_d the decode step at S, T_mix the
mixed iteration ``cost.mixed_time_s(n P, n, S, C)``)::

    n      = S K / L                     prompts arriving per period (Little's law)
    period = T_mix + (K - 1) t_d         one mixed iteration and K - 1 decode-only ones
    TPOT   = period / K                  every sequence gains one token per iteration
    TTFT_q = (q + m) period_q + T_mix_q  Poisson arrivals wait U(0, period) for the next mixed
                                         iteration (q = SLO percentile / 100), then run it;
                                         priced at the q-quantile of a period's prompt tokens,
                                         m periods more when they overflow one iteration's
                                         budget (``estimate``)
    out tokens/s = S / TPOT

When the prompts cannot keep up (S P > L (B - S): not even a prompt in every iteration
replaces the finishing sequences within the budget B), the replica is prefill-bound: every
iteration is filled to B with d = min(S, B L / (P + L)) decodes and B - d prompt-chunk tokens,
TPOT = T_mix(B - d, d, C) and out tokens/s = d / TPOT (``prefill_bound``; continuous with the
form above at the boundary). A prefill of fewer tokens than one prompt is a chunk of it, whose
queries attend the whole prompt's causal mean (``_Nodes``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

from moesim import units
from moesim.planner.costs import PlanCache
from moesim.planner.trtllm_engine import EngineLimits, trtllm_limits
from moesim.planner.scenario import overlap_mode
from moesim.step.cache import StepCache

PER_RANK_TOKEN_BUDGET = 8192
SEQ_HEADROOM = 2
MAX_DECODE_STEPS_PER_PREFILL = 512
POISSON_EXACT_MEAN = 50.0  # above this mean, Poisson quantiles start from the normal approximation


def attention_ranks(c) -> int:
    """Attention data-parallel ranks of one replica (each holds distinct sequences)."""
    return max(1, c.devices // (c.tp * c.pp))


def planned_seqs(c) -> int:
    """Sequences in flight one replica is planned for (``batch`` per device, as the step model)."""
    return max(1, c.batch * c.devices // c.pp)


def scheduler(c, steps: int = 1, limits: EngineLimits | None = None, scenario=None):
    """The replica scheduler both stages assume (module docstring); with TensorRT-LLM's
    ``limits`` (``trtllm_limits``) its per-rank token budget and sequence limit times the
    attention ranks, a prompt admitted in every iteration that has room (K = 1). Otherwise the
    per-rank budget is ``scenario``'s (``token_budget_per_rank`` on the candidate's hardware;
    None: ``PER_RANK_TOKEN_BUDGET``)."""
    from moesim.catalog import load_profile
    from moesim.des.serving.replica import SchedulerConfig

    if limits is not None:
        ranks = attention_ranks(c)
        return SchedulerConfig(token_budget=limits.max_num_tokens * ranks, max_seqs=limits.max_seqs * ranks,
                               decode_steps_per_prefill=1)
    seqs = SEQ_HEADROOM * planned_seqs(c)
    per_rank = PER_RANK_TOKEN_BUDGET if scenario is None else token_budget_per_rank(scenario, load_profile(c.hardware))
    return SchedulerConfig(token_budget=max(per_rank * attention_ranks(c), seqs),
                           max_seqs=seqs, decode_steps_per_prefill=max(1, int(steps)))


def engine_limits(c, scenario, model, cache: PlanCache) -> EngineLimits | None:
    """The engine limits the scheduler of ``scenario`` sets on candidate ``c``: TensorRT-LLM's
    (``trtllm_limits``) under the ``trtllm`` scheduler, else None (the per-rank budget)."""
    return trtllm_limits(c, scenario, model, cache) if engine(scenario) == "trtllm" else None


def des_scheduler(c, scenario, model, cache: PlanCache, steps: int = 1):
    """The ``SchedulerConfig`` a serving-DES check of ``c`` runs: ``scheduler`` at the analytic's
    K with the engine limits the analytic priced (``engine_limits``), so the DES admits no more
    sequences per rank than the engine does."""
    return scheduler(c, steps, engine_limits(c, scenario, model, cache), scenario)


def prefill_overlap(c, scenario, model, cache: PlanCache) -> str:
    """Overlap of prefill/mixed passes: the scenario's, or with ``auto`` the faster of the two
    at one prompt per device (module docstring), chosen on the layout's dropless deployment (one
    choice for every capacity factor of a layout: a schedule choice, not a price)."""
    from moesim.step import Prefill, estimate

    choices = overlap_choices(scenario, model)
    if len(choices) == 1:
        return choices[0]
    w = scenario.workload
    dep = cache.deployment(c, scenario, model, capacity=False)

    def faster():
        return faster_overlap(scenario, model, lambda m: float(estimate(
            model, dep.with_(prefill_overlap=m), Prefill(w.prompt_len, 1.0, scenario.routing.skew), check_memory=False,
            cache=cache.step).step_time_s[0]))

    return cache.get(cache.key(model, dep, "prefill_overlap", w.prompt_len, scenario.routing.skew), faster)


def faster_overlap(scenario, model, step_s) -> str:
    """The overlap mode of one pass (``step_s(mode)`` its seconds under ``mode``): the scenario's
    resolved mode, or with ``search.overlap = "auto"`` for a model whose mode is two_microbatch the
    faster of ``none`` and it (ties to ``none``). The one rule of ``prefill_overlap``,
    ``decode_overlap`` and the disaggregated pools' decode steps (module docstring)."""
    mode = overlap_mode(scenario, model)
    if getattr(scenario.search, "overlap", "none") != "auto" or mode == "none":
        return mode
    t = {m: float(step_s(m)) for m in ("none", mode)}
    return min(t, key=t.__getitem__)


def overlap_choices(scenario, model) -> tuple[str, ...]:
    """Every overlap mode ``faster_overlap`` may pick for ``scenario`` (the scenario's mode first)."""
    mode = overlap_mode(scenario, model)
    if getattr(scenario.search, "overlap", "none") != "auto" or mode == "none":
        return (mode,)
    return (mode, "none")


def decode_steps(cands, scenario, model, cache: PlanCache) -> dict:
    """``{batch: (overlap, StepBreakdown)}``: the decode step of each batch of ``cands`` (one
    deployment, capacity factor included) at the in-flight context under the overlap
    ``faster_overlap`` picks for that batch (module docstring). One vectorized step-model call per
    mode, memoized in ``cache`` (with each batch's choice, which ``decode_overlap`` reads)."""
    from moesim.specs.serving_features import inflight_context_tokens
    from moesim.step import Decode, estimate

    w, skew = scenario.workload, scenario.routing.skew
    dep = cache.deployment(cands[0], scenario, model)
    context = inflight_context_tokens(w)
    batches = tuple(sorted({c.batch for c in cands}))

    def under(mode: str) -> dict:
        d = dep if mode == dep.overlap else dep.with_(overlap=mode)
        return cache.get(cache.key(model, d, "decode", batches, context, skew), lambda: dict(zip(
            batches, estimate(model, d, Decode(batches, context, skew), check_memory=False,
                              cache=cache.step).breakdowns())))

    by_mode = {m: under(m) for m in overlap_choices(scenario, model)}
    out = {}
    for b in batches:
        mode = faster_overlap(scenario, model, lambda m: by_mode[m][b].step_time_s)
        out[b] = (cache.get(cache.key(model, dep, "decode overlap", b, context, skew), lambda: mode),
                  by_mode[mode][b])
    return out


def decode_overlap(c, scenario, model, cache: PlanCache) -> str:
    """The overlap of candidate ``c``'s decode steps (``decode_steps``' choice at its batch)."""
    from moesim.specs.serving_features import inflight_context_tokens

    if len(overlap_choices(scenario, model)) == 1:
        return overlap_choices(scenario, model)[0]
    dep = cache.deployment(c, scenario, model)
    key = cache.key(model, dep, "decode overlap", c.batch, inflight_context_tokens(scenario.workload),
                    scenario.routing.skew)
    return cache.get(key, lambda: decode_steps([c], scenario, model, cache)[c.batch][0])


def overlap_detail(decode: str, prefill: str) -> str:
    """The overlap modes of an evaluation, as its ``detail`` states them (``overlaps_of`` reads it)."""
    return f"overlap: decode={decode} prefill={prefill}"


def overlaps_of(detail: str) -> dict[str, str]:
    """``{"decode": mode, "prefill": mode}`` from an ok evaluation's ``detail`` (empty when absent)."""
    if not detail.startswith("overlap: "):
        return {}
    return dict(part.split("=", 1) for part in detail[len("overlap: "):].split())


def engine(scenario) -> str:
    """The co-located scheduler of ``scenario``: its ``scheduler``, ``auto`` resolved (``trtllm``
    when the software stack is TensorRT-LLM's: ``trtllm`` or ``trtllm-engine``, ``is_trtllm``;
    else ``batched_prefill``)."""
    name = getattr(scenario, "scheduler", "auto")
    if name != "auto":
        return name
    from moesim.step.stacks import is_trtllm

    return "trtllm" if is_trtllm(getattr(scenario, "stack", "auto")) else "batched_prefill"


# the engine-table keys each co-located scheduler reads (moesim/planner/scenario.py EngineSettings)
TRTLLM_ENGINE_KEYS: tuple[str, ...] = ("max_batch_size", "max_num_tokens", "kv_cache_free_gpu_mem_fraction",
                                       "concurrency", "cuda_graph_batch_sizes")
BATCHED_ENGINE_KEYS: tuple[str, ...] = ("max_num_seqs", "max_num_batched_tokens")


def unused_engine_keys(scenario) -> tuple[str, ...]:
    """The stated engine settings the scenario's scheduler does not read."""
    stated = scenario.engine.model_dump(exclude_none=True)
    reads = TRTLLM_ENGINE_KEYS if engine(scenario) == "trtllm" else BATCHED_ENGINE_KEYS
    return tuple(sorted(k for k in stated if k not in reads))


def unused_engine_reason(key: str) -> str:
    """Why a stated engine setting ``key`` is not read: whose limit it is and which scheduler reads it."""
    if key in TRTLLM_ENGINE_KEYS:
        return "a TensorRT-LLM limit, read by the trtllm scheduler only"
    return "a vLLM/SGLang limit, read by the batched_prefill scheduler only"


def running_seqs_cap(scenario, hw=None) -> int | None:
    """Sequences one attention rank's scheduler runs under ``batched_prefill``: the stated
    ``engine.max_num_seqs``, else the stack's default on ``hw`` (``SoftwareStack.running_seqs_default``:
    vLLM's max_num_seqs, 1024 on large GPUs, 256 on A100 and below 70 GiB; ``hw`` None: the
    large-GPU default; None: only the KV cache bounds it)."""
    from moesim.step.stacks import serving_stack

    stated = scenario.engine.max_num_seqs
    if stated is not None:
        return int(stated)
    return serving_stack(getattr(scenario, "stack", "auto")).running_seqs_default(hw)


def token_budget_per_rank(scenario, hw=None) -> int:
    """Tokens one attention rank's iteration carries under ``batched_prefill`` (prompt chunks plus
    one per decoding sequence): the stated ``engine.max_num_batched_tokens``, else the stack's
    default on ``hw`` (``SoftwareStack.batched_tokens_default``: vLLM's max_num_batched_tokens,
    8192 on large GPUs, 2048 on A100 and below 70 GiB; ``hw`` None: the large-GPU default), else
    ``PER_RANK_TOKEN_BUDGET``."""
    from moesim.step.stacks import serving_stack

    stated = scenario.engine.max_num_batched_tokens
    if stated is not None:
        return int(stated)
    own = serving_stack(getattr(scenario, "stack", "auto")).batched_tokens_default(hw)
    return PER_RANK_TOKEN_BUDGET if own is None else int(own)


def kv_free_fraction(scenario) -> float | None:
    """The share of the memory the loaded weights leave that the scenario's engine fills with KV
    cache, for engines that size their cache so (TensorRT-LLM's
    kv_cache_free_gpu_mem_fraction): under the ``trtllm`` scheduler the stated
    ``engine.kv_cache_free_gpu_mem_fraction``, else the stack's ``kv_free_fraction``, else the
    ``trtllm`` stack's (the scheduler's engine); under any other scheduler the stack's (None
    for engines whose budget is a share of the whole device: vLLM, SGLang)."""
    from moesim.step.stacks import serving_stack

    own = serving_stack(getattr(scenario, "stack", "auto")).kv_free_fraction
    if engine(scenario) != "trtllm":
        return own
    return scenario.engine.kv_cache_free_gpu_mem_fraction or own or serving_stack("trtllm").kv_free_fraction


def max_load_batch(c, scenario, model, cache: PlanCache) -> int:
    """Sequences per device a ``batched_prefill`` engine (vLLM, SGLang) runs under maximum load:
    every request is queued at once and the engine admits them while its KV cache has room
    (``serving_memory`` ``max_batch``: its memory share at the mean in-flight context) and its
    scheduler's cap allows (``running_seqs_cap`` per attention rank, which spans tp devices of
    one batch). 0 when nothing fits."""
    fill = serving_memory(c, scenario, model, cache).max_batch()
    cap = running_seqs_cap(scenario, cache.deployment(c, scenario, model).hardware)
    return fill if cap is None else min(fill, cap // c.tp)


def engine_summary(c, scenario, model, cache: PlanCache) -> str | None:
    """One line of the engine limits candidate ``c`` runs under the scenario's TensorRT-LLM
    scheduler: each setting with where it comes from (stated in the scenario's ``engine`` table,
    or trtllm-bench's own choice), the KV cache's whole requests per rank and the bound that sets
    the steady-state batch. Under any other scheduler: None, or the line saying that the stated
    settings are not used."""
    stated = scenario.engine.model_dump(exclude_none=True)
    unused = unused_engine_keys(scenario)
    note = (f"; not used: {', '.join(unused)} (the {engine(scenario)} scheduler does not read "
            f"{'it' if len(unused) == 1 else 'them'}: {'; '.join(f'{k} is {unused_engine_reason(k)}' for k in unused)})"
            if unused else "")
    if engine(scenario) != "trtllm":
        hw = cache.deployment(c, scenario, model).hardware
        parts = []
        if "max_num_seqs" in stated:
            parts.append(f"max_num_seqs {running_seqs_cap(scenario, hw)} (stated)")
        if "max_num_batched_tokens" in stated:
            parts.append(f"max_num_batched_tokens {token_budget_per_rank(scenario, hw)} (stated)")
        if parts:
            return f"engine ({engine(scenario)} scheduler, per attention rank): {', '.join(parts)}{note}"
        return f"engine settings{note[1:]}" if unused else None
    lim = trtllm_limits(c, scenario, model, cache)

    def src(key: str) -> str:
        return "stated" if key in stated else "trtllm-bench's choice"

    parts = [f"max_batch_size {lim.max_batch_size} ({src('max_batch_size')})",
             f"max_num_tokens {lim.max_num_tokens} ({src('max_num_tokens')})",
             f"KV for {lim.kv_seqs} requests at kv_cache_free_gpu_mem_fraction "
             f"{kv_free_fraction(scenario):g} "
             f"({'stated' if 'kv_cache_free_gpu_mem_fraction' in stated else 'the stack default'})"]
    if lim.concurrency_seqs is not None:
        parts.append(f"concurrency {stated['concurrency']} ({lim.concurrency_seqs} per rank, stated)")
    return f"engine (TensorRT-LLM scheduler, per attention rank): {', '.join(parts)}; bound: {lim.bound}{note}"


def engine_rejection(c, scenario, model, cache: PlanCache) -> str | None:
    """Why the engine cannot hold candidate ``c``'s planned sequences per rank (None when it can,
    or when the scheduler sets no such limit)."""
    per_rank = planned_seqs(c) // attention_ranks(c)
    if engine(scenario) != "trtllm":
        cap = scenario.engine.max_num_seqs  # stated only: a plan sets its own (moesim/planner/launch.py)
        if cap is None or per_rank <= cap:
            return None
        return f"{per_rank} sequences per rank > the stated max_num_seqs {cap}"
    lim = trtllm_limits(c, scenario, model, cache)
    if per_rank <= lim.max_seqs:
        return None
    return (f"{per_rank} sequences per rank > {lim.max_seqs} that TensorRT-LLM sustains (bound: {lim.bound}; "
            f"max_batch_size {lim.max_batch_size}, max_num_tokens {lim.max_num_tokens}, KV for {lim.kv_seqs} "
            f"whole requests)")


class _Nodes:
    """``from_deployment``'s ``decode_fn`` / ``prefill_fn`` (same definitions: decode at ``batch /
    devices`` per device and ``ceil(context)``; prefill of ``min(tokens, prompt_len)``-token
    prompts, ``tokens / s / devices`` per device, whose queries attend the prompt's causal mean
    (P + 1) / 2: below one prompt, a node is a chunk of a longer prompt, as chunked prefill cuts
    them), memoized and computed many nodes at a time by one step-model call per context
    (decode) or per batch of nodes (prefill). Every node routes its tokens under ``skew`` (the
    scenario's ``routing.skew``, as ``decode_steps`` prices the closed form's decode steps)."""

    def __init__(self, model, deployment, devices: int, prompt_len: int, cache: StepCache, skew: str = "uniform"):
        self.model, self.dep, self.n, self.P, self.cache = model, deployment, devices, prompt_len, cache
        self.skew = skew
        self.decode_memo: dict = {}
        self.prefill_memo: dict = {}

    def prefetch(self, decode_nodes, prefill_nodes) -> None:
        from moesim.step import Decode, Prefill, estimate

        by_ctx: dict[int, list] = {}
        for b, ctx in decode_nodes:
            if (b, math.ceil(ctx)) not in self.decode_memo:
                by_ctx.setdefault(math.ceil(ctx), []).append(b)
        for ctx, bs in by_ctx.items():
            bs = sorted(set(bs))
            t = estimate(self.model, self.dep, Decode([b / self.n for b in bs], ctx, self.skew), check_memory=False,
                         cache=self.cache).step_time_s
            for b, v in zip(bs, t):
                self.decode_memo[(b, ctx)] = float(v)
        todo = sorted({t for t in prefill_nodes if t not in self.prefill_memo})
        if todo:
            s = [min(t, self.P) for t in todo]
            # below one prompt a node is a chunk of a P-token prompt: its queries attend the whole
            # prompt's causal mean (chunked prefill; Prefill ``context``)
            w = Prefill(s, [t / si / self.n for t, si in zip(todo, s)], self.skew, context=(self.P + 1) / 2)
            for t, v in zip(todo, estimate(self.model, self.dep, w, check_memory=False, cache=self.cache).step_time_s):
                self.prefill_memo[t] = float(v)

    def decode_fn(self, batch: int, context: float) -> float:
        self.prefetch([(batch, context)], ())
        return self.decode_memo[(batch, math.ceil(context))]

    def prefill_fn(self, tokens: int) -> float:
        self.prefetch((), [tokens])
        return self.prefill_memo[tokens]


@dataclass(frozen=True)
class ServingMemory:
    """Per-device memory of a co-located candidate's layout: ``fixed_bytes`` (weights and the
    memory model's serve-mode activations), ``kv_bytes_per_seq`` (one sequence's KV at the mean
    in-flight context C = P + L / 2, times the tp x pp devices that each hold a share of it), and
    ``budget_bytes``: what the engine may fill: its ``fraction`` of the device's memory, or
    (``free_fraction``, TensorRT-LLM; ``fraction`` None) the weights plus that share of the
    memory they leave."""

    fixed_bytes: float
    weight_bytes: float
    kv_bytes_per_seq: float
    budget_bytes: float
    capacity_bytes: float
    fraction: float | None
    free_fraction: float | None = None

    def used_bytes(self, batch: int) -> float:
        return self.fixed_bytes + batch * self.kv_bytes_per_seq

    def fits(self, batch: int) -> bool:
        return self.used_bytes(batch) <= self.budget_bytes

    def shortfall_reason(self, batch: int) -> str:
        """Why ``batch`` sequences per device do not fit (the rejection's detail)."""
        short = (self.used_bytes(batch) - self.budget_bytes) / units.GiB
        share = (f" of the engine's {self.fraction:g} share of device memory" if self.fraction is not None else
                 f" of the engine's {self.free_fraction:g} share of the memory the weights leave"
                 if self.free_fraction is not None else "")
        return (f"short of memory by {short:.1f} GiB per device{share} "
                f"(weights {self.weight_bytes / units.GiB:.1f} GiB + KV of batch {batch})")

    def max_batch(self) -> int:
        """The most sequences per device the budget holds at the mean context (0: none)."""
        if self.kv_bytes_per_seq <= 0:
            return 0
        return max(0, int((self.budget_bytes - self.fixed_bytes) // self.kv_bytes_per_seq))


def serving_memory(c, scenario, model, cache: PlanCache) -> ServingMemory:
    """``ServingMemory`` of ``c``'s layout (the batch is not read): the memory model's serve-mode
    footprint at no KV and its KV bytes per token (memoized per deployment content); the
    budget is what the DES replica sizes its cache with (moesim/des/serving/deployment.py
    ``kv_capacity_tokens``): for an engine that fills a share of the memory the weights leave
    (``kv_free_fraction``: TensorRT-LLM), the weights plus that share of the rest; else the
    engine's share of the device (``deployment.engine_memory_fraction``: vLLM's
    gpu_memory_utilization, SGLang's mem_fraction_static by engine size, 0.9 where the stack
    states none)."""
    from moesim.compute.memory import memory_footprint
    from moesim.des.serving.deployment import engine_memory_fraction
    from moesim.specs.serving_features import inflight_context_tokens

    dep = cache.deployment(c, scenario, model)
    base = cache.get(cache.key(model, dep, "memory", "serve"),
                     lambda: memory_footprint(model, dep.hardware, dep.parallelism, mode="serve",
                                              weight_dtype=dep.dtype, kv_dtype=dep.kv_dtype, kv_tokens=0))
    kv_seq = dep.tp * dep.pp * inflight_context_tokens(scenario.workload) * base.kv_bytes_per_token
    free = kv_free_fraction(scenario)
    if free is not None:
        frac = None
        budget = base.total_bytes + free * max(0.0, base.capacity_bytes - base.weight_bytes)
    else:
        frac = engine_memory_fraction(dep.stack, c.devices)
        budget = base.capacity_bytes * frac
    return ServingMemory(fixed_bytes=base.total_bytes, weight_bytes=base.weight_bytes, kv_bytes_per_seq=kv_seq,
                         budget_bytes=budget, capacity_bytes=base.capacity_bytes, fraction=frac, free_fraction=free)


def _replica(c, scenario, model, cache: PlanCache):
    """(GridCost, _Nodes) of the replica of ``c``: ``from_deployment``'s KV capacity and iteration
    definitions, keyed by the deployment's content, the scenario's overlap search, the decode
    overlap chosen at ``c``'s batch (``decode_overlap``) and the prompt."""
    from moesim.compute.memory import kv_bytes_per_token
    from moesim.des.serving.cost import GridCost
    from moesim.des.serving.deployment import kv_capacity_tokens
    from moesim.specs import Parallelism

    w = scenario.workload
    dep = cache.deployment(c, scenario, model)
    decode = decode_overlap(c, scenario, model, cache)

    def make():
        from moesim.planner.pool_cost import featured  # prefix-cache hits, speculative decoding

        cap = kv_capacity_tokens(model, dep, kv_free_fraction=kv_free_fraction(scenario))  # as serving_memory
        full = dep.with_(overlap=decode, prefill_overlap=prefill_overlap(c, scenario, model, cache))
        nodes = _Nodes(model, full, c.devices, w.prompt_len, cache.step, scenario.routing.skew)
        prefill_fn, decode_fn = featured(nodes.prefill_fn, nodes.decode_fn, scenario, model)
        cost = GridCost(prefill_fn=prefill_fn, decode_fn=decode_fn, kv_capacity_tokens=cap,
                        kv_bytes_per_token=kv_bytes_per_token(model, Parallelism(), w.kv_dtype),
                        devices=c.devices, points_per_octave=1)
        return cost, nodes

    features = scenario.features.model_dump_json() if hasattr(scenario, "features") else ""
    return cache.get(cache.key(model, dep, "replica", getattr(scenario.search, "overlap", "none"), decode,
                               w.prompt_len, features, scenario.routing.skew), make)


def replica_cost(c, scenario, model, cache: PlanCache):
    """The replica's GridCost (``from_deployment``'s: same KV capacity, same iteration
    functions), its nodes priced by :class:`_Nodes`; one per deployment content in ``cache``."""
    return _replica(c, scenario, model, cache)[0]


def prefetch(cands, scenario, model, cache: PlanCache) -> None:
    """Price at once the grid nodes the closed form will ask of the layout's GridCosts (one per
    decode overlap chosen) for ``cands`` (one deployment): decode at the brackets of each replica batch S and the slope
    nodes; prefill at the brackets of n P + S for K = 1 and K = max_steps (other K: on demand)."""
    from moesim.des.serving.cost import grid_bracket

    by_mode: dict[str, list] = {}  # one replica cost per decode overlap chosen (decode_overlap)
    for c in cands:
        by_mode.setdefault(decode_overlap(c, scenario, model, cache), []).append(c)
    w = scenario.workload
    for group in by_mode.values():
        grid, nodes = _replica(group[0], scenario, model, cache)
        c1, c2 = grid.context_nodes
        dec = [(grid.slope_batch, c1), (grid.slope_batch, c2)]
        pre = []
        for c in group:
            s = planned_seqs(c)
            dec += [(b, c1) for b in grid_bracket(s, grid.points_per_octave)]
            for k in {1, max_steps(c, scenario)}:
                n = s * k / w.output_len
                pre += grid_bracket(max(1, round(n * w.prompt_len)) + s, grid.points_per_octave)
        nodes.prefetch(dec, pre)


@dataclass(frozen=True)
class ColocatedEstimate:
    """Closed-form latencies of one replica under the prefill-batching scheduler (seconds)."""

    steps: int
    mixed_s: float
    period_s: float
    tpot_s: float
    ttft_s: float
    output_tokens_per_s: float
    prefill_bound: bool = False  # every iteration filled to the token budget (``prefill_bound``)


def length_cv2(workload) -> float:
    """Squared coefficient of variation of the prompt length: 0 fixed; ``exp(sigma^2) - 1`` for the
    lognormal of ``length_sigma`` (moesim/des/serving/arrivals.py: ln L ~ N(mu, sigma^2))."""
    if workload.length_distribution == "lognormal":
        return math.expm1(workload.length_sigma ** 2)
    return 0.0


def poisson_quantile(mean: float, q: float) -> int:
    """Smallest integer k with P(N <= k) >= q for N ~ Poisson(``mean``) (exact): the cumulative
    sum up to a mean of ``POISSON_EXACT_MEAN``; above it the normal approximation with continuity
    correction as the start, corrected by the exact CDF P(N <= k) = Q(k + 1, mean) (regularized
    upper incomplete gamma, ``scipy.special.gammaincc``)."""
    if mean <= 0 or q <= 0:
        return 0
    if mean > POISSON_EXACT_MEAN:
        from scipy.special import gammaincc

        k = max(0, math.ceil(mean + _z(q) * math.sqrt(mean) - 0.5))
        while k > 0 and gammaincc(k, mean) >= q - 1e-12:  # P(N <= k - 1) already reaches q
            k -= 1
        while gammaincc(k + 1, mean) < q - 1e-12:
            k += 1
        return k
    term = cdf = math.exp(-mean)
    k = 0
    while cdf < q - 1e-12:
        k += 1
        term *= mean / k
        cdf += term
    return k


@lru_cache(maxsize=64)
def _z(q: float) -> float:
    """Standard normal quantile (0 at the median and outside (0, 1))."""
    return NormalDist().inv_cdf(q) if 0.0 < q < 1.0 else 0.0


def prompt_tokens_quantile(n_mean: float, prompt_len: float, q: float, cv2: float = 0.0) -> float:
    """q-quantile of the prompt tokens that arrive in one period (tokens).

    Poisson arrivals: the count N ~ Poisson(``n_mean``) at its q-quantile N_q
    (``poisson_quantile``). Given N_q prompts of mean length P and squared CV ``cv2``, their sum
    has mean N_q P and standard deviation P sqrt(N_q cv2) (independent lengths), taken at the
    normal quantile z_q: tokens_q = N_q P + z_q P sqrt(N_q cv2). At least the mean n P (the
    fluid closed form; the median count of a small Poisson mean is 0)."""
    if n_mean <= 0:
        return 0.0
    n_q = poisson_quantile(n_mean, q)
    z = _z(q)
    spread = prompt_len * z * math.sqrt(n_q * cv2) if n_q > 0 and cv2 > 0 and z > 0 else 0.0
    return max(n_mean * prompt_len, n_q * prompt_len + spread)


def estimate(cost, c, scenario, decode_s: float, steps: int, limits: EngineLimits | None = None) -> ColocatedEstimate:
    """The module docstring's closed form at K = ``steps``, with TTFT at the SLO percentile.

    TPOT and tokens/s use the mean period (n = S K / L prompts of P tokens in its mixed
    iteration). TTFT_q = (q + m) x period_q + T_mix_q prices the mixed iteration (and so the
    period) at the q-quantile of the prompt tokens arriving in one period (``prompt_tokens_quantile``:
    Poisson count, the workload's length spread), the wait for it at the q-quantile of U(0,
    period_q): each term at its own q-quantile, so the sum is at or above the q-quantile of the
    TTFT distribution the serving DES samples (the margin a TTFT limit is judged with). One
    mixed iteration takes at most budget - S prompt tokens (the scheduler's token budget less
    one token per running sequence); the m = ceil(tokens_q / (budget - S)) - 1 further periods
    are the wait of the prompts beyond it."""
    w = scenario.workload
    s = planned_seqs(c)
    budget = scheduler(c, limits=limits, scenario=scenario).token_budget
    if limits is None and s * w.prompt_len > w.output_len * max(1, budget - s):
        return prefill_bound(cost, scenario, s, budget)
    n = s * steps / w.output_len
    ctx = w.prompt_len + w.output_len / 2
    mixed = max(cost.mixed_time_s(max(1, round(n * w.prompt_len)), max(1, round(n)), s, ctx), decode_s)
    # NOTE: a mixed iteration carries the whole decode batch too (max with the decode step)
    period = mixed + (steps - 1) * decode_s
    tpot = period / steps
    q = scenario.slo.percentile / 100.0
    tokens_q = prompt_tokens_quantile(n, w.prompt_len, q, length_cv2(w))
    room = max(1, budget - s)  # prompt tokens one mixed iteration takes
    first = min(tokens_q, room)
    if round(first) > max(1, round(n * w.prompt_len)):
        mixed_q = max(cost.mixed_time_s(round(first), max(1, round(first / w.prompt_len)), s, ctx), decode_s)
    else:
        mixed_q = mixed
    period_q = mixed_q + (steps - 1) * decode_s
    spill = max(0, math.ceil(tokens_q / room - 1e-9) - 1)  # periods the last prompts wait beyond the budget
    ttft = (q + spill) * period_q + mixed_q
    return ColocatedEstimate(steps, mixed, period, tpot, ttft, s / tpot)


def prefill_bound(cost, scenario, seqs: int, budget: int) -> ColocatedEstimate:
    """The steady state of a replica whose prompts do not fit its token budget: S P > L (B - S),
    so even a prompt admitted in every iteration (K = 1) cannot replace the S sequences as
    fast as they finish. A chunked-prefill scheduler (vLLM V1, SGLang) then fills every
    iteration to its budget B with the running decodes first and prompt chunks after, and the
    sequences that decode settle where the prompt tokens admitted per iteration replace those
    that finish: B - d = P d / L, so

        d    = min(S, B L / (P + L))          sequences decoding
        T    = T_mix(B - d prompt tokens, d, C)  every iteration (chunks of P-token prompts)
        TPOT = T,   out tokens/s = d / T,   TTFT_q = (q + max(1, P / (B - d))) T

    (a prompt waits for the running iteration, then runs its own chunks). Continuous with the
    closed form where S P = L (B - S) (d = S). The rest of the S sequences the KV cache could
    hold stay queued: under this budget more memory does not raise the rate."""
    w = scenario.workload
    P, L = w.prompt_len, w.output_len
    d = max(1.0, min(float(seqs), budget * L / (P + L)))
    chunk = max(1.0, budget - d)
    ctx = P + L / 2
    t = max(cost.mixed_time_s(chunk, max(1, round(chunk / P)), d, ctx), cost.decode_time_s(d, ctx))
    q = scenario.slo.percentile / 100.0
    return ColocatedEstimate(1, t, t, t, (q + max(1.0, P / chunk)) * t, d / t, prefill_bound=True)


def max_steps(c, scenario) -> int:
    """Largest K whose period's prompts fit one iteration's token budget: n P + S <= budget."""
    w, s = scenario.workload, planned_seqs(c)
    room = scheduler(c, scenario=scenario).token_budget - s
    return int(max(1, min(MAX_DECODE_STEPS_PER_PREFILL, room * w.output_len // max(1, s * w.prompt_len))))


def _smallest_meeting_tpot(cost, c, scenario, decode_s: float, limit: float, k_max: int) -> ColocatedEstimate:
    """Smallest K meeting the TPOT ``limit`` (k_max's estimate when none does). Fixed point on
    K = ceil((T_mix - t_d) / (limit - t_d)), T_mix nearly flat in K."""
    est = estimate(cost, c, scenario, decode_s, 1)
    if est.tpot_s <= limit:
        return est
    if limit <= decode_s:
        return estimate(cost, c, scenario, decode_s, k_max)
    k = 1
    for _ in range(12):
        want = math.ceil((est.mixed_s - decode_s) / (limit - decode_s) - 1e-12)
        k = min(k_max, max(k + 1, want))
        est = estimate(cost, c, scenario, decode_s, k)
        if est.tpot_s <= limit or k == k_max:
            break
    return est


def _largest_meeting_ttft(cost, c, scenario, decode_s: float, limit: float, lo: int, k_max: int) -> int:
    """Largest K in [lo, k_max] whose TTFT meets ``limit`` (``lo`` - 1 when none does): bisection,
    TTFT grows with K (the period does: T_mix never falls with more prompt tokens, t_d > 0)."""
    if estimate(cost, c, scenario, decode_s, lo).ttft_s > limit:
        return lo - 1
    good = lo
    if estimate(cost, c, scenario, decode_s, k_max).ttft_s <= limit:
        return k_max
    bad = k_max
    while bad - good > 1:
        mid = (good + bad) // 2
        if estimate(cost, c, scenario, decode_s, mid).ttft_s <= limit:
            good = mid
        else:
            bad = mid
    return good


def _segment_ends(cost, c, scenario, lo: int, hi: int) -> set[int]:
    """The K in [lo, hi] where the mixed iteration's prefill tokens n P + S (n = S K / L) cross a
    node of the cost's geometric prefill grid, and their neighbours: between two such K, T_mix is
    affine in K (``GridCost``: piecewise linear in tokens) so TPOT = t_d + (T_mix - t_d) / K is
    monotone there, and its minimum over [lo, hi] is at one of these K, ``lo`` or ``hi``."""
    w, s = scenario.workload, planned_seqs(c)
    per_k = s * w.prompt_len / w.output_len  # prompt tokens one more decode step adds to the period
    out = {lo, hi}
    ppo = getattr(cost, "points_per_octave", 1)
    tokens = lo * per_k + s
    node = grid_bracket_hi(tokens, ppo)
    while per_k > 0 and node <= hi * per_k + s:
        k = (node - s) / per_k
        out.update(x for x in (math.floor(k), math.floor(k) + 1, math.ceil(k) - 1) if lo <= x <= hi)
        node = grid_bracket_hi(node + 1, ppo)
    return out


def grid_bracket_hi(x: float, per_octave: int) -> int:
    """The smallest node of the geometric grid round(2^(i / per_octave)) at or above ``x``."""
    from moesim.des.serving.cost import grid_bracket

    return grid_bracket(max(1.0, x), per_octave)[1]


def choose(cost, c, scenario, decode_s: float, limits: EngineLimits | None = None) -> ColocatedEstimate:
    """The prefill interval K that maximises the replica's output tokens/s (S / TPOT: the
    smallest TPOT) among the K in [1, k_max] meeting the TPOT and TTFT limits; ties go to the
    smaller K (smaller TTFT). TPOT falls with K where the mixed iteration's fixed cost
    dominates, so the feasible K form [K_tpot, K_ttft] (smallest meeting TPOT, largest meeting
    TTFT); over it TPOT is monotone between the prefill grid's segment ends
    (``_segment_ends``), which are all that is priced. When no K meets both: the smallest K
    meeting TPOT (its TTFT is the smallest of those), or k_max's estimate when none meets TPOT.
    Under TensorRT-LLM's ``limits`` K is the engine's: no prompt is held back, so a rank admits
    a waiting request as soon as one finishes, S_rank / L per iteration: one prompt per mixed
    iteration every K = L / S_rank iterations when fewer than one finishes per iteration (rounded;
    the ranks' admissions taken together, as TensorRT-LLM's attention-DP balancing schedules
    them), else K = 1 with S_rank / L prompts in every iteration."""
    if limits is not None:
        per_rank = max(1, planned_seqs(c) // attention_ranks(c))
        return estimate(cost, c, scenario, decode_s, max(1, round(scenario.workload.output_len / per_rank)), limits)
    slo, k_max = scenario.slo, max_steps(c, scenario)
    first = _smallest_meeting_tpot(cost, c, scenario, decode_s, slo.tpot_s, k_max) if slo.tpot_s is not None \
        else estimate(cost, c, scenario, decode_s, 1)
    if slo.tpot_s is not None and first.tpot_s > slo.tpot_s:
        return first
    lo = first.steps
    hi = k_max if slo.ttft_s is None else _largest_meeting_ttft(cost, c, scenario, decode_s, slo.ttft_s, lo, k_max)
    if hi < lo:
        return first
    best = first
    for k in sorted(_segment_ends(cost, c, scenario, lo, hi)):
        est = first if k == lo else estimate(cost, c, scenario, decode_s, k)
        if slo.tpot_s is not None and est.tpot_s > slo.tpot_s:
            continue
        if slo.ttft_s is not None and est.ttft_s > slo.ttft_s:
            continue
        if est.tpot_s < best.tpot_s * (1.0 - 1e-12):
            best = est
    return best
