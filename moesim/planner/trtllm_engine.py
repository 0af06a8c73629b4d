"""TensorRT-LLM's co-located scheduler limits as ``trtllm-bench throughput`` sets them.

The planner's ``trtllm`` scheduler (moesim/planner/serving_policy.py) holds a replica to what
TensorRT-LLM's PyTorch backend runs in its benchmark (every constant names its source file in
NVIDIA/TensorRT-LLM; nothing is fitted):

- ``max_batch_size`` / ``max_num_tokens``: not given by the perf-overview commands, so
  trtllm-bench sets them from its own KV estimate (``trtllm_bench_settings``,
  ``_heuristic_requests``) for the quantizations it tunes, and to the ``BuildConfig`` defaults
  for every other one (``untuned_checkpoint``: GPT-OSS's MXFP4 experts);
- weights in memory: a checkpoint that stores its experts in another format than the rest
  (``ModelSpec.expert_weight_dtype``: GPT-OSS's released MXFP4 experts, BF16 elsewhere) is
  loaded as stored (moesim/compute/memory.py counts it so in serve mode);
- KV cache: ``kv_cache_free_gpu_mem_fraction`` of the memory the weights leave (the stack's
  ``kv_free_fraction``, moesim/data/stacks.toml: the perf-overview's 0.95; the analytic budget and
  the DES replica size their caches with the same share, serving_policy.kv_free_fraction), and the default
  capacity policy GUARANTEED_NO_EVICT reserves blocks for a request to complete
  (_torch/pyexecutor/scheduler.py: "Reserve blocks for requests to complete without eviction");
- the micro-batch scheduler (same file, ``PyMicroBatchScheduler.schedule``) charges each
  generation request ``beam_width`` tokens of ``max_num_tokens`` and, without chunking, a
  context request its whole remaining prompt.
NOTE: the same file's ``ScheduledRequests.can_run_cuda_graph`` is ``not context_requests``: an
iteration that carries a prompt is not replayed from a CUDA graph. That is a host-time matter of
the software stack (moesim/step/host.py), not a scheduler limit, and is not priced here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moesim.planner.costs import PlanCache

TRTLLM_MAX_BATCH_CAP = 4096  # bench/build/tuning.py finetune_setting: min(kv_cache_max_requests, 4096) / pp
TRTLLM_MAX_TOKENS_CAP = 32768  # same: min(raw_bs x (1 + ISL / OSL), 32768)
TRTLLM_MIN_TOKENS = 2048  # same: "Set min to 2048 to ensure Ctx/Gen overlap efficiency"
TRTLLM_MIN_BATCH = 64  # same: "Set min BS to be 64"
# tensorrt_llm/builder.py ``BuildConfig``: max_batch_size = 2048, max_num_tokens = 8192, what
# bench/build/build.py ``get_benchmark_engine_settings`` returns for a quant_algo outside
# TUNED_QUANTS = {NVFP4, FP8, FP8_BLOCK_SCALES, NO_QUANT, None} ("Using default settings because
# quant_algo not supported").
# perf-overview.md llm_options of every model (03e27c7d and the v1.0 revision 00f37686):
# cuda_graph_config: enable_padding: true, batch_sizes: [1, 2, 4, ..., 8192] (per rank)
TRTLLM_GRAPH_BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096, 8192)
TRTLLM_DEFAULT_MAX_BATCH = 2048
TRTLLM_DEFAULT_MAX_TOKENS = 8192


@dataclass(frozen=True)
class EngineLimits:
    """What one attention-DP rank's scheduler sustains (tokens and sequences per rank).

    ``max_batch_size`` / ``max_num_tokens``: the engine settings; ``kv_seqs``: whole requests
    (P + L tokens each) its KV cache holds; ``concurrency_seqs``: the rank's share of a stated
    client concurrency (None: no cap); ``max_seqs``: the steady-state sequences in flight, the
    smallest of the bounds, ``bound`` naming it."""

    max_batch_size: int
    max_num_tokens: int
    kv_seqs: int
    max_seqs: int
    bound: str
    concurrency_seqs: int | None = None

    @property
    def admitted_seqs(self) -> int:
        """The most requests one rank holds at once: max_batch_size and the concurrency share
        (the KV bound is the replay's own, per request)."""
        cap = self.concurrency_seqs
        return self.max_batch_size if cap is None else min(self.max_batch_size, cap)

    def to_dict(self) -> dict:
        return asdict(self)


def trtllm_bench_settings(kv_max_requests: float, isl: int, osl: int, pp: int = 1) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) that ``trtllm-bench throughput`` sets when the user gives
    neither: TensorRT-LLM tensorrt_llm/bench/build/tuning.py ``finetune_setting`` (optimistic
    tuning), then bench/benchmark/utils/general.py ``get_settings``: without chunked prefill (the
    default, ``enable_chunked_prefill`` False) ``max_num_tokens`` >= ISL + ``max_batch_size``.
    raw_bs = min(requests, 4096) / pp; raw_tokens = min(raw_bs (1 + ISL / OSL), 32768); the
    batch rounds up to 32 (below 256, at least 64), 128 (below 1024) or 256; the tokens to 256
    (below 4096, at least 2048), 512 (below 8192) or 1024."""
    raw_bs = min(kv_max_requests, TRTLLM_MAX_BATCH_CAP) / pp
    raw_token = min(raw_bs * (1 + isl / osl), TRTLLM_MAX_TOKENS_CAP)
    max_bs = _round_up(raw_bs, ((256, 32), (1024, 128)), 256, TRTLLM_MIN_BATCH)
    max_token = _round_up(raw_token, ((4096, 256), (8192, 512)), 1024, TRTLLM_MIN_TOKENS)
    return int(max_bs), int(max(max_token, isl + max_bs))


def untuned_checkpoint(model) -> bool:
    """Whether trtllm-bench has no tuning heuristic for ``model``'s checkpoint, so it runs the
    ``BuildConfig`` defaults (``TRTLLM_DEFAULT_MAX_BATCH`` / ``TRTLLM_DEFAULT_MAX_TOKENS``):
    experts stored as MXFP4 (``expert_weight_dtype``; GPT-OSS as released) load as TensorRT-LLM's
    W4A16_MXFP4 / W4A8_MXFP4_FP8 / W4A8_MXFP4_MXFP8 quant_algo (tensorrt_llm/quantization/mode.py),
    none of them in bench/build/build.py ``TUNED_QUANTS``. The ModelOpt NVFP4 / FP8 checkpoints
    of the perf-overview's FP4 / FP8 model lists are tuned."""
    return str(getattr(model, "expert_weight_dtype", None) or "").lower() == "mxfp4"


