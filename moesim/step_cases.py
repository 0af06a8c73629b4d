"""Predictors for the ``training``, ``serving`` and ``moe_layer`` case kinds (docs/cases.md),
through the analytic step model. Registered in ``moesim.validate.PREDICTORS``.

Each training and serving row runs the software stack its ``framework`` / ``software`` /
``cuda_graphs`` inputs name (moesim/case_inputs.py ``case_stack``; unknown: ``auto``, with an
assumption). Training and serving rows fit the host parameters of those stacks
(``"<stack>.<phase>.host_op_us"``, moesim/step/stacks.py ``fit_params``: host time per eagerly
issued operator, moesim/step/host.py), never a GPU profile's: the per-operator cost of
Megatron/SGLang is not identifiable from GEMM or all-to-all micro-benchmarks, and every other
efficiency comes from the gemm and all_to_all fits. moesim/calibrate.py ``fit_stacks`` fits each
parameter on the rows that run it, over every hardware; ``predict_training_case`` and
``predict_serving_case`` take the table to price with (``stacks``; default the shipped
moesim/data/stacks.toml). moe_layer rows fit nothing. Defaults for inputs a source did not
state (documented, the same for every case):
- training: cp 1, vpp 1, micro_batch 1, recompute none, devices_per_node 8, distributed
  optimizer with overlapped gradient reduction (Megatron defaults in the benchmark recipes);
  routing ``balanced`` when the case says "force-balanced", else ``uniform``; memory is not
  checked (the run happened). ``fsdp`` > 0 or ``zero_stage`` 3 -> ``sharding = "fsdp"`` over
  the data-parallel group (moesim/case_inputs.py ``training_sharding``).
- serving: ``attention_dtype`` (when stated) prices the attention projections and core at that
  precision (Deployment.attention_dtype); end-to-end rows pass it to the planner
  (``search.attention_dtype``); unstated on an fp8/fp4 row, the choice is recorded under
  ``assumptions`` (``case_attention_dtype``).
- serving: phase end_to_end (whole requests, e.g. a maximum-load benchmark) is predicted through
  the planner (planned_serving: the best candidate of exactly the stated deployment); a
  maximum-load row under TensorRT-LLM that states ``num_requests`` (trtllm-bench's finite
  dataset, queued at once) is the replay of that dataset on the candidate's replica
  (moesim/planner/bench_replay.py), not the steady-state closed form; ``kv_dtype`` when stated
  (else fp8 for fp8/fp4 rows, the workload dtype otherwise); a prefill or decode row's
  ``kv_dtype`` when stated, else bf16; an unstated one is recorded under ``assumptions``
  (``case_kv_dtype``);
  prefill tokens per device 16,384 when not stated (the only per-device figure the
  SGLang large-EP blog gives); ``two_batch_overlap`` -> overlap ``two_microbatch``;
  ``deepep_mode`` low_latency -> low-latency all-to-all; EP sizes that do not divide the
  experts get the fewest redundant slots that make them divide (EPLB); routing ``uniform``
  (EPLB is taken to balance away the data's skew).
- training: ``mtp_depth`` (or ``mtp`` true / false) is the MTP modules trained on the last
  pipeline stage (``Deployment.mtp_layers``; moesim/step/training.py); unstated, a model with
  MTP modules trains them (recorded under ``assumptions``: case_inputs.py ``training_mtp``).
  ``pipeline_layout`` (Megatron's --pipeline-model-parallel-layout) places the layers on the
  pipeline ranks (moesim/specs/pipeline_layout.py); unstated, the ceil split.
- serving: ``mtp`` true in a decode row prices MTP speculative decoding with the row's
  ``mtp_acceptance_rate`` (refused when not stated) and ``mtp_draft_tokens`` (default the
  model's ``mtp_layers``): the verify pass of 1 + d tokens per sequence plus d draft passes per
  step, (1 - a^(d+1)) / (1 - a) tokens emitted per sequence (``case_speculative``); prefill and
  end-to-end rows list it as ignored.
- both: ``num_sms`` (SMs of the normal all-to-all kernels, when a source states it) overrides
  DeepEP's default 20 (moesim/step/sharing.py); only overlapped schedules feel it.
- both: ``devices_per_node`` (the scale-up domain) defaults to the profile's domain size (8 on
  HGX, 72 on NVL72). A job that does not fill whole domains (256 GPUs on 72-GPU NVL72 racks) is
  a real, partial-rack deployment: it is modelled as ``devices / d`` equal domains of the
  largest ``d`` <= the domain size that divides the devices and is a multiple of EP when one
  exists (256 on NVL72 -> 4 domains of 64: every EP group stays inside one NVLink domain, as
  a rack-aligned launcher places it); the case reports this under ``assumptions``.
- training: ``dropless`` false (a token-drop run) -> ``Deployment.capacity_factor`` = the stated
  ``capacity_factor``, else 1.0 with inputs padded to capacity (Megatron-Bridge / NeMo
  ``apply_moe_token_drop`` defaults; an assumption): the routing engine drops the copies over
  capacity and the padded dispatch has no host sync (moesim/step/training.py ``padded_dispatch``).
- training: ``dualpipe`` true -> DeepSeek-V3's DualPipe schedule (moesim/step/training.py
  ``dualpipe_pair`` / ``dualpipe_bubble``); otherwise (interleaved) 1F1B.
- recompute as the source writes it (moesim/case_inputs.py ``RECOMPUTE_SPELLINGS``), with a
  stated ``recompute_modules`` list (Megatron's --recompute-modules) as the selective modules
  (moesim/step/recompute.py); an unknown spelling or module is an error naming the case and the value.
Every other stated input the step model cannot honour is listed per case in ``ignored_inputs``
(moesim/case_inputs.py ``TRAINING_NOT_MODELLED``, ``SERVING_NOT_MODELLED``).
"""
from __future__ import annotations

