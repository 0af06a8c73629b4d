"""Predictors for the ``training``, ``serving`` and ``moe_layer`` case kinds (shared/CASES.md),
through the analytic step model. Registered in ``moesim.validate.PREDICTORS``.

Training and serving rows fit one parameter, ``compute.host_op_overhead_us`` (host time per
operator of an eager framework, moesim/step/host.py): the per-operator cost of Megatron/SGLang
is not identifiable from GEMM or all-to-all micro-benchmarks. Every other efficiency comes from
the gemm and all_to_all fits. validation/calibrate_published.py fits it JOINTLY over all
training and serving rows of every hardware (it is a property of the software stack, not of the
GPU) and reports leave-one-out errors. moe_layer rows fit nothing. Defaults for inputs a
source did not state (documented, the same for every case):
- training: cp 1, vpp 1, micro_batch 1, recompute none, devices_per_node 8, distributed
  optimizer with overlapped gradient reduction (Megatron defaults in the benchmark recipes);
  routing ``balanced`` when the case says "force-balanced", else ``uniform``; memory is not
  checked (the run happened).
- serving: prefill tokens per device 16,384 when not stated (the only per-device figure the
  SGLang large-EP blog gives); ``two_batch_overlap`` -> overlap ``two_microbatch``;
  ``deepep_mode`` low_latency -> low-latency all-to-all; EP sizes that do not divide the
  experts get the fewest redundant slots that make them divide (EPLB); routing ``uniform``
  (EPLB is taken to balance away the data's skew).
- both: ``num_sms`` (SMs of the normal all-to-all kernels, when a source states it) overrides
  DeepEP's default 20 (moesim/step/sharing.py); only overlapped schedules feel it.
"""
from __future__ import annotations

from moesim.catalog import build, load_model
from moesim.compute.counts import forward_flops_per_token
from moesim.errors import MoesimError
from moesim.specs import Deployment, HardwareProfile, ModelSpec
from moesim.specs.parallel import smallest_redundancy
from moesim.validate import UnsupportedCase

TRAINING_FIT_PARAMS: tuple[str, ...] = ("compute.host_op_overhead_us",)
SERVING_FIT_PARAMS: tuple[str, ...] = ("compute.host_op_overhead_us",)
# kinds whose parameters are fitted jointly across hardware (validation/calibrate_published.py)
JOINT_KINDS: tuple[str, ...] = ("training", "serving")
MOE_LAYER_FIT_PARAMS: tuple[str, ...] = ()

DEFAULT_PREFILL_TOKENS_PER_DEVICE = 16384
DEFAULT_DEVICES_PER_NODE = 8


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


def predict_training_case(inputs: dict, hw: HardwareProfile) -> float:
    """tokens_per_s_per_device, model_tflops_per_device, step_time_s or mfu of a training row."""
    from moesim.step import Training, estimate

    metric = _metric(inputs, ("tokens_per_s_per_device", "model_tflops_per_device", "step_time_s", "mfu"))
    model = _model(inputs)
    devices = int(inputs["devices"])
    tp, pp, cp = int(inputs["tp"]), int(inputs["pp"]), int(_get(inputs, "cp", 1))
    if devices % (tp * pp * cp):
        raise UnsupportedCase(f"devices {devices} not a multiple of tp x pp x cp")
    try:
        dep = build(Deployment, {
            "hardware": hw, "devices": devices, "tp": tp, "pp": pp, "cp": cp, "ep": int(inputs["ep"]),
            "devices_per_domain": int(_get(inputs, "devices_per_node", DEFAULT_DEVICES_PER_NODE)),
            "vpp": int(_get(inputs, "vpp", 1)), "dp": devices // (tp * pp * cp), "dtype": str(inputs["dtype"]),
            "recompute": _get(inputs, "recompute", "none"), "comm_sms": _comm_sms(inputs)})
        work = Training(int(inputs["global_batch"]), int(inputs["seq_len"]), int(_get(inputs, "micro_batch", 1)),
                        _skew(inputs))
        b = estimate(model, dep, work, check_memory=False).breakdown(0)
    except MoesimError as err:
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None
    if metric == "model_tflops_per_device":
        # NOTE: Megatron's published "model TFLOPS" counts attention over the full sequence (no
        # causal halving; megatron/training/training.py num_floating_point_operations): predict
        # the metric as the source defines it, 3 x forward FLOPs with seq_len keys per token.
        per_token = 3.0 * forward_flops_per_token(model, float(inputs["seq_len"]))
        return b.tokens_per_s_per_device * per_token / 1e12
    return {"tokens_per_s_per_device": b.tokens_per_s_per_device, "step_time_s": b.step_time_s,
            "mfu": b.mfu}[metric]


def predict_serving_case(inputs: dict, hw: HardwareProfile) -> float:
    """tokens_per_s_per_device of a prefill or decode row (SGLang/DeepSeek-style deployments)."""
    from moesim.step import Decode, Prefill, estimate

    _metric(inputs, ("tokens_per_s_per_device",))
    model = _model(inputs)
    devices, ep = int(inputs["devices"]), int(inputs["ep"])
    layout = _get(inputs, "attention_layout", "tp")
    tp = 1 if layout == "dp" else int(_get(inputs, "tp", devices))
    redundant = smallest_redundancy(model.moe.num_experts, ep) if model.moe else 0
    overlap = "two_microbatch" if inputs.get("two_batch_overlap") else "none"
    a2a = "low_latency" if inputs.get("deepep_mode") == "low_latency" else "auto"
    try:
        dep = build(Deployment, {
            "hardware": hw, "devices": devices, "tp": tp, "dp": devices // tp, "ep": ep, "attention_layout": layout,
            "devices_per_domain": int(_get(inputs, "devices_per_node", DEFAULT_DEVICES_PER_NODE)),
            "redundant_experts": redundant, "dtype": str(inputs["dtype"]), "overlap": overlap, "a2a_mode": a2a,
            "comm_sms": _comm_sms(inputs)})
        if inputs["phase"] == "decode":
            work = Decode(int(inputs["batch_per_device"]), int(inputs["context_len"]))
            b = estimate(model, dep, work, check_memory=False).breakdown(0)
        elif inputs["phase"] == "prefill":
            prompt = int(inputs["prompt_len"])
            tokens = _get(inputs, "tokens_per_device", None)
            if tokens is None and inputs.get("batch_per_device") is not None:
                tokens = int(inputs["batch_per_device"]) * prompt
            tokens = tokens or DEFAULT_PREFILL_TOKENS_PER_DEVICE
            b = estimate(model, dep, Prefill(prompt, tokens / prompt), check_memory=False).breakdown(0)
        else:
            raise UnsupportedCase(f"phase {inputs['phase']!r} (prefill or decode)")
    except (MoesimError, KeyError) as err:
        if isinstance(err, UnsupportedCase):
            raise
        raise UnsupportedCase(f"cannot lay out this case: {err}") from None
    return b.tokens_per_s_per_device


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



