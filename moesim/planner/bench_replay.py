"""Replay of a finite maximum-load benchmark: N uniform requests queued at t = 0 on one replica,
run iteration by iteration under TensorRT-LLM's scheduler as moesim models it.

What ``trtllm-bench throughput`` measures (TensorRT-LLM docs/source/developer-guide/perf-overview.md
at 03e27c7d: "run an offline maximum throughput scenario such that all requests are queued in
rapid succession"; a synthetic dataset of ``$num_requests`` requests of fixed ISL / OSL,
``--input-stdev=0 --output-stdev=0``): total output tokens (the first and every later one) over
the total latency, "last request end - 1st request start" (tensorrt_llm/bench/dataclasses/
reporting.py ``generate_statistics_summary``: ``total_latency_ns = end_time - start_time``), per
GPU (``/ world_size``). So the ramp (prompts admitted under ``max_num_tokens`` while the batch
grows), the waves of uniform requests that finish together and the drain at a shrinking batch
all count; a steady-state closed form (moesim/planner/serving_policy.py ``estimate``) sees none.

The scheduler, per attention-DP rank (moesim/planner/trtllm_engine.py for the sources):

- capacity (GUARANTEED_NO_EVICT): a request is admitted only with KV blocks for its whole
  P + L tokens, so at most ``kv_seqs`` requests are in flight, and at most ``max_batch_size``;
- micro-batch: each generation request takes 1 token of ``max_num_tokens`` and a context request
  its whole prompt (no chunking), so an iteration admits n new prompts with gen + n P <=
  max_num_tokens; FIFO (the dataset's order);
- a context iteration produces the request's first output token; the L - 1 later tokens come
  from L - 1 generation iterations; a request that finishes frees its slot for the next iteration.

Attention DP: the ``ranks`` ranks each hold ceil(N / ranks) requests (the busiest rank sets the
end; requests spread evenly, as the attention-DP balancer places them) and iterate in lock step
(every rank joins the same all-to-alls), so every iteration is priced once for the replica at R
times one rank's counts: ``cost.mixed_time_s(R n P, R n, R gen, context)`` with a prompt,
``cost.decode_time_s(R gen, context)`` without (the planner's GridCost:
serving_policy.replica_cost, so the same iteration prices as the steady-state closed form).

CUDA-graph padding (``graph_batches``, the PyTorch backend only): a generation-only iteration
replays the captured graph of the smallest listed batch that holds its requests
(``cuda_graph_config: enable_padding: true, batch_sizes: [1, 2, 4, ..., 256, 384, 512, 1024, 2048,
4096, 8192]`` in the perf-overview's llm_options; tensorrt_llm/_torch/pyexecutor/
cuda_graph_runner.py pads the batch with dummy generation requests up to that size), of the sizes
the executor keeps (``executor_graph_batches``: none above min(max_batch_size, max_num_tokens), the
first larger one replaced by that bound). The padded
rows run every GEMM, the MoE and the LM head; a dummy request holds one token of KV, so the
attention reads stay those of the real requests: a rank of g real requests at mean context c
prices as ``cost.decode_time_s(R G, 1 + (c - 1) g / G)`` with G the padded size (the GridCost
decode node is affine in context with a slope proportional to the KV tokens read). Iterations
that carry a prompt run eagerly at their own size (no graph: ``can_run_cuda_graph`` is ``not
context_requests``). A batch above the largest listed size runs eagerly, unpadded.

Speed: requests admitted in one iteration form a cohort (uniform lengths: they finish together).
Between two events (an admission, a completion) the iterations are decode-only at a constant
batch whose mean context grows by one token per iteration, and a GridCost decode iteration is
affine in context at a fixed batch (moesim/des/serving/cost.py), so such a stretch of k
iterations costs k t(b, c) + s k (k - 1) / 2 exactly, s = t(b, c + 1) - t(b, c). The loop runs
at most two steps per cohort.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

from moesim.errors import SpecError


@dataclass(frozen=True)
class ReplayResult:
    """One replayed benchmark run (seconds, tokens; batches are the replica's sequences).

    ``output_tokens_per_s``: total output tokens / total time for the replica;
    ``output_tokens_per_s_per_device``: that over ``devices`` (trtllm-bench's per-GPU figure).
    ``mean_batch``: sequences in flight per iteration (context and generation), averaged over
    iterations; ``peak_batch`` its largest value. Phases: ``ramp_s`` from t = 0 to the first
    completion or the iteration that empties the queue, whichever is first; ``drain_s`` from
    the iteration after the last admission to the end; ``steady_s`` between (0 when the queue
    empties before any request finishes)."""

    num_requests: int
    prompt_len: int
    output_len: int
    ranks: int
    devices: int
    total_time_s: float
    output_tokens: int
    output_tokens_per_s: float
    output_tokens_per_s_per_device: float
    iterations: int
    mean_batch: float
    peak_batch: int
    ramp_s: float
    steady_s: float
    drain_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check(name: str, value, lowest: int) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != int(value) or value < lowest:
        raise SpecError(name, value, f"an integer >= {lowest}")
    return int(value)


def padded_batch(batch: int, graph_batches: tuple[int, ...] = ()) -> int:
    """The CUDA-graph batch a generation-only iteration of ``batch`` requests per rank replays:
    the smallest of ``graph_batches`` >= ``batch``; ``batch`` itself when none is (eager) or the
    list is empty (no padding)."""
    fits = [g for g in graph_batches if g >= batch]
    return min(fits) if fits else batch


def executor_graph_batches(graph_batches: tuple[int, ...], max_batch_size: int,
                           max_num_tokens: int) -> tuple[int, ...]:
    """The CUDA-graph batches the executor actually captures from a configured list: TensorRT-LLM
    tensorrt_llm/_torch/pyexecutor/model_engine.py ``_filter_cuda_graph_batch_sizes`` keeps the
    sizes up to the largest pure-decode batch, min(max_batch_size, max_num_tokens) (one token per
    request without draft tokens), and, with padding enabled (the perf-overview's llm_options),
    replaces the first larger size by that bound: a rank of 515 requests under max_batch_size 640
    pads to 640, not to the list's 1024."""
    bound = min(max_batch_size, max_num_tokens)
    kept = tuple(g for g in sorted(graph_batches) if g <= bound)
    if bound >= 1 and any(g > bound for g in graph_batches) and (not kept or kept[-1] != bound):
        kept += (bound,)
    return kept


def _decode_s(cost, ranks: int, gen: int, ctx: float, graph_batches: tuple[int, ...]) -> float:
    """One generation-only iteration of ``gen`` requests per rank at mean context ``ctx``, padded
    to its CUDA graph (module docstring: the attention reads stay the real requests')."""
    g = padded_batch(gen, graph_batches)
    return cost.decode_time_s(ranks * g, 1.0 + (ctx - 1.0) * gen / g)


def replay(cost, *, num_requests: int, prompt_len: int, output_len: int, max_batch_size: int,
           max_num_tokens: int, kv_seqs: int, ranks: int = 1, devices: int | None = None,
           graph_batches: tuple[int, ...] = ()) -> ReplayResult:
    """Replay ``num_requests`` requests of ``prompt_len`` / ``output_len`` tokens queued at t = 0
    on one replica of ``ranks`` attention-DP ranks (each with ``max_batch_size``,
    ``max_num_tokens`` and KV for ``kv_seqs`` whole requests), every iteration priced by
    ``cost`` (a ReplicaCost: ``mixed_time_s`` / ``decode_time_s`` at replica totals). See the
    module docstring. Errors name the field: counts below 1, a prompt longer than the token
    budget (no iteration could ever take it whole: chunking is off). ``graph_batches``: the
    per-rank CUDA-graph batch sizes generation-only iterations are padded to (module docstring;
    empty: no padding)."""
    n_total = _check("num_requests", num_requests, 1)
    p = _check("prompt_len", prompt_len, 1)
    out_len = _check("output_len", output_len, 1)
    r = _check("ranks", ranks, 1)
    limit = min(_check("max_batch_size", max_batch_size, 1), _check("kv_seqs", kv_seqs, 1))
    budget = _check("max_num_tokens", max_num_tokens, 1)
    if budget < p:
        raise SpecError("max_num_tokens", max_num_tokens,
                        f">= prompt_len {p} (without chunked prefill a prompt runs whole in one iteration)")
    dev = r if devices is None else _check("devices", devices, 1)

    waiting = math.ceil(n_total / r)  # the busiest rank's requests
    cohorts: deque = deque()  # (admission iteration, requests), FIFO = completion order
    active = admit_sum = 0  # requests in flight per rank; sum of their admission iterations
    it, t = 0, 0.0
    batch_iters = 0  # sum over iterations of the sequences in flight (per rank)
    peak = 0
    ramp_end = None  # time at the first completion or when the queue empties
    last_admit_end = 0.0
    while True:
        while cohorts and cohorts[0][0] + out_len <= it:  # finished at iteration it - 1
            a, k = cohorts.popleft()
            active -= k
            admit_sum -= a * k
            if ramp_end is None:
                ramp_end = t
        gen = active  # every request in flight was admitted before ``it``: it generates now
        ctx = p + it - admit_sum / gen if gen else float(p)  # mean KV tokens a generation request reads
        new = min(waiting, limit - active, (budget - gen) // p) if waiting else 0
        if new > 0:
            dt = cost.mixed_time_s(r * new * p, r * new, r * gen, ctx)
            cohorts.append((it, new))
            active += new
            admit_sum += it * new
            waiting -= new
            peak = max(peak, active)
            batch_iters += active
            it += 1
            t += dt
            last_admit_end = t
            if waiting == 0 and ramp_end is None:
                ramp_end = t
            continue
        if gen == 0:
            break
        # decode-only until the oldest cohort finishes: nothing can be admitted before a slot frees
        steps = cohorts[0][0] + out_len - it
        t0 = _decode_s(cost, r, gen, ctx, graph_batches)
        slope = _decode_s(cost, r, gen, ctx + 1.0, graph_batches) - t0
        t += steps * t0 + slope * steps * (steps - 1) / 2.0
        batch_iters += gen * steps
        it += steps
    ramp = t if ramp_end is None else ramp_end
    drain = t - last_admit_end
    steady = max(0.0, t - ramp - drain)
    tokens = n_total * out_len
    return ReplayResult(
        num_requests=n_total, prompt_len=p, output_len=out_len, ranks=r, devices=dev, total_time_s=t,
        output_tokens=tokens, output_tokens_per_s=tokens / t, output_tokens_per_s_per_device=tokens / t / dev,
        iterations=it, mean_batch=r * batch_iters / it, peak_batch=r * peak, ramp_s=ramp, steady_s=steady,
        drain_s=drain)


def trtllm_graph_batches(scenario) -> tuple[int, ...]:
    """The CUDA-graph batch sizes a replay pads generation iterations to: under the PyTorch
    backend stack ``trtllm``, the run's stated ``engine.cuda_graph_batch_sizes``, else the
    perf-overview's llm_options list (moesim/planner/trtllm_engine.py ``TRTLLM_GRAPH_BATCHES``);
    none under ``trtllm-engine`` (TensorRT engines, whose C++ runtime the v0.17 page runs without
    that option) or any other stack."""
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES

    stack = scenario.stack
    name = stack if isinstance(stack, str) else getattr(stack, "name", "")
    if name != "trtllm":
        return ()
    stated = getattr(getattr(scenario, "engine", None), "cuda_graph_batch_sizes", None)
    return tuple(stated) if stated else TRTLLM_GRAPH_BATCHES


def replay_candidate(c, scenario, model, cache, num_requests: int) -> ReplayResult:
    """``replay`` of candidate ``c``'s replica under TensorRT-LLM's limits for ``scenario``'s
    workload (moesim/planner/trtllm_engine.py ``trtllm_limits``: max_batch_size, max_num_tokens,
    whole-request KV per rank) priced with the planner's GridCost (serving_policy.replica_cost),
    generation iterations padded to ``trtllm_graph_batches`` as the executor filters them
    (``executor_graph_batches``)."""
    from moesim.planner import serving_policy

    lim = serving_policy.trtllm_limits(c, scenario, model, cache)
    w = scenario.workload
    if lim.kv_seqs < 1:
        raise SpecError("kv_seqs", lim.kv_seqs, f">= 1: the KV cache left by the weights holds no whole "
                                                f"{w.prompt_len + w.output_len}-token request on {c.layout()}")
    return replay(serving_policy.replica_cost(c, scenario, model, cache), num_requests=num_requests,
                  prompt_len=w.prompt_len, output_len=w.output_len, max_batch_size=lim.admitted_seqs,
                  max_num_tokens=lim.max_num_tokens, kv_seqs=lim.kv_seqs,
                  ranks=serving_policy.attention_ranks(c), devices=c.devices,
                  graph_batches=executor_graph_batches(trtllm_graph_batches(scenario),
                                                       lim.max_batch_size, lim.max_num_tokens))