from dataclasses import replace

from moesim.catalog import build, load_model
from moesim.compute.counts import forward_flops_per_token
from moesim.errors import MoesimError, SpecError
from moesim.specs import Deployment, HardwareProfile, ModelSpec
from moesim.specs.parallel import smallest_redundancy
from moesim.case_inputs import (SERVING_NOT_MODELLED, TRAINING_NOT_MODELLED, case_stack, check_training_flags,
                                domain_layout, flag_not_modelled, recompute_plan, stated_off, training_capacity_factor,
                                training_mtp, training_schedule, training_sharding)
from moesim.step.elementwise import is_low_precision
from moesim.step.stacks import StackTable, stack_table
from moesim.validate import UnsupportedCase, flag_ignored

# training and serving fit software-stack parameters (moesim/step/stacks.py), not profile ones
TRAINING_FIT_PARAMS: tuple[str, ...] = ()
SERVING_FIT_PARAMS: tuple[str, ...] = ()
# kinds whose (software-stack) parameters are fitted across hardware (moesim.calibrate.fit_stacks)
JOINT_KINDS: tuple[str, ...] = ("training", "serving")
MOE_LAYER_FIT_PARAMS: tuple[str, ...] = ()

DEFAULT_PREFILL_TOKENS_PER_DEVICE = 16384


def _get(inputs: dict, key: str, default):
    value = inputs.get(key)
    return default if value is None else value


def _model(inputs: dict) -> ModelSpec:
    spec = inputs.get("model")
    if isinstance(spec, str):
        return load_model(spec)
    if isinstance(spec, dict):
        return inline_moe_model(spec)
    raise UnsupportedCase(f"model {spec!r} is neither a preset name nor inline dimensions")


def inline_moe_model(dims: dict) -> ModelSpec:
    """A ModelSpec carrying only an MoE block's dimensions (attention is a placeholder never timed)."""
    try:
        hidden = int(dims["hidden"])
        moe = {"num_experts": int(dims["num_experts"]), "top_k": int(dims["top_k"]),
               "expert_ffn": int(dims["expert_ffn"]),
               "num_shared_experts": int(dims.get("num_shared_experts") or 0),
               "shared_expert_ffn": int(dims.get("shared_expert_ffn") or (dims["expert_ffn"] if dims.get("num_shared_experts") else 0)),
               "sources": {"*": "inline moe_layer case"}}
    except (KeyError, TypeError, ValueError) as err:
        raise UnsupportedCase(f"inline model needs hidden, num_experts, top_k, expert_ffn ({err})") from None
    data = {"name": "inline-moe-layer", "display_name": "inline MoE layer", "num_layers": 1,
            "hidden": hidden, "vocab_size": 1, "max_context": 1,
            "ffn_activation": dims.get("ffn_activation", "swiglu"),
            "attention": {"kind": "mha", "num_heads": 1, "num_kv_heads": 1, "head_dim": hidden,
                          "sources": {"*": "placeholder"}},
            "moe": moe, "sources": {"*": "inline moe_layer case"}}
    return build(ModelSpec, data, "inputs.model")


def _metric(inputs: dict, allowed: tuple[str, ...]) -> str:
    metric = inputs.get("metric")
    if metric not in allowed:
        raise UnsupportedCase(f"metric {metric!r} not modelled (supported: {', '.join(allowed)})")
    return metric


def _comm_sms(inputs: dict) -> int | None:
    value = inputs.get("num_sms")
    return None if value is None else int(value)


def _skew(inputs: dict) -> str:
    text = str(inputs.get("routing") or "").lower()
    return "balanced" if "balanced" in text else "uniform"