def _round_up(raw: float, tiers: tuple[tuple[int, int], ...], last_step: int, smallest: int) -> int:
    """trtllm-bench's rounding: up to the step of the first tier ``(below, step)`` that ``raw`` is
    below (``last_step`` above them all); the first tier's result is at least ``smallest``."""
    for k, (below, step) in enumerate(tiers):
        if raw < below:
            up = step * math.ceil(raw / step)
            return max(smallest, up) if k == 0 else up
    return last_step * math.ceil(raw / last_step)


# An NVFP4 ModelOpt checkpoint stores each quantized linear as uint8 pairs of FP4 values (half
# an element per parameter) plus one E4M3 scale per 16-element block (moesim/specs/common.py
# _SCALE_BYTES["nvfp4"]). Counted packed: the FFN linears (routed and shared experts, dense
# FFNs: 97-99% of an MoE model's parameters); attention is counted unpacked, as the DeepSeek
# FP4 checkpoints keep it (nvidia/DeepSeek-R1-FP4-v2 model card: "Compared to
# nvidia/DeepSeek-R1-FP4, this checkpoint additionally quantizes the wo module in attention
# layers"); router gate, norms, embedding and head stay unquantized.
NVFP4_STORED_ELEMENTS_PER_PARAM = 0.5 + 1 / 16


def checkpoint_param_count(model, dtype: str) -> float:
    """The parameter count trtllm-bench reads for ``model``'s checkpoint at ``dtype``:
    ``ModelConfig.get_param_count`` sums the safetensors metadata's ``parameter_count`` (stored
    elements per dtype, bench/build/dataclasses.py), which for an NVFP4 checkpoint counts each
    packed FFN linear at ``NVFP4_STORED_ELEMENTS_PER_PARAM``; FP8 / BF16 weights are one
    element per parameter (their per-block scales are below 0.1% and left out)."""
    from moesim.compute.counts import param_counts

    pc = param_counts(model)
    if dtype != "fp4":
        return float(pc.total)
    linears = pc.dense_ffn + pc.routed_experts + pc.shared_experts
    return pc.total - linears * (1.0 - NVFP4_STORED_ELEMENTS_PER_PARAM)


