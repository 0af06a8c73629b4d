"""Host (CPU) issue time of a layer under the run's software stack.

An eager framework (PyTorch/Megatron training, SGLang prefill) runs, for every operator, Python,
autograd bookkeeping, the dispatcher and the kernel launch; a CUDA graph (or an XLA program)
replays a captured sequence with one launch. The GPU cannot run ahead of the host, so a layer
whose operators are small is host-bound. Per layer pass, split into the operators issued before
the layer's token counts are needed (P: attention, router; ``PRE_SYNC_OP_COUNTS``) and after
(X: experts), under the phase's ``PhaseHost`` of the stack (moesim/step/stacks.py, table
moesim/data/stacks.toml):

    captured none:  hP = n_P x host_op_us,  hX = n_X x host_op_us                   [s]  (1)
    captured pre:   hP = launch,            hX = n_X x host_op_us                          (2)
    captured all:   hP = launch,            hX = 0                                         (3)

with n_P + n_X = n_ops(layer kind, pass) and launch = graph_launch_us per graph (a per-layer
graph), or graph_launch_us / num_layers (one graph per step, spread over the layers: under the
fluid schedule the same answer whenever a layer's device time exceeds that share). How host and
device time combine is a schedule (moesim/step/schedule.py): an operation cannot end before the
host has issued it, per operation window max(host, device), never a sum; where the dispatch
needs the counts on the host (``dispatch_syncs_host``, only when the expert path is eager) the
host waits for the device, so host slack does not carry across that point.

``n_ops`` are MEASURED, not guessed: ``OP_COUNTS`` are the aten operators (kernel launches;
metadata-only views excluded) one pre-norm transformer layer dispatches per micro-batch, counted
by ``validation/count_ops.py`` with a TorchDispatchMode on the reference torch layer
(validation/torch_moe.py MoE block, grouped_mm expert path) and stored with the per-op detail in
``validation/data/op-counts.json`` (tests/test_step_host.py asserts this literal equals the
file). The library keeps the literal so that it reads no file at run time.

NOTE: ``host_op_us`` is therefore "host seconds per reference aten operator": it absorbs how
much heavier a production framework's operator is (Megatron/TE module wrappers, hooks) than a
bare aten call, and is fitted per stack on whole sources (validation/calibrate_published.py).
NOTE: decode runs under CUDA graphs in production servers (SGLang, vLLM, TensorRT-LLM): the
graph replays every kernel with one launch, so decode pays one launch per step.
NOTE: the expert path counted is the grouped one (one grouped GEMM per projection, as Megatron
TEGroupedMLP and DeepGEMM run): the count does not grow with the local experts. The per-expert
slope of a loop path is recorded in the data file but not used. Tested (2026-11-28): adding
it (5 forward + 18 backward ops per local expert) and refitting the joint host parameter moves
Qwen3-30B on B200 from -42% to -32% but Mixtral from +33% to +52% and Qwen3-235B from -14% to
+64% (median |err| of the 9 training/serving rows 33% -> 32%): the fine-grained-expert gap is
not a per-local-expert host cost, and TE's grouped GEMM launches its per-expert GEMMs from C++,
far cheaper than a Python-issued aten operator.
MLA attention (DeepSeek-V2/V3, Kimi-K2; ``attention.kind == "mla"``) issues more operators than
the GQA layer: q down-projection, its RMSNorm and up-projection; the kv down-projection (latent
+ shared rope key), its RMSNorm and up-projection; RoPE on the q and k rope parts; the nope|rope
concatenations. ``ATTENTION_EXTRA_OPS`` are those extra operators, MEASURED the same way on the
reference MLA layer (validation.count_ops.MLALayer, DeepSeek-V2 paper eqs. 37-47): the same in
the dense and the MoE layer and all issued before the token-count sync (count_ops checks both),
so they add to ``OP_COUNTS`` and ``PRE_SYNC_OP_COUNTS`` alike. Without query compression
(``q_lora_rank`` 0, DeepSeek-V2-Lite) the q projection is one GEMM with no norm.
Per-sequence loop host time (serving): a serving executor also does per-request host work every
iteration outside the model's operators. TensorRT-LLM's PyTorch backend runs its executor loop in
Python (tensorrt_llm/_torch/pyexecutor/py_executor.py, ``PyExecutor._executor_loop_overlap``):
each iteration schedules (``_prepare_and_schedule_batch``, scheduler.py), prepares resources,
launches the forward (``_forward_step``), updates the previous iteration's requests from its
sampled tokens (``_update_requests``, sampler.py), samples asynchronously (``_sample_async``) and
handles the previous iteration's responses (``_process_previous_batch`` -> ``_handle_responses``),
each a loop over the batch's requests. With the overlap scheduler (on by default:
tensorrt_llm/llmapi/llm_args.py ``disable_overlap_scheduler`` default False) the forward of
iteration n is launched before iteration n-1's requests are updated, so that work runs while the
device computes; without it (``_executor_loop``) forward, sampling and responses run in sequence.
Per iteration, with n sequences in flight on the executor's rank and the stack's
``host_seq_us`` (h) and ``loop``:

    H_loop = n x h                                                                   [s]  (4)
    overlapped:   T = max(T_dev, H_issue + H_loop)                                          (5)
    synchronous:  T = T_dev + H_loop                                                        (6)

T_dev the iteration from the per-operator schedule (which already holds the host's operator
issue H_issue: one graph launch in a CUDA-graph decode, every operator in an eager context or mixed
iteration; the same Python thread issues them and runs the loop). n counts the sequences an
executor rank handles: a TP group's ranks all see its whole batch (batch per device x tp x pp);
with attention DP each rank its own requests (``loop_sequences``).

NOTE: the reference layers apply no RoPE under GQA/MHA (their counts omit RoPE's 5 forward
operators per rotated tensor) and count MHA as GQA (its 2 repeat_interleave copies); RoPE is
counted under MLA, where it is applied to separate rope parts of the heads.
"""
from __future__ import annotations