def case_kv_dtype(inputs: dict, default: str) -> str:
    """The KV-cache dtype of a serving row: ``kv_dtype`` as stated, else ``default``, recorded
    under the case's ``assumptions`` (a decode step reads the cache at that width, and the KV
    capacity of an end-to-end row's engine depends on it, so an unstated one is never silent)."""
    stated = inputs.get("kv_dtype")
    if stated is not None:
        return str(stated)
    if hasattr(inputs, "assume"):
        inputs.assume("kv_dtype", f"not stated: {default} KV cache")
    return default


def case_attention_dtype(inputs: dict, model: ModelSpec) -> str | None:
    """A serving row's ``attention_dtype`` as stated, else None (moesim/step/setup.py
    ``projection_dtype``: the released weight dtype for a checkpoint that ships only its experts
    quantized, else the row's dtype), the unstated choice recorded under ``assumptions`` for a
    low-precision row: quantized checkpoints differ here (NVIDIA's NVFP4 DeepSeek-R1-0528 lists
    every ``self_attn`` module in its ``exclude_modules``), so the answer depends on it."""
    from moesim.step.setup import unstated_projection_dtype

    stated = inputs.get("attention_dtype")
    if stated is not None:
        return str(stated)
    dtype = str(inputs.get("dtype"))
    if hasattr(inputs, "assume") and is_low_precision(dtype):
        used = unstated_projection_dtype(model, dtype)
        why = "the row's dtype" if used == dtype else "only the checkpoint's experts are quantized"
        inputs.assume("attention_dtype", f"not stated: attention projections at {used} ({why})")
    return None


def case_software_stack(inputs: dict, hw: HardwareProfile, phase: str, stacks: StackTable | None):
    """The case's stack (``case_stack``) with ``stacks``' numbers inlined (default: the shipped table)."""
    return (stacks or stack_table()).inline(case_stack(inputs, hw.name, phase), phase)


def predict_training_case(inputs: dict, hw: HardwareProfile, stacks: StackTable | None = None) -> float:
    """tokens_per_s_per_device, model_tflops_per_device, step_time_s or mfu of a training row,
    under the case's software stack priced with ``stacks`` (default: the shipped table)."""
    metric = _metric(inputs, ("tokens_per_s_per_device", "model_tflops_per_device", "step_time_s", "mfu"))
    model = _model(inputs)
    devices = int(inputs["devices"])
    tp, pp, cp = int(inputs["tp"]), int(inputs["pp"]), int(_get(inputs, "cp", 1))
    ep = int(inputs["ep"])
    if devices % (tp * pp * cp):
        raise UnsupportedCase(f"devices {devices} not a multiple of tp x pp x cp")
    dp = devices // (tp * pp * cp)
    flag_not_modelled(inputs, TRAINING_NOT_MODELLED)
    check_training_flags(inputs, dp)
    recompute, recompute_modules = recompute_plan(inputs)
    dpd = domain_layout(inputs, hw, devices, ep)
    capacity = training_capacity_factor(inputs)
    stack = padded_layer_graphs(case_software_stack(inputs, hw, "train", stacks), inputs, capacity)
    try:
        dep = build(Deployment, {
            "hardware": hw, "devices": devices, "tp": tp, "pp": pp, "cp": cp, "ep": ep, "devices_per_domain": dpd,
            "vpp": int(_get(inputs, "vpp", 1)), "dp": dp, "dtype": str(inputs["dtype"]), "recompute": recompute,
            "recompute_modules": recompute_modules, "mtp_layers": training_mtp(inputs, model),
            "pipeline_layout": inputs.get("pipeline_layout"),
            "comm_sms": _comm_sms(inputs), "stack": stack,
            "sharding": training_sharding(inputs, dp, cp), "capacity_factor": capacity})
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None
    b = _training_step(model, dep, inputs)
    if metric == "model_tflops_per_device":
        # NOTE: Megatron's published "model TFLOPS" counts attention over the full sequence (no
        # causal halving; megatron/training/training.py num_floating_point_operations): predict
        # the metric as the source defines it, 3 x forward FLOPs with seq_len keys per token.
        per_token = 3.0 * forward_flops_per_token(model, float(inputs["seq_len"]))
        return b.tokens_per_s_per_device * per_token / 1e12
    return {"tokens_per_s_per_device": b.tokens_per_s_per_device, "step_time_s": b.step_time_s,
            "mfu": b.mfu}[metric]


def padded_layer_graphs(stack, inputs: dict, capacity: float | None):
    """The training stack of a token-drop Megatron run that states ``cuda_graphs`` true: whole
    layers captured (train ``captured = "all"``, one graph per layer), every other number the
    stack's own. Megatron-Core's layer graphs (``enable_cuda_graph``, Megatron-Bridge 25.09
    ``set_cuda_graph_overrides(cuda_graphs=True)``) capture the MoE layer only when its shapes
    are static: "when --moe-expert-capacity-factor and --moe-pad-expert-input-to-capacity are
    not set, the resulting dynamic shapes make MoE layers uncapturable"
    (megatron/core/transformer/moe/README.md, CUDA Graph Support); padded token drop sets both
    (case_inputs.py ``TOKEN_DROP_CAPACITY_FACTOR``). A dropless run, or one that does not state
    graphs, keeps its stack (``megatron-cudagraph``: attention and router only)."""
    if capacity is None or inputs.get("cuda_graphs") is not True or stack.name != "megatron-cudagraph":
        return stack
    return stack.model_copy(update={"train": stack.train.model_copy(update={"captured": "all", "graphs": "layer"})})