def _heuristic_requests(model, dep, devices: int, isl: int, osl: int, kv_fraction: float) -> float:
    """trtllm-bench's estimate of the requests the KV cache holds (bench/build/tuning.py
    ``calc_engine_setting``), from the quantities it reads off the Hugging Face config: engine
    size = the checkpoint's stored parameter count (``checkpoint_param_count``) x bytes per
    element (NVFP4 0.5, FP8 1, else 2), over ``devices`` GPUs of HBM; KV bytes per token = 2 x
    layers x max(tp, KV heads) x head size x KV bytes (KV heads and head size as the config
    states them: an MLA config states 128 heads of hidden / heads); ``kv_fraction``: the run's
    kv_cache_free_gpu_mem_fraction (trtllm-bench passes it to calc_engine_setting)."""
    att, hw = model.attention, dep.hardware
    per_elem = {"fp4": 0.5, "fp8": 1.0}
    engine_bytes = checkpoint_param_count(model, dep.dtype) * per_elem.get(dep.dtype, 2.0)
    heads = getattr(att, "num_kv_heads", None) or att.num_heads
    head = getattr(att, "head_dim", None) or model.hidden // att.num_heads
    kv_token = 2 * model.num_layers * max(devices // dep.pp, heads) * head * per_elem.get(dep.kv_dtype, 2.0)
    cache = (hw.hbm_bytes * devices - engine_bytes) * kv_fraction
    return max(0.0, cache / (kv_token * (isl + osl)))


def trtllm_limits(c, scenario, model, cache: PlanCache) -> EngineLimits:
    """TensorRT-LLM's scheduler limits per attention-DP rank for candidate ``c`` under
    ``trtllm-bench throughput`` (sources: TensorRT-LLM docs/source/developer-guide/perf-overview.md,
    tensorrt_llm/bench/build/tuning.py, bench/benchmark/utils/general.py,
    _torch/pyexecutor/scheduler.py):

    - settings: ``trtllm_bench_settings`` of the benchmark's own KV estimate
      (``_heuristic_requests``; ``--tp`` = the replica's devices / pp, as the perf-overview
      commands pass them, DEP runs included), or the ``BuildConfig`` defaults for an untuned
      checkpoint (``untuned_checkpoint``), max_num_tokens at least ISL + max_batch_size (no
      chunked prefill). With attention DP every rank runs its own scheduler with these settings;
    - KV cache: ``kv_cache_free_gpu_mem_fraction`` of the memory the weights leave (as the
      checkpoint stores them, moesim/compute/memory.py; ``serving_policy.kv_free_fraction``: the
      stated setting, else the stack's 0.95; the runtime's own buffers are not modelled), and the
      default capacity policy GUARANTEED_NO_EVICT reserves blocks for a request to complete, so
      a rank holds kv_seqs = KV tokens / (P + L) whole requests;
    - token budget: a generation request takes one token of ``max_num_tokens`` per iteration and
      a context request its whole prompt (no chunking), so at steady state n P + S <=
      max_num_tokens with n = S / L prompts per iteration: S <= max_num_tokens L / (P + L);
    - max_seqs = min(max_batch_size, kv_seqs, that, the concurrency share).

    The run's stated settings (``scenario.engine``: ``EngineSettings``) replace the benchmark's
    own: ``max_batch_size`` and ``max_num_tokens`` each replace their heuristic value (taken as
    given, as trtllm-bench takes user-provided ones: no ISL + max_batch_size floor),
    ``kv_cache_free_gpu_mem_fraction`` the stack's share in both the KV cache and the heuristic, and
    ``concurrency`` (requests the client keeps in flight over the replica) caps a rank at
    ceil(concurrency / ranks), the busiest rank's share."""
    from moesim.compute.memory import memory_footprint
    from moesim.planner.serving_policy import attention_ranks, kv_free_fraction

    w = scenario.workload
    dep = cache.deployment(c, scenario, model)
    eng = getattr(scenario, "engine", None)
    stated = eng.model_dump() if eng is not None else {}
    frac = kv_free_fraction(scenario)

    def make() -> EngineLimits:
        fp = memory_footprint(model, dep.hardware, dep.parallelism, mode="serve", weight_dtype=dep.dtype,
                              kv_dtype=dep.kv_dtype, kv_tokens=0)
        free = max(0.0, fp.capacity_bytes - fp.weight_bytes)
        kv_tokens = frac * free / fp.kv_bytes_per_token if fp.kv_bytes_per_token else 0.0
        kv_seqs = int(kv_tokens // (w.prompt_len + w.output_len))
        if untuned_checkpoint(model):
            max_bs = TRTLLM_DEFAULT_MAX_BATCH
            max_tok = max(TRTLLM_DEFAULT_MAX_TOKENS, w.prompt_len + max_bs)  # general.py get_settings
        else:
            max_bs, max_tok = trtllm_bench_settings(
                _heuristic_requests(model, dep, c.devices, w.prompt_len, w.output_len, frac), w.prompt_len,
                w.output_len, c.pp)
        max_bs = stated.get("max_batch_size") or max_bs
        max_tok = stated.get("max_num_tokens") or max_tok
        token_seqs = int(max_tok * w.output_len // (w.prompt_len + w.output_len))
        bounds = {"max_batch_size": max_bs, "kv_cache": kv_seqs, "max_num_tokens": token_seqs}
        conc = stated.get("concurrency")
        share = None if conc is None else -(-int(conc) // attention_ranks(c))
        if share is not None:
            bounds["concurrency"] = share
        bound = min(bounds, key=bounds.__getitem__)
        return EngineLimits(max_bs, max_tok, kv_seqs, bounds[bound], bound, share)

    key = cache.key(model, dep, "trtllm_limits", w.prompt_len, w.output_len, frac, tuple(sorted(stated.items())))
    return cache.get(key, make)