from moesim import units
from moesim.specs import HardwareProfile, ModelSpec
from moesim.specs.software_stack import SoftwareStack
from moesim.step.stacks import resolve

# validation/data/op-counts.json ("dense_layer", "moe_layer"): operators per layer and pass
OP_COUNTS: dict[str, dict[str, int]] = {
    "dense": {"forward": 35, "backward": 62},
    "moe": {"forward": 86, "backward": 98},
    "shared_experts": {"forward": 6, "backward": 11},  # part of "moe", when the model has them
}

# validation/data/op-counts.json ("mla", "mla_no_q_lora": "extra_vs_gqa"): operators an MLA
# attention block issues beyond the GQA block, per layer and pass
ATTENTION_EXTRA_OPS: dict[str, dict[str, int]] = {
    "gqa": {"forward": 0, "backward": 0},
    "mla": {"forward": 25, "backward": 43},
    "mla_no_q_lora": {"forward": 18, "backward": 27},
}

# Of those, the operators issued BEFORE the expert path's token counts are needed on the host
# (the P part of a layer: norm, attention, residual, norm, router, top-k, counts; dense layers:
# the attention block), forward; backward: the attention block's backward. Counted in program
# order on the same reference layer (validation.count_ops.Layer, grouped_mm, seed 0): forward,
# the first data-dependent-shape operator (``nonzero`` in sort_copies, a host sync on a GPU) is
# launch 62 of 86 (of 80 without shared experts: they run after the routed experts); the dense
# layer's attention block is launches 1-23 of 35; backward, the attention block's gradient (a
# tensor hook on the attention output, plus the o-projection's 2 GEMMs) is 32 launches in both
# layers. The rest of a pass (permute, experts, unpermute, shared experts, residual) is X's.
PRE_SYNC_OP_COUNTS: dict[str, dict[str, int]] = {
    "dense": {"forward": 23, "backward": 32},
    "moe": {"forward": 62, "backward": 32},
}

def attention_variant(model: ModelSpec) -> str:
    """Key of ``ATTENTION_EXTRA_OPS`` for the model's attention (MHA counts as GQA)."""
    att = model.attention
    if att.kind != "mla":
        return "gqa"
    return "mla" if att.q_lora_rank else "mla_no_q_lora"


def layer_count(model: ModelSpec, moe: bool, backward: bool, counts: dict, attention_extra: dict) -> int:
    """One layer pass's count from a measured table shaped like ``OP_COUNTS`` (dense / moe /
    shared_experts) plus its attention variant's extra (shaped like ``ATTENTION_EXTRA_OPS``); an MoE
    layer without shared experts drops their share."""
    key = "backward" if backward else "forward"
    n = counts["moe" if moe else "dense"][key] + attention_extra[attention_variant(model)][key]
    if moe and not model.moe.num_shared_experts:
        n -= counts["shared_experts"][key]
    return n


def layer_op_count(model: ModelSpec, moe: bool, backward: bool) -> int:
    """Operators one layer issues in one pass (forward or backward) per micro-batch."""
    return layer_count(model, moe, backward, OP_COUNTS, ATTENTION_EXTRA_OPS)


def _pre_count(model: ModelSpec, moe: bool, backward: bool) -> int:
    """Operators of the P part of one layer pass (``PRE_SYNC_OP_COUNTS`` + the attention extra)."""
    key = "backward" if backward else "forward"
    return PRE_SYNC_OP_COUNTS["moe" if moe else "dense"][key] + ATTENTION_EXTRA_OPS[attention_variant(model)][key]