def _training_step(model, dep: Deployment, inputs: dict):
    """The one call into the step model for training rows: the training estimate of a
    ``Training`` workload on the case's ``Deployment`` (dtype, recompute and comm SMs in it)
    under the case's pipeline schedule (``training_schedule``: DualPipe when stated)."""
    from moesim.step import Training
    from moesim.step.cache import StepCache
    from moesim.step.training import training_estimate

    try:
        work = Training(int(inputs["global_batch"]), int(inputs["seq_len"]), int(_get(inputs, "micro_batch", 1)),
                        _skew(inputs))
        return training_estimate(model, dep, work, check_memory=False, cache=StepCache(),
                                 schedule=training_schedule(inputs)).breakdown(0)
    except UnsupportedCase:
        raise
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None


def predict_serving_case(inputs: dict, hw: HardwareProfile, stacks: StackTable | None = None) -> float:
    """tokens_per_s_per_device of a prefill or decode row (SGLang/DeepSeek-style deployments),
    under the case's software stack priced with ``stacks`` (default: the shipped table)."""
    _metric(inputs, ("tokens_per_s_per_device",))
    model = _model(inputs)
    devices, ep = int(inputs["devices"]), int(inputs["ep"])
    layout = _get(inputs, "attention_layout", "tp")
    tp = int(_get(inputs, "tp", 1 if layout == "dp" else devices))
    if layout == "dp" and tp != 1:  # TensorRT-LLM's DEPn passes --tp n: its attention is still one per device
        flag_ignored(inputs, "tp", f"attention data-parallel runs one attention per device (tp = 1), not tp = {tp}")
        tp = 1
    redundant = _redundant_slots(inputs, model, ep)
    overlap = "two_microbatch" if inputs.get("two_batch_overlap") else "none"
    a2a = "low_latency" if inputs.get("deepep_mode") == "low_latency" else "auto"
    flag_not_modelled(inputs, SERVING_NOT_MODELLED)
    if inputs.get("eplb") is False:
        flag_ignored(inputs, "eplb", "routing is priced uniform (balanced) whether or not EPLB runs")
    inputs.get("pd_disaggregation")  # honoured: each phase is priced alone, as a disaggregated pool runs it
    phase = inputs["phase"]
    spec = case_speculative(inputs, model, phase)
    if phase == "end_to_end":  # framework / cuda_graphs choose the scenario's stack (case_stack)
        return planned_serving(inputs, model, hw, devices, tp, layout, stacks)
    if phase == "decode":
        fills_memory = inputs.get("max_load") is True and inputs.get("batch_per_device") is None
        shape = {"batch_per_device": None if fills_memory else int(inputs["batch_per_device"]),
                 "context": int(inputs["context_len"])}
    elif phase == "prefill":
        prompt = int(inputs["prompt_len"])
        tokens = _get(inputs, "tokens_per_device", None)
        if tokens is None and inputs.get("batch_per_device") is not None:
            tokens = int(inputs["batch_per_device"]) * prompt
        tokens = tokens or DEFAULT_PREFILL_TOKENS_PER_DEVICE
        shape = {"prompt_len": prompt, "prompts_per_device": tokens / prompt}
    else:
        raise UnsupportedCase(f"phase {phase!r} (prefill or decode)")
    dpd = domain_layout(inputs, hw, devices, ep)
    try:
        dep = build(Deployment, {
            "hardware": hw, "devices": devices, "tp": tp, "dp": devices // tp, "ep": ep, "attention_layout": layout,
            "etp": devices if _without_ep(ep, devices, model) else 1,
            "devices_per_domain": dpd, "redundant_experts": redundant, "dtype": str(inputs["dtype"]),
            "overlap": overlap, "a2a_mode": a2a, "comm_sms": _comm_sms(inputs),
            "kv_dtype": case_kv_dtype(inputs, "bf16"),
            "stack": case_software_stack(inputs, hw, phase, stacks),
            "attention_dtype": case_attention_dtype(inputs, model)})
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None
    if phase == "decode" and shape["batch_per_device"] is None:
        shape["batch_per_device"] = memory_filled_batch(inputs, model, dep, shape["context"])
    if spec is not None:  # decode with MTP: verify + draft passes per step, E tokens per sequence
        from moesim.planner.pool_cost import speculative_step_s

        def step_s(batch, context):
            return _serving_step(model, dep, "decode", {"batch_per_device": batch, "context": context}).step_time_s
        b, ctx = shape["batch_per_device"], shape["context"]
        return b * spec.tokens_per_step / speculative_step_s(spec, model, step_s, b, ctx)
    return _serving_step(model, dep, phase, shape).tokens_per_s_per_device


