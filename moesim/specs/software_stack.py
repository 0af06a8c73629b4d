"""Software stack: how the host issues a run's operators, per phase (a property of the run).

A ``SoftwareStack`` says, for each phase (``train``, ``prefill``, ``decode``), how the host
(CPU) gets one layer's operators onto the device (moesim/step/host.py prices it):

- ``captured``: which of the layer's operators are replayed from CUDA graphs (or a compiled
  XLA program): ``none`` (eager: the host issues every operator), ``pre`` (the operators before
  the expert path's token counts, P: attention, router, permutation metadata; the experts run
  eagerly: Megatron's ``cuda_graph_scope = [attn, moe_router, moe_preprocess]``), ``all``;
- ``host_op_us``: host microseconds per operator issued eagerly (Python, autograd,
  dispatcher, launch), per reference aten operator of validation/data/op-counts.json;
  ``"<stack>.<phase>"`` instead of a number takes that entry's value (the same framework
  issuing the operators it does not capture);
- ``graph_launch_us``: host microseconds per graph launch (``cudaGraphLaunch``), and
  ``graphs``: one graph per captured part of each ``layer`` (piecewise / scoped graphs), or one
  per ``step`` (a whole forward captured at once);
- ``device_fraction``: the achievable fraction, in (0, 1], of the kernel models' device
  throughput in this stack's full step (sustained clocks under the power limit, kernels and gaps
  the layer model does not list, allocator/cache effects; the kernel models are calibrated on
  isolated microbenchmarks). Every compute operation of the step (attention, GEMMs, experts,
  elementwise, the LM head/embedding, the optimizer) takes time / fraction; communication
  (all-to-all, collectives) does not (validated on its own), nor does the KV-cache stream of
  decode attention, which runs at the profile's measured decode-attention bandwidth fraction
  (moesim/compute/attention.py ``core_s_per_token_key``: only its compute-bound branch). Prior 1.0; ``"<stack>.<phase>"``
  takes that entry's value (the same kernels); ``pool_fraction`` marks a serving engine with no
  calibration source of its own, whose fraction is the median of the other stacks' identified
  serving fits (the full-step loss is common to the engines: each fitted one lands at 0.28-0.69);
- ``expert_fraction``: the achievable fraction, in (0, 1], of the grouped-GEMM kernel model
  (moesim/compute/grouped.py, calibrated on DeepGEMM's single grouped kernel) that this stack's
  routed-expert GEMMs reach, on top of ``device_fraction``: the experts' time is the kernel
  model's / (device_fraction x expert_fraction). Transformer Engine's grouped linear, which
  Megatron-Core runs for its experts (``--moe-grouped-gemm``), issues one cuBLAS GEMM per local
  expert, round-robin over 4 CUDA streams (TransformerEngine transformer_engine/common/gemm/
  cublaslt_gemm.cu ``multi_stream_cublas_gemm``: "For now, we only have multi-stream cublas
  backend"; common/util/multi_stream.cpp ``num_compute_streams = 4``), each expert GEMM with its own
  wave quantization and quantization kernels, not one grouped kernel. Prior 1.0 (a single grouped
  kernel, as the serving engines' fused MoE and DeepGEMM run); ``fit_expert`` marks a fitted one;
  ``"<stack>.<phase>"`` takes that entry's value;
- ``host_seq_us``: host microseconds per running sequence per iteration, outside the model's
  operators: the serving executor's per-request Python work (scheduling, sampling bookkeeping,
  response handling: TensorRT-LLM's PyTorch-backend ``PyExecutor`` loop), and ``loop``: how that
  host time meets the device's, ``overlapped`` (the host prepares iteration n+1 and handles
  iteration n-1's results while the device runs iteration n: iteration = max(host, device)) or
  ``synchronous`` (iteration = host + device). Prior 0 (a C++ runtime, or a loop this model does
  not price); ``"<stack>.<phase>"`` takes that entry's value (moesim/step/host.py ``loop_time_s``);
- ``fp8_kv_core``: the attention kinds whose core attention this phase computes in FP8 when the
  KV cache is FP8 (the query quantized to FP8 too), on hardware with a native FP4 tensor-core
  path (Blackwell; moesim/step/setup.py ``LayerSetup.core_dtype``): ``"mla"`` for TensorRT-LLM's
  generation kernels (its DeepSeek-R1 throughput blog: "In the generation phase, both Q and KV
  are quantized to FP8, and FP8 Multi-Query Attention (MQA) is used"); ``"none"`` (the default)
  keeps the core at the projections' precision, as FlashAttention/FlashMLA run an FP8 cache;
- ``fp8_kv_context``: this phase's context (prompt) attention runs as FP8 FMHA under an FP8 KV
  cache on hardware with FP8 tensor cores, for MLA always and for other attention kinds when the
  attention projections are quantized (their output is written in FP8 / FP4). TensorRT-LLM's
  attention op (cpp/tensorrt_llm/thop/attentionOp.cpp): ``mFP8ContextMLA = (sm == 90 || sm == 100
  || sm == 103 || sm == 120) && hasFp8KvCache()`` and ``mFP8ContextFMHA = is_fp8_out || is_fp4_out
  || (hasFp8KvCache() && use_paged_context_fmha)``; its PyTorch backend asks for an FP8 / NVFP4
  attention output whenever the checkpoint is quantized and the cache is FP8
  (tensorrt_llm/_torch/attention_backend/trtllm.py ``TrtllmAttention.forward``). False (the
  default): the context core at the projections' precision rule (bf16 on GPUs).

The named stacks and their numbers live in one table, moesim/data/stacks.toml (loaded by
moesim/step/stacks.py); a ``SoftwareStack`` object on a ``Deployment`` carries explicit values
(what the fits in moesim/calibrate.py try), so every cache keyed by the deployment's content
sees them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.errors import SpecError
from moesim.specs.common import Spec

Capture = Literal["none", "pre", "all"]
Loop = Literal["overlapped", "synchronous"]
StackName = Literal["auto", "eager", "cuda_graphs", "xla", "megatron", "megatron-cudagraph", "sglang", "sglang-rocm",
                    "vllm", "vllm-rocm", "vllm-v0", "trtllm", "trtllm-engine", "maxtext"]
STACK_NAMES: tuple[str, ...] = ("auto", "eager", "cuda_graphs", "xla", "megatron", "megatron-cudagraph", "sglang",
                                "sglang-rocm", "vllm", "vllm-rocm", "vllm-v0", "trtllm", "trtllm-engine", "maxtext")
# the stacks that run TensorRT-LLM (its scheduler and trtllm-bench limits: moesim/planner/serving_policy.py)
TRTLLM_STACKS: tuple[str, ...] = ("trtllm", "trtllm-engine")
# The hardware vendors (HardwareProfile.vendor) each named stack runs on; a Deployment that puts a
# stack on other hardware is refused naming the stack (moesim/specs/deployment.py). ``auto`` is the
# production default of each phase and runs anywhere (moesim/step/stacks.py AUTO). Sources:
# - eager, cuda_graphs: PyTorch's CUDA and ROCm builds (ROCm runs torch.cuda graphs as HIP graphs:
#   pytorch.org docs "HIP (ROCm) semantics"); eager also on the CPU build (moesim's own CPU validation);
# - xla: XLA's backends, GPU (CUDA, ROCm), TPU and CPU (openxla.org/xla, "XLA architecture");
# - maxtext: MaxText "runs on TPUs and GPUs" (AI-Hypercomputer/maxtext README);
# - megatron, megatron-cudagraph: Megatron-Core with Transformer Engine on NVIDIA GPUs, and AMD's ROCm
#   port (github.com/ROCm/Megatron-LM, Transformer Engine's ROCm build);
# - sglang, vllm: the CUDA and ROCm builds of each engine (docs.sglang.io "AMD GPUs"; docs.vllm.ai
#   GPU installation, "ROCm"); their fitted numbers are CUDA measurements, their host structure is
#   the engine's on both;
# - sglang-rocm, vllm-rocm: the early-2025 ROCm builds, AMD Instinct only (their stacks.toml entries);
# - vllm-v0: the V0 engine as the CUDA releases before 0.8 ran it (its stacks.toml entry: NVIDIA);
# - trtllm, trtllm-engine: TensorRT-LLM runs on NVIDIA GPUs only (nvidia.github.io/TensorRT-LLM,
#   "Supported Hardware").
STACK_VENDORS: dict[str, tuple[str, ...]] = {
    "auto": ("nvidia", "amd", "google", "cpu"),
    "eager": ("nvidia", "amd", "cpu"),
    "cuda_graphs": ("nvidia", "amd"),
    "xla": ("nvidia", "amd", "google", "cpu"),
    "maxtext": ("nvidia", "google"),
    "megatron": ("nvidia", "amd"),
    "megatron-cudagraph": ("nvidia", "amd"),
    "sglang": ("nvidia", "amd"),
    "sglang-rocm": ("amd",),
    "vllm": ("nvidia", "amd"),
    "vllm-rocm": ("amd",),
    "vllm-v0": ("nvidia",),
    "trtllm": ("nvidia",),
    "trtllm-engine": ("nvidia",),
}


def check_stack_vendor(stack: str, vendor: str, hardware: str) -> None:
    """Refuse a named stack on hardware of a vendor it does not run on (``STACK_VENDORS``), naming
    the stacks that do run there. An explicit ``SoftwareStack`` (a user's own numbers) is not checked."""
    allowed = STACK_VENDORS.get(stack)
    if allowed is None or vendor in allowed:
        return
    fits = [n for n, vs in STACK_VENDORS.items() if vendor in vs]
    raise SpecError("stack", stack, f"does not run on {hardware} ({vendor}); stacks that do: {', '.join(fits)}")


STACK_PHASES: tuple[str, ...] = ("train", "prefill", "decode")
# the lower end of a fitted device_fraction's range (moesim/calibrate.py fit_stacks): below it the
# rows would be asking for something other than a sustained-throughput loss
FRACTION_MIN = 0.3
# the top of a host_seq_us value, us per sequence per iteration: a millisecond of Python per request
# per iteration would make a 1,000-sequence batch a second an iteration; beyond it is a unit error
MAX_HOST_SEQ_US = 1000.0


class PhaseHost(Spec):
    """How one phase issues its operators (module docstring)."""

    captured: Capture
    host_op_us: float | str = Field(0.0, description="us per eagerly issued operator, or '<stack>.<phase>' "
                                                     "to take that entry's value")
    graph_launch_us: float = Field(0.0, ge=0, description="us of host time per CUDA-graph launch")
    graphs: Literal["layer", "step"] = "layer"
    fit: bool = Field(False, description="host_op_us is fitted on whole sources (validation/calibrate_published.py)")
    prior_us: float | None = Field(None, ge=0, description="fitted entries: the value kept when the rows do not "
                                                           "identify host_op_us")
    fit_max: float | str | None = Field(None, description="fitted entries: the top of the fit's range, us or "
                                                          "'<stack>.<phase>' (that entry's value)")
    device_fraction: float | str = Field(1.0, description="achievable fraction (0, 1] of the kernel models' "
                                                          "device throughput in this stack's full step, or "
                                                          "'<stack>.<phase>' to take that entry's value")
    fit_fraction: bool = Field(False, description="device_fraction is fitted on whole sources (prior 1.0, range "
                                                  "[fraction_min, 1])")
    pool_fraction: bool = Field(False, description="device_fraction is pooled, not fitted: the median of the "
                                                   "identified serving-phase fractions of the other stacks "
                                                   "(moesim/calibrate.py pool_fractions), for an engine without "
                                                   "a calibration source of its own")
    expert_fraction: float | str = Field(1.0, description="achievable fraction (0, 1] of the grouped-GEMM kernel "
                                                          "model that this stack's routed-expert GEMMs reach, on top "
                                                          "of device_fraction, or '<stack>.<phase>' to take that "
                                                          "entry's value")
    fit_expert: bool = Field(False, description="expert_fraction is fitted on whole sources (prior 1.0, range "
                                                "[fraction_min, 1])")
    fraction_min: float = Field(FRACTION_MIN, gt=0, le=FRACTION_MIN,
                                description="a fitted device_fraction's lower bound: FRACTION_MIN unless the entry's "
                                            "source documents a larger kernel loss (it names that source)")
    host_seq_us: float | str = Field(0.0, description="us of host time per running sequence per iteration "
                                                      "(the executor loop's per-request work), or "
                                                      "'<stack>.<phase>' to take that entry's value")
    loop: Loop = Field("synchronous", description="how host_seq_us meets the device time: overlapped "
                                                  "(max) or synchronous (sum)")
    fit_seq: bool = Field(False, description="host_seq_us is fitted on whole sources (range [0, seq_fit_max])")
    seq_prior_us: float | None = Field(None, description="fitted host_seq_us: the value kept when the rows do not "
                                                         "identify it")
    seq_fit_max: float | None = Field(None, description="fitted host_seq_us: the top of the fit's range, us")
    fp8_kv_core: Literal["none", "mla"] = Field("none", description="attention kinds whose core attention runs in FP8 "
                                                                "under an FP8 KV cache on hardware with native FP4 "
                                                                "tensor cores (module docstring)")
    fp8_kv_context: bool = Field(False, description="context attention runs as FP8 FMHA under an FP8 KV cache on "
                                                    "FP8 tensor-core hardware (MLA; other kinds with quantized "
                                                    "projections; module docstring)")
    source: str = Field(description="where the capture mode and numbers come from")

    @model_validator(mode="after")
    def _host(self):
        if isinstance(self.host_op_us, float) and self.host_op_us < 0:
            raise SpecError("host_op_us", self.host_op_us, "allowed: >= 0 us")
        for fld in ("host_seq_us", "seq_prior_us", "seq_fit_max"):
            v = getattr(self, fld)
            if isinstance(v, float) and not (0.0 <= v <= MAX_HOST_SEQ_US):
                raise SpecError(fld, v, f"allowed: 0 to {MAX_HOST_SEQ_US:g} us per sequence per iteration")
        if self.fit_seq and (self.seq_prior_us is None or self.seq_fit_max is None
                             or not isinstance(self.host_seq_us, float)):
            raise SpecError("fit_seq", True, "a fitted host_seq_us needs a numeric host_seq_us, seq_prior_us and seq_fit_max")
        f = self.device_fraction
        if isinstance(f, float) and not (0.0 < f <= 1.0):
            raise SpecError("device_fraction", f, "allowed: above 0, at most 1")
        if self.fit_fraction and not isinstance(f, float):
            raise SpecError("fit_fraction", True, "a fitted device_fraction needs a numeric device_fraction")
        if self.pool_fraction and (self.fit_fraction or not isinstance(f, float)):
            raise SpecError("pool_fraction", True, "a pooled device_fraction needs a numeric device_fraction and "
                                                   "no fit_fraction (it is either fitted or pooled)")
        e = self.expert_fraction
        if isinstance(e, float) and not (0.0 < e <= 1.0):
            raise SpecError("expert_fraction", e, "allowed: above 0, at most 1")
        if self.fit_expert and not isinstance(e, float):
            raise SpecError("fit_expert", True, "a fitted expert_fraction needs a numeric expert_fraction")
        if self.fit and (self.prior_us is None or self.fit_max is None or not isinstance(self.host_op_us, float)):
            raise SpecError("fit", True, "a fitted entry needs a numeric host_op_us, prior_us and fit_max")
        for fld in ("host_op_us", "fit_max", "device_fraction", "expert_fraction", "host_seq_us"):
            ref = getattr(self, fld)
            if not isinstance(ref, str):
                continue
            name, _, phase = ref.partition(".")
            if name not in STACK_NAMES or name == "auto" or phase not in STACK_PHASES:
                raise SpecError(fld, ref, f"allowed: a number or '<stack>.<phase>' "
                                f"(stacks: {', '.join(STACK_NAMES[1:])}; phases: {', '.join(STACK_PHASES)})")
        return self


class SoftwareStack(Spec):
    """A named software stack with explicit per-phase host parameters."""

    name: str
    train: PhaseHost
    prefill: PhaseHost
    decode: PhaseHost
    description: str = ""
    fitted: str = Field("", description="how the fitted numbers were obtained (date, rows); empty: priors only")
    memory_fraction: float | None = Field(
        None, gt=0, le=1, description="serving engines: the share of each device's memory the engine takes for "
                                      "weights and KV cache (vLLM gpu_memory_utilization); None: not stated")
    memory_fraction_tiers: tuple[tuple[int, float], ...] = Field(
        (), description="serving engines whose share depends on the engine's size: (at least this many devices, "
                        "share) pairs, the largest that applies wins (SGLang mem_fraction_static by tp_size)")
    max_running_seqs: int | None = Field(
        None, gt=0, description="serving engines: the most sequences one scheduler runs at once by default (vLLM "
                                "max_num_seqs), one scheduler per attention data-parallel rank; None: bounded by "
                                "the KV cache only")
    max_running_seqs_small: int | None = Field(
        None, gt=0, description="serving engines whose default depends on the GPU: the default on a GPU outside "
                                "the large-GPU branch (below large_gpu_min_GiB of memory, or named in "
                                "small_gpu_names; vLLM V1: 256); None: max_running_seqs on every GPU")
    large_gpu_min_GiB: float | None = Field(
        None, gt=0, description="with max_running_seqs_small: the device memory (GiB, the profile's usable "
                                "memory) from which max_running_seqs applies (vLLM V1: 70)")
    small_gpu_names: tuple[str, ...] = Field(
        (), description="with max_running_seqs_small: GPUs that take it whatever their memory, matched "
                        "case-insensitively in the profile's name or display name (vLLM V1: 'a100')")
    max_batched_tokens: int | None = Field(
        None, gt=0, description="serving engines: the tokens one scheduler's iteration carries by default (vLLM "
                                "max_num_batched_tokens for the API server: prompt chunks plus one per decoding "
                                "sequence), one scheduler per attention data-parallel rank; None: the planner's "
                                "8192 (moesim/planner/serving_policy.py PER_RANK_TOKEN_BUDGET)")
    max_batched_tokens_small: int | None = Field(
        None, gt=0, description="with max_batched_tokens: the default on a GPU outside the large-GPU branch (the "
                                "same rule as max_running_seqs_small: large_gpu_min_GiB, small_gpu_names; vLLM V1: "
                                "2048); None: max_batched_tokens on every GPU")
    kv_free_fraction: float | None = Field(
        None, gt=0, le=1, description="serving engines that size the KV cache from the memory the loaded weights "
                                      "leave (TensorRT-LLM kv_cache_free_gpu_mem_fraction): that share of it; None: "
                                      "not stated (the engine takes a share of the whole device, memory_fraction)")
    engine_source: str = Field("", description="where memory_fraction / memory_fraction_tiers / kv_free_fraction / "
                                               "max_running_seqs / max_batched_tokens come from")

    @model_validator(mode="after")
    def _check_tiers(self):
        for n, share in self.memory_fraction_tiers:
            if n < 1 or not 0 < share <= 1:
                raise SpecError(f"{self.name}.memory_fraction_tiers", [n, share],
                                "pairs of (devices >= 1, share in (0, 1])")
        if self.max_running_seqs_small is not None and (self.max_running_seqs is None or self.large_gpu_min_GiB is None):
            raise SpecError(f"{self.name}.max_running_seqs_small", self.max_running_seqs_small,
                            "needs max_running_seqs (the large-GPU default) and large_gpu_min_GiB (where it begins)")
        if self.max_batched_tokens_small is not None and (self.max_batched_tokens is None
                                                          or self.large_gpu_min_GiB is None):
            raise SpecError(f"{self.name}.max_batched_tokens_small", self.max_batched_tokens_small,
                            "needs max_batched_tokens (the large-GPU default) and large_gpu_min_GiB (where it begins)")
        if self.kv_free_fraction is not None and (self.memory_fraction is not None or self.memory_fraction_tiers):
            raise SpecError(f"{self.name}.kv_free_fraction", self.kv_free_fraction,
                            "either a share of the memory the weights leave (kv_free_fraction) or a share of the "
                            "device (memory_fraction / memory_fraction_tiers), not both")
        return self

    def serving_memory_fraction(self, devices: int) -> float | None:
        """The share of device memory this engine takes for weights + KV cache on a replica of
        ``devices`` devices (tiers first, then ``memory_fraction``); None when the stack states none."""
        tiers = [share for n, share in sorted(self.memory_fraction_tiers) if devices >= n]
        if tiers:
            return float(tiers[-1])
        return self.memory_fraction

    def running_seqs_default(self, hw=None) -> int | None:
        """The most sequences one scheduler of this engine runs by default on ``hw`` (a
        HardwareProfile; None: the large-GPU default): ``max_running_seqs``, or
        ``max_running_seqs_small`` on a GPU below ``large_gpu_min_GiB`` or named in
        ``small_gpu_names`` (vLLM V1's EngineArgs.get_batch_defaults)."""
        if hw is None or self.max_running_seqs_small is None:
            return self.max_running_seqs
        return self.max_running_seqs_small if self.small_gpu(hw) else self.max_running_seqs

    def batched_tokens_default(self, hw=None) -> int | None:
        """The tokens one scheduler's iteration of this engine carries by default on ``hw`` (None:
        the large-GPU default): ``max_batched_tokens``, or ``max_batched_tokens_small`` on a small
        GPU (``small_gpu``; vLLM V1's EngineArgs.get_batch_defaults, the same branch as its
        max_num_seqs); None when the stack states none."""
        if hw is None or self.max_batched_tokens_small is None:
            return self.max_batched_tokens
        return self.max_batched_tokens_small if self.small_gpu(hw) else self.max_batched_tokens

    def small_gpu(self, hw) -> bool:
        """Whether ``hw`` (a HardwareProfile) is outside this engine's large-GPU branch: below
        ``large_gpu_min_GiB`` of memory or named in ``small_gpu_names`` (case-insensitive, in the
        profile's name or display name). False when the stack states no such branch."""
        if self.large_gpu_min_GiB is None:
            return False
        names = f"{hw.name} {hw.display_name}".lower()
        return hw.hbm_bytes / 2**30 < self.large_gpu_min_GiB or any(n.lower() in names for n in self.small_gpu_names)

    def phase(self, phase: str) -> PhaseHost:
        """The ``PhaseHost`` of ``phase`` (train / prefill / decode)."""
        if phase not in STACK_PHASES:
            raise SpecError("phase", phase, f"allowed: {', '.join(STACK_PHASES)}")
        return getattr(self, phase)