def host_parts_s(model: ModelSpec, moe: bool, phase: str, backward: bool = False,
                 stack: str | SoftwareStack = "auto") -> tuple[float, float]:
    """Host issue time (s) of the P and the X part of one layer pass under ``stack`` in ``phase``
    (module docstring, eqs. 1-2): eager operators pay ``host_op_us`` each, a captured part one
    graph launch (a per-step graph's launch spread over the layers)."""
    ph = resolve(stack, phase)
    n_pre = _pre_count(model, moe, backward)
    n_post = layer_op_count(model, moe, backward) - n_pre
    op = float(ph.host_op_us) * units.us
    launch = ph.graph_launch_us * units.us / (model.num_layers if ph.graphs == "step" else 1)
    if ph.captured == "none":
        return n_pre * op, n_post * op
    if ph.captured == "pre":
        return launch, n_post * op
    return launch, 0.0


def is_eager(phase: str, stack: str | SoftwareStack = "auto") -> bool:
    """Whether ``stack`` issues any of ``phase``'s layer operators one by one from the host
    (captured ``none`` or ``pre``); ``all``: replayed from graphs / a compiled program."""
    return resolve(stack, phase).captured != "all"


def layer_host_s(hw: HardwareProfile | None, model: ModelSpec, moe: bool, phase: str, backward: bool = False,
                 stack: str | SoftwareStack = "auto") -> float:
    """Host issue time (s) of one layer pass under ``stack`` (``host_parts_s``, P + X).
    ``hw`` is not used: host issue is a property of the software stack, not of the GPU (kept
    so that callers pass the deployment's profile positionally as before)."""
    pre, post = host_parts_s(model, moe, phase, backward, stack)
    return pre + post


def layer_host_pre_s(hw: HardwareProfile | None, model: ModelSpec, moe: bool, phase: str, backward: bool = False,
                     stack: str | SoftwareStack = "auto") -> float:
    """Host issue time (s) of the P part of a layer pass (``PRE_SYNC_OP_COUNTS``): the operators
    issued before the expert path needs the token counts; the rest of ``layer_host_s`` is X's."""
    return host_parts_s(model, moe, phase, backward, stack)[0]


def dispatch_syncs_host(moe: bool, ep: int, mode: str, phase: str, backward: bool = False,
                        stack: str | SoftwareStack = "auto") -> bool:
    """Whether the forward dispatch of this layer makes the host wait for the device's token
    counts (moesim/step/schedule.py eq. 2): an MoE layer with EP > 1, normal (high-throughput)
    all-to-all, with the expert path issued eagerly (captured ``none`` or ``pre``). Sources: DeepEP normal ``Buffer.dispatch`` waits for the GPU's
    receive counts unless ``num_worst_tokens`` is given (intranode only; SGLang's and Megatron's
    normal-mode callers do not give it); Megatron-Core's dropless all-to-all dispatcher syncs
    ``before_ep_alltoall``. Low-latency kernels use fixed-size buffers (no sync); the backward
    reuses the forward's sizes (the autograd all-to-all keeps its splits, DeepEP its handle)."""
    return moe and ep > 1 and mode == "normal" and is_eager(phase, stack) and not backward


def loop_sequences(tokens_per_device, tp: int, pp: int, phase: str, prompt_len: float = 1.0):
    """Sequences one executor rank handles per iteration (eq. 4's n): decode ``tokens_per_device``
    (one per sequence) x tp x pp; prefill the prompts (``tokens_per_device / prompt_len``) x tp x pp."""
    per = tokens_per_device if phase == "decode" else tokens_per_device / prompt_len
    return per * tp * pp


def loop_host_s(sequences, phase: str, stack: str | SoftwareStack = "auto"):
    """Host time (s) of the executor loop's per-sequence work in one iteration (eq. 4):
    ``sequences`` x the stack's ``host_seq_us`` in ``phase`` (0 for stacks that price none)."""
    return sequences * float(resolve(stack, phase).host_seq_us) * units.us


def loop_time_s(device_s, issue_s, loop_s, phase: str, stack: str | SoftwareStack = "auto"):
    """The iteration time with the loop's host time ``loop_s`` (eqs. 5-6): ``overlapped`` (the
    overlap scheduler) max(device, operator issue + loop), ``synchronous`` device + loop.
    ``device_s`` already holds the operator issue ``issue_s`` (the per-operator schedule)."""
    import numpy as np

    if resolve(stack, phase).loop == "overlapped":
        return np.maximum(device_s, issue_s + loop_s)
    return device_s + loop_s