def memory_filled_batch(inputs: dict, model: ModelSpec, dep: Deployment, context: int) -> int:
    """Sequences per device of a decode row run under maximum load (``max_load`` with no stated
    ``batch_per_device``: the source says the decode batch fills the memory): the sequences of
    ``context`` tokens the KV cache of the deployment's engine holds (moesim/des/serving/deployment.py
    ``kv_capacity_tokens``: vLLM's gpu_memory_utilization, SGLang's mem_fraction_static, TensorRT-LLM's
    kv_cache_free_gpu_mem_fraction, per the stack), capped by its scheduler's running-sequence limit
    per attention rank (a stated ``max_num_seqs``, else the stack's default; a rank spans tp
    devices). Recorded under the case's ``assumptions``; a deployment whose weights leave no room
    is refused with the memory model's reason."""
    from moesim.des.serving.deployment import kv_capacity_tokens
    from moesim.errors import InfeasibleError
    from moesim.step.stacks import serving_stack

    try:
        tokens = kv_capacity_tokens(model, dep)
    except InfeasibleError as err:
        raise UnsupportedCase(f"no decode batch fits: {err}") from None
    fill = tokens // (context * dep.devices)
    stated = inputs.get("max_num_seqs")
    if stated is not None and (isinstance(stated, bool) or not isinstance(stated, (int, float)) or stated != int(stated)
                               or stated < 1):
        raise SpecError("max_num_seqs", stated, "an integer >= 1 (running sequences per attention rank)")
    cap = int(stated) if stated is not None else serving_stack(dep.stack).running_seqs_default(dep.hardware)
    per_device_cap = None if cap is None else max(1, int(cap) // dep.parallelism.tp)
    if fill < 1:
        raise UnsupportedCase(f"no decode sequence of {context} tokens fits the KV cache ({tokens} tokens over "
                              f"{dep.devices} devices)")
    if per_device_cap is None or fill <= per_device_cap:
        batch, bound = fill, "the KV cache"
    else:
        batch = per_device_cap
        bound = (f"the scheduler's {int(cap)} running sequences per attention rank "
                 f"({'stated' if stated is not None else 'the stack default'})")
    if hasattr(inputs, "assume"):
        inputs.assume("batch_per_device", f"not stated, the batch fills the memory (max_load): {batch} sequences "
                                          f"per device of {context} tokens, bound by {bound}")
    return batch


def case_speculative(inputs: dict, model: ModelSpec, phase: str):
    """MTP speculative decoding of a serving row (moesim/specs/serving_features.py
    ``SpeculativeDecoding``): ``mtp`` true prices a decode row's step as the verify pass of
    1 + d tokens per sequence plus d draft passes of the model's MTP layers, emitting
    (1 - a^(d+1)) / (1 - a) tokens per sequence (moesim/planner/pool_cost.py
    ``speculative_step_s``), with the acceptance rate a the row states (``mtp_acceptance_rate``:
    the probability a draft token is accepted given the ones before it; refused when not stated:
    it decides the answer) and d = ``mtp_draft_tokens`` (default the model's ``mtp_layers``).
    None when MTP is off (moesim/case_inputs.py ``stated_off``) or not stated; prefill
    and end-to-end rows flag it (the draft layer's share of a prefill is not priced there). A
    model without MTP layers, or an acceptance rate that is not a number in [0, 1], is refused
    naming the field."""
    from moesim.specs.serving_features import SpeculativeDecoding

    raw = inputs.get("mtp")
    if raw is None or stated_off(raw):
        return None
    if phase != "decode":
        flag_ignored(inputs, "mtp", "MTP is priced in decode rows only (its draft layer's share of a prefill is not)")
        return None
    if model.mtp_layers < 1:
        raise UnsupportedCase(f"input 'mtp': model {model.name} has no MTP layers to draft with")
    rate = inputs.get("mtp_acceptance_rate")
    if rate is None:
        raise UnsupportedCase("input 'mtp_acceptance_rate' (0 to 1) is needed to price MTP and is not stated")
    depth = inputs.get("mtp_draft_tokens")
    try:
        return build(SpeculativeDecoding, {"method": "mtp", "acceptance_rate": rate,
                                           "draft_tokens": model.mtp_layers if depth is None else depth})
    except MoesimError as err:  # name the case's inputs, not the spec's fields
        msg = str(err).replace("SpeculativeDecoding: ", "")
        for spec_field, case_key in (("acceptance_rate", "mtp_acceptance_rate"), ("draft_tokens", "mtp_draft_tokens")):
            msg = msg.replace(f"{spec_field} =", f"input '{case_key}' =")
        raise UnsupportedCase(msg) from None


# Decode batches per device the end-to-end path searches (CUDA-graph batch sizes of the engines'
# configs reach 8192 sequences per replica; the memory model rejects what does not fit).
END_TO_END_BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def case_scheduler(inputs: dict) -> str:
    """The planner's co-located scheduler for a case (moesim/planner/serving_policy.py): the
    TensorRT-LLM engine's own limits for rows its stack ran (``case_stack``), else ``auto``."""
    from moesim.step.stacks import is_trtllm

    return "trtllm" if is_trtllm(case_stack(inputs, str(inputs.get("hardware") or ""), "decode")) else "auto"


def _max_load_batches(scenario, model) -> tuple[int, ...]:
    """Batches per device at which the scenario's engine runs under maximum load: every request is
    queued at once, so each layout's scheduler holds its limit. TensorRT-LLM: its limits
    (``serving_policy.trtllm_limits`` ``max_seqs`` per attention rank; a rank spans tp devices).
    Any other engine admits requests while its KV cache has room, so it runs at the most
    sequences its share of device memory holds at the mean in-flight context
    (``serving_policy.serving_memory`` ``max_batch``: vLLM's gpu_memory_utilization, SGLang's
    mem_fraction_static) and its scheduler's cap allows (``serving_policy.max_load_batch``:
    vLLM's max_num_seqs per attention rank); the power-of-two batch grid would round that down
    by up to half."""
    from moesim.planner import serving_policy
    from moesim.planner.costs import PlanCache
    from moesim.planner.space import serving_space

    trtllm = serving_policy.engine(scenario) == "trtllm"
    cache, out = PlanCache(), set()
    for c in {(c.tp, c.pp, c.ep, c.etp, c.attention_layout): c for c in serving_space(scenario, model).candidates}.values():
        try:
            if not trtllm:
                out.add(serving_policy.max_load_batch(c, scenario, model, cache))
                continue
            per_rank = serving_policy.trtllm_limits(c, scenario, model, cache).max_seqs
        except MoesimError:
            continue
        if per_rank >= c.tp:
            out.add(per_rank // c.tp)
    return tuple(sorted(b for b in out if b >= 1))


# engine options a run states that replace the engine's own choice (moesim/planner/scenario.py
# EngineSettings): trtllm-bench's, honoured under the trtllm scheduler, and vLLM's --max-num-seqs
# and --max-num-batched-tokens, honoured under batched_prefill (serving_policy.unused_engine_keys
# says which scheduler reads which)
ENGINE_INPUTS: tuple[str, ...] = ("max_batch_size", "max_num_tokens", "kv_cache_free_gpu_mem_fraction", "concurrency",
                                  "cuda_graph_batch_sizes", "max_num_seqs", "max_num_batched_tokens")


def planned_serving(inputs: dict, model: ModelSpec, hw: HardwareProfile, devices: int, tp: int,
                    layout: str, stacks: StackTable | None = None) -> float:
    """Output tokens/s per device of an end-to-end serving run (prefill and decode of fixed
    ``prompt_len`` / ``output_len`` requests) as the planner predicts it: the best co-located
    candidate of exactly this deployment (hardware, devices, TP, attention layout) over
    ``END_TO_END_BATCHES``, under the source's latency limits (``tpot_limit_s``,
    ``ttft_limit_s``) or, for a maximum-load run (``max_load``), none that binds; under the
    software stack and scheduler of the case's ``framework`` (``case_stack``,
    ``case_scheduler``), with two-micro-batch overlap only where the case states
    ``two_batch_overlap`` (TensorRT-LLM's perf-overview options enable none). A maximum-load run
    also tries the batch its engine holds when every request is queued
    (``_max_load_batches``); with ``num_requests`` stated it is the replay of that finite
    dataset on each such candidate (``bench_requests``, ``_replayed``). The engine limits a run
    states (``ENGINE_INPUTS``: trtllm-bench's --max_batch_size, --max_num_tokens,
    --kv_cache_free_gpu_mem_fraction, --concurrency and the llm options' CUDA-graph batch sizes;
    vLLM's --max-num-seqs) become the scenario's ``engine`` settings, each honoured by the
    scheduler that reads it and flagged as ignored under the other. ``stacks``: the
    table to price the stack with (a fit's trial values, passed to the planner as the explicit
    ``SoftwareStack``); None: the shipped table, by name. ``hw`` may be a calibrated or modified
    profile: the in-process planner search loads it by its name (``catalog.profile_overrides``)."""
    from moesim.catalog import profile_overrides

    if model.name != str(inputs["model"]):
        raise UnsupportedCase("an end-to-end row needs a model preset (the planner loads it by name)")
    with profile_overrides({hw.name: hw}):  # the planner loads by name: it gets ``hw`` as given
        return _planned_serving(inputs, model, hw, devices, tp, layout, stacks)


def _planned_serving(inputs: dict, model: ModelSpec, hw: HardwareProfile, devices: int, tp: int,
                     layout: str, stacks: StackTable | None) -> float:
    """``planned_serving``'s search, inside its profile override."""
    from moesim.planner import serving_policy
    from moesim.planner.plan import plan
    from moesim.planner.scenario import scenario_from_dict

    dtype = str(inputs["dtype"])
    tpot = inputs.get("tpot_limit_s")
    ttft = inputs.get("ttft_limit_s")
    if tpot is None and ttft is None and not inputs.get("max_load"):
        raise UnsupportedCase("an end-to-end row needs latency limits (tpot_limit_s / ttft_limit_s) or max_load")
    for key in ("batch_per_device", "redundant_experts", "devices_per_node"):
        flag_ignored(inputs, key, "the planner chooses it for the deployment (end-to-end row)")
    moe_layout = _moe_layout(inputs, model, devices)
    data = {
        "kind": "serving", "name": "validate-end-to-end", "model": model.name, "hardware": [hw.name],
        "max_devices": devices,
        "workload": {"prompt_len": int(inputs["prompt_len"]), "output_len": int(inputs["output_len"]),
                     "target_output_tokens_per_s": 1.0, "dtype": dtype,
                     "kv_dtype": case_kv_dtype(inputs, "fp8" if is_low_precision(dtype) else dtype)},
        "slo": {"percentile": 50, "tpot_s": float(tpot or 1e3), "ttft_s": float(ttft or 1e6)},
        "search": {"devices_per_replica": [devices], "batch_per_device": list(END_TO_END_BATCHES),
                   "tp": [tp], "pp": [1], "attention_layouts": [layout], "moe_layouts": [moe_layout],
                   "overlap": "two_microbatch" if inputs.get("two_batch_overlap") else "none",
                   "attention_dtype": case_attention_dtype(inputs, model)},
        "verify": {"top_n": 0}, "scheduler": case_scheduler(inputs),
        "stack": (case_stack(inputs, hw.name, "decode") if stacks is None
                  else stacks.inline(case_stack(inputs, hw.name, "decode"), "decode")),
    }
    engine = {k: inputs.get(k) for k in ENGINE_INPUTS if inputs.get(k) is not None}
    if engine:
        data["engine"] = engine
    scenario = scenario_from_dict(data, source="end-to-end case")
    for key in serving_policy.unused_engine_keys(scenario):
        flag_ignored(inputs, key, f"{serving_policy.unused_engine_reason(key)} (this case runs the "
                                  f"{serving_policy.engine(scenario)} scheduler)")
    extra = _max_load_batches(scenario, model) if inputs.get("max_load") else ()
    requests = bench_requests(inputs, scenario)
    if requests is not None:
        return _replayed(data, scenario, model, extra, requests)
    if extra:
        data["search"]["batch_per_device"] = sorted(set(END_TO_END_BATCHES) | set(extra))
        scenario = scenario_from_dict(data, source="end-to-end case")
    ranked = [r.evaluation for r in plan(scenario, executor="inline").ranked]
    if not ranked:
        raise UnsupportedCase("the planner finds no candidate of this deployment that fits and meets the limits")
    return max(e.tokens_per_s / e.candidate.devices for e in ranked)


def _without_ep(ep: int, devices: int, model) -> bool:
    """A MoE row that ran without expert parallelism (ep = 1 on several devices): its experts are
    sharded over the devices (expert TP, etp = devices), as vLLM and SGLang do by default."""
    return model.moe is not None and ep == 1 and devices > 1


def _moe_layout(inputs: dict, model, devices: int) -> str:
    """The planner's MoE layout for an end-to-end row: ``tp`` (every expert sharded over the
    replica, etp = devices) when the row ran without expert parallelism (ep = 1 on several devices,
    vLLM's and SGLang's default), else ``ep`` (experts spread over the replica)."""
    ep = inputs.get("ep")
    if ep is None or model.moe is None or devices == 1:
        return "ep"
    if _without_ep(int(ep), devices, model):
        return "tp"
    if int(ep) != devices:
        flag_ignored(inputs, "ep", f"the planner spreads the experts over all {devices} devices (ep = devices)")
    return "ep"


def bench_requests(inputs: dict, scenario) -> int | None:
    """The finite dataset of a maximum-load row that TensorRT-LLM's scheduler ran: its stated
    ``num_requests`` (trtllm-bench's ``--num-requests`` of prepare_dataset.py, from the source's
    table), else None (the steady-state closed form prices the row). Stated on a row the
    planner does not run under the ``trtllm`` scheduler, or without ``max_load``, it is flagged
    as ignored. Below 1 or not an integer: an error naming the field."""
    from moesim.planner import serving_policy

    n = inputs.get("num_requests")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 1:
        raise SpecError("num_requests", n, "an integer >= 1 (requests in the benchmark's dataset)")
    if not inputs.get("max_load") or serving_policy.engine(scenario) != "trtllm":
        flag_ignored(inputs, "num_requests", "only a maximum-load row under TensorRT-LLM's scheduler is "
                                             "replayed as a finite dataset")
        return None
    return int(n)


def _replayed(data: dict, scenario, model, engine_batches: tuple[int, ...], requests: int) -> float:
    """Output tokens/s per device of the finite benchmark (moesim/planner/bench_replay.py): the
    planner's candidates of the case's layout at the batch the engine holds (``engine_batches``;
    the replay's batch is set by the engine limits, not by the candidate's), each replayed with
    ``requests`` requests queued at t = 0; the best replay."""
    from moesim.planner.bench_replay import replay_candidate
    from moesim.planner.costs import PlanCache
    from moesim.planner.plan import plan
    from moesim.planner.scenario import scenario_from_dict

    if engine_batches:
        data["search"]["batch_per_device"] = sorted(engine_batches)
        scenario = scenario_from_dict(data, source="end-to-end case")
    ranked = [r.evaluation for r in plan(scenario, executor="inline").ranked]
    if not ranked and engine_batches:
        data["search"]["batch_per_device"] = sorted(set(END_TO_END_BATCHES) | set(engine_batches))
        scenario = scenario_from_dict(data, source="end-to-end case")
        ranked = [r.evaluation for r in plan(scenario, executor="inline").ranked]
    if not ranked:
        raise UnsupportedCase("the planner finds no candidate of this deployment that fits and meets the limits")
    cache = PlanCache()
    best = 0.0
    for c in {replace(e.candidate, batch=1) for e in ranked}:
        try:
            best = max(best, replay_candidate(c, scenario, model, cache, requests).output_tokens_per_s_per_device)
        except MoesimError as err:
            raise UnsupportedCase(f"cannot replay the benchmark on {c.layout()}: {err}") from None
    return best


def _serving_step(model, dep: Deployment, phase: str, shape: dict):
    """The one call into the step model for serving rows: ``estimate`` of a ``Decode`` or
    ``Prefill`` workload of ``shape`` on the case's ``Deployment`` (dtype, overlap, all-to-all
    mode and comm SMs in it)."""
    from moesim.step import Decode, Prefill, estimate

    try:
        work = Decode(**shape) if phase == "decode" else Prefill(**shape)
        return estimate(model, dep, work, check_memory=False).breakdown(0)
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None


def _redundant_slots(inputs: dict, model: ModelSpec, ep: int) -> int:
    """Redundant expert slots: as stated (EPLB replicas), else the fewest that make EP divide."""
    if model.moe is None:
        return 0
    stated = inputs.get("redundant_experts")
    if stated is None:
        return smallest_redundancy(model.moe.num_experts, ep)
    if (model.moe.num_experts + int(stated)) % ep:
        raise SpecError("redundant_experts", stated,
                        f"num_experts {model.moe.num_experts} + redundant slots must be a multiple of ep {ep}")
    return int(stated)


def predict_moe_layer_case(inputs: dict, hw: HardwareProfile) -> float:
    """time_s of one MoE block (router, dispatch, experts on the busiest rank, shared experts,
    combine), forward or forward + backward, for ``tokens_per_rank`` tokens on each of ``ranks``."""
    from moesim.step.layer import LayerOps, make_setup, moe_block
    from moesim.step.training import backward_ops

    _metric(inputs, ("time_s",))
    model = _model(inputs)
    if model.moe is None:
        raise UnsupportedCase("moe_layer needs a model with routed experts")
    ranks = int(inputs["ranks"])
    phase = _get(inputs, "phase", "forward")
    if phase not in ("forward", "forward_backward"):
        raise UnsupportedCase(f"phase {phase!r} (forward or forward_backward)")
    skew = str(_get(inputs, "routing", _get(inputs, "skew", "uniform")))
    try:
        dep = build(Deployment, {
            "hardware": hw, "devices": ranks, "dp": ranks, "ep": ranks, "dtype": str(inputs["dtype"]),
            "redundant_experts": smallest_redundancy(model.moe.num_experts, ranks),
            "devices_per_domain": int(_get(inputs, "ranks_per_node", ranks)),
            "a2a_mode": str(_get(inputs, "mode", "auto")) if _get(inputs, "mode", "auto") in ("auto", "normal", "low_latency") else "auto"})
        setup = make_setup(model, dep, "prefill", skew if skew in ("uniform", "balanced") or ":" in skew else "uniform")
        block = moe_block(setup, float(inputs["tokens_per_rank"]))
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None
    ops = LayerOps(**block)
    fwd = ops.pre_s + ops.dispatch_s + ops.ffn_s + ops.combine_s
    if phase == "forward":
        return fwd
    bwd = backward_ops(ops)
    return fwd + bwd.pre_s + bwd.dispatch_s + bwd.ffn_s + bwd.combine_s



