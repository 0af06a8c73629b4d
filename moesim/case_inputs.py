"""How the inputs of training and serving cases map onto the step model (docs/cases.md):
recompute as sources spell it, partial scale-up domains, the software stack a case ran
(``framework`` / ``software`` / ``cuda_graphs`` -> a stack of moesim/data/stacks.toml), and the
stated inputs the model does not honour (flagged so that ``moesim validate`` lists them in
``ignored_inputs``)."""
from __future__ import annotations

import re

from moesim.errors import SpecError
from moesim.specs import HardwareProfile
from moesim.specs.cluster import partial_domain_note, rack_aligned_domain
from moesim.specs.deployment import canonical_recompute_modules, check_modules_need_selective
from moesim.validate import UnsupportedCase, flag_ignored


def _get(inputs: dict, key: str, default):
    value = inputs.get(key)
    return default if value is None else value


# Recompute as sources write it -> the step model's mode and, for selective, the Megatron-Core
# modules recomputed (moesim/step/recompute.py; None: Megatron's default core_attn). Megatron:
# --recompute-granularity selective (with --recompute-modules, default core attention) / full
# with --recompute-method uniform|block; NeMo recipes write "selective", "full", "block"; MaxText
# remat policies "full", "minimal", "save_dot_except_mlp"; DeepSeek-V3 (arXiv 2412.19437
# s3.2.3) recomputes RMSNorm and the MLA up-projections only.
# Value: (mode, modules, what is not priced, or "" when the mode is what the source ran).
RECOMPUTE_SPELLINGS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "none": ("none", None, ""), "no": ("none", None, ""), "off": ("none", None, ""), "disabled": ("none", None, ""),
    "selective": ("selective", None, ""), "attention": ("selective", None, ""),
    "attention-only": ("selective", None, ""), "core_attn": ("selective", None, ""),
    "core-attention": ("selective", None, ""),
    "full": ("full", None, ""), "block": ("full", None, ""), "full-block": ("full", None, ""),
    "uniform": ("full", None, ""), "full-uniform": ("full", None, ""),
    "rmsnorm+mla-up-projection": ("selective", ("layernorm", "mla_up_proj"), ""),
    "minimal": ("none", None, "MaxText 'minimal' remat (a few elementwise ops recomputed) not priced"),
    "mlp": ("selective", ("mlp", "moe"), ""),
    "moe": ("selective", ("moe",), ""),
}


# Stated training inputs the step model does not honour (or honours only at one value).
TRAINING_NOT_MODELLED: dict[str, str] = {
    "dispatcher": "one all-to-all model for every token dispatcher",
    "node_limited_routing_nodes": "node-limited routing is not applied to training traffic",
    "nvlink_used": "the scale-up link is always used when the domain has more than one device",
}
SERVING_NOT_MODELLED: dict[str, str] = {
    "nvlink_used": "the scale-up link is always used when the domain has more than one device",
    "dispatcher": "one all-to-all model for every token dispatcher",
    "capacity_factor": "serving is priced dropless",
}


# How sources write a feature that is off: what the step model prices, so it is read, not flagged
OFF_VALUES: tuple[str, ...] = ("none", "off", "no", "false", "disabled", "0")


def stated_off(value) -> bool:
    """Whether a stated feature value means off: False, 0, or a spelling in ``OFF_VALUES``."""
    if value is False or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return True
    return isinstance(value, str) and value.strip().lower() in OFF_VALUES


def flag_not_modelled(inputs: dict, table: dict[str, str]) -> None:
    """Flag each stated key of ``table``; a feature stated off (``stated_off``: False, 0, "none",
    ...) is what is priced."""
    for key, why in table.items():
        if not stated_off(inputs.get(key)):
            flag_ignored(inputs, key, why)


def recompute_plan(inputs: dict) -> tuple[str, tuple[str, ...] | None]:
    """The step model's recompute mode of a case and its selective modules (RECOMPUTE_SPELLINGS;
    a stated ``recompute_modules`` list, as Megatron's --recompute-modules, replaces the
    spelling's); ("none", None) when not stated. SpecError naming the value for an unknown
    spelling or module, or for modules stated with a recompute that is not selective."""
    raw = inputs.get("recompute")
    stated = inputs.get("recompute_modules")
    if raw is None and stated is None:
        return "none", None
    key = "selective" if raw is None else (
        str(raw).strip().lower().replace(" ", "-").replace("_", "-") if str(raw) != "core_attn" else "core_attn")
    if key not in RECOMPUTE_SPELLINGS:
        raise SpecError("recompute", raw, f"one of {', '.join(RECOMPUTE_SPELLINGS)}")
    mode, modules, unpriced = RECOMPUTE_SPELLINGS[key]
    if unpriced:
        flag_ignored(inputs, "recompute", f"{raw!r} -> {mode}: {unpriced}")
    if stated is not None:
        check_modules_need_selective(mode, stated)
        modules = canonical_recompute_modules(stated)
    return mode, modules


def domain_layout(inputs: dict, hw: HardwareProfile, devices: int, ep: int) -> int:
    """Devices per scale-up domain of a case (partial racks: moesim/specs/cluster.py
    ``rack_aligned_domain``, recorded under the case's assumptions)."""
    stated = inputs.get("devices_per_node")
    dpd = int(stated) if stated is not None else hw.scale_up.domain_size
    note = partial_domain_note(devices, dpd, ep)
    if note is not None and hasattr(inputs, "assume"):
        inputs.assume("devices_per_node", note)
    return rack_aligned_domain(devices, dpd, ep)


def training_sharding(inputs: dict, dp: int, cp: int = 1) -> str | None:
    """``Deployment.sharding`` of a case: ``fsdp`` when the source states an FSDP size > 0 (MaxText
    ``ici_fsdp_parallelism``, Megatron-Bridge's FSDP column) or ZeRO stage 3; None (the
    distributed optimizer, ZeRO-1) otherwise. The FSDP group is the whole data-parallel group
    (dp x cp); a stated size that differs is flagged."""
    fsdp = int(_get(inputs, "fsdp", 0))
    if fsdp:
        if fsdp != dp * cp:
            flag_ignored(inputs, "fsdp", f"FSDP over {fsdp} ranks is priced over the whole data-parallel group "
                                         f"(dp x cp = {dp * cp})")
        return "fsdp"
    if int(_get(inputs, "zero_stage", 1)) >= 3:
        return "fsdp"
    return None


# Megatron-Bridge / NeMo token-drop recipes (megatron.bridge.training.utils.moe_token_drop
# ``apply_moe_token_drop``; nemo.lightning.pytorch.callbacks.moe_token_drop
# ``MegatronTokenDropCallback``): capacity factor 1.0, inputs padded to capacity.
TOKEN_DROP_CAPACITY_FACTOR = 1.0


def training_capacity_factor(inputs: dict) -> float | None:
    """``Deployment.capacity_factor`` of a training case: None (dropless) unless the case states
    ``dropless`` false; then the stated ``capacity_factor``, else the token-drop recipes' 1.0
    (recorded under ``assumptions``). A stated factor must be > 0."""
    if inputs.get("dropless") is not False:
        return None
    stated = inputs.get("capacity_factor")
    if stated is None:
        if hasattr(inputs, "assume"):
            inputs.assume("capacity_factor", f"token-drop run without a stated capacity factor: "
                                             f"{TOKEN_DROP_CAPACITY_FACTOR} padded to capacity (Megatron-Bridge "
                                             f"apply_moe_token_drop defaults)")
        return TOKEN_DROP_CAPACITY_FACTOR
    value = float(stated)
    if not value > 0:
        raise SpecError("capacity_factor", stated, "a capacity factor > 0 (or null with dropless false)")
    return value


def training_schedule(inputs: dict) -> str:
    """The pipeline schedule of a training case (moesim/step/training.py ``SCHEDULES``):
    ``dualpipe`` when the case states ``dualpipe`` true, else ``1f1b`` (interleaved with vpp)."""
    value = inputs.get("dualpipe")
    if value is None or value is False:
        return "1f1b"
    if value is not True:
        raise SpecError("dualpipe", value, "true or false")
    return "dualpipe"


def check_training_flags(inputs: dict, dp: int) -> None:
    """Flag ZeRO-2 and an inconsistent grad_accum_steps (FSDP and ZeRO-3 are priced:
    ``training_sharding``; token-drop runs: ``training_capacity_factor``)."""
    if int(_get(inputs, "zero_stage", 1)) == 2:
        flag_ignored(inputs, "zero_stage", "ZeRO-2 is priced as ZeRO-1 (the distributed optimizer): same "
                                           "communication, gradients not sharded in memory")
    ga = inputs.get("grad_accum_steps")
    mb = inputs.get("micro_batch")
    if ga is not None and mb is not None:
        implied = int(inputs["global_batch"]) // (dp * int(mb))
        if int(ga) != implied:
            flag_ignored(inputs, "grad_accum_steps", f"{ga} as stated; the step uses global_batch / (dp x "
                                                     f"micro_batch) = {implied}")


def training_mtp(inputs: dict, model) -> int | None:
    """The MTP modules a training row trains (``Deployment.mtp_layers``): ``mtp_depth`` as
    stated (DeepSeek's name for it), ``mtp`` false -> 0 and true -> the model's; unstated -> None
    (the model's own, recorded under ``assumptions`` for a model that has MTP modules)."""
    depth, flag = inputs.get("mtp_depth"), inputs.get("mtp")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise UnsupportedCase(f"mtp_depth = {depth!r}: allowed: an integer >= 0")
        return depth
    if flag is not None:
        if stated_off(flag):
            return 0
        if flag is not True:
            raise UnsupportedCase(f"mtp = {flag!r}: allowed: true, false (or mtp_depth, an integer >= 0)")
        return model.mtp_layers
    if model.mtp_layers and hasattr(inputs, "assume"):
        inputs.assume("mtp_depth", f"not stated: {model.name}'s {model.mtp_layers} MTP module(s) trained, as "
                                   "its report and the Megatron-Bridge recipes do")
    return None


# Framework names as sources write them (``framework`` / ``software``, lower-cased substrings,
# tried in this order) -> the stack of moesim/data/stacks.toml that ran the case.
FRAMEWORK_STACKS: tuple[tuple[str, str], ...] = (
    ("maxtext", "maxtext"), ("jax", "xla"), ("xla", "xla"),
    ("megatron", "megatron"), ("mcore", "megatron"), ("nemo", "megatron"),
    ("sglang", "sglang"), ("vllm", "vllm"),
    # TensorRT-LLM: its TensorRT engines with the C++ runtime (v0.x; ``trtllm-bench build``,
    # gptManagerBenchmark) before the generic name, which is the PyTorch backend (the 1.0+ default)
    ("tensorrt engine", "trtllm-engine"), ("trtllm-engine", "trtllm-engine"), ("trtllm engine", "trtllm-engine"),
    ("cpp runtime", "trtllm-engine"), ("c++ runtime", "trtllm-engine"), ("gptmanagerbenchmark", "trtllm-engine"),
    ("tensorrt-llm", "trtllm"), ("tensorrt llm", "trtllm"), ("trt-llm", "trtllm"), ("trtllm", "trtllm"),
)
# Hardware on which the Megatron-Bridge performance recipes capture attention and router in TE
# CUDA graphs (cuda_graph_impl "transformer_engine", cuda_graph_scope attn / moe_router /
# moe_preprocess: NVIDIA-NeMo/Megatron-Bridge scripts/performance configs, DeepSeek-V3 GB200/GB300
# 256-GPU recipes) -> megatron-cudagraph unless the case states ``cuda_graphs``.
MEGATRON_GRAPH_RECIPE_HARDWARE: tuple[str, ...] = ("gb200", "gb300")


def case_stack(inputs: dict, hardware: str, phase: str) -> str:
    """The software stack (a name of moesim/data/stacks.toml) that ran a case in ``phase``.

    ``framework`` / ``software`` name the engine (``FRAMEWORK_STACKS``; TensorRT-LLM is
    ``trtllm-engine`` where the text names its TensorRT engines / C++ runtime, else the PyTorch
    backend ``trtllm``); ``cuda_graphs`` true
    makes Megatron ``megatron-cudagraph`` (other engines capture decode already; an eager
    engine stated without graphs runs ``eager``); Megatron-Bridge recipes on
    ``MEGATRON_GRAPH_RECIPE_HARDWARE`` are ``megatron-cudagraph``. An unknown or unstated
    framework is the ``auto`` stack (train -> megatron, prefill/decode -> sglang), recorded under
    ``assumptions``. vLLM and SGLang on an AMD profile (profile ``vendor``) are ``vllm-rocm`` and
    ``sglang-rocm`` (``VENDOR_STACKS``); vLLM before 0.8 elsewhere is ``vllm-v0`` (its V0 engine:
    ``_vllm_v0``)."""
    text = " ".join(str(inputs.get(k) or "") for k in ("framework", "software")).lower()
    graphs = inputs.get("cuda_graphs")
    stack = next((name for key, name in FRAMEWORK_STACKS if key in text), None)
    if stack is None:
        what = f"framework {text.strip()!r} is not a known stack" if text.strip() else "no framework stated"
        if hasattr(inputs, "assume"):
            inputs.assume("framework", f"{what}: priced with the auto stack ({phase} -> "
                                       f"{'megatron' if phase == 'train' else 'sglang'})")
        return "eager" if graphs is False else "auto"
    if stack == "megatron":
        if graphs is True or (graphs is None and "bridge" in text and hardware in MEGATRON_GRAPH_RECIPE_HARDWARE):
            return "megatron-cudagraph"
    elif graphs is False and stack in ("sglang", "vllm", "trtllm", "trtllm-engine"):
        return "eager"
    elif stack in VENDOR_STACKS and _vendor(hardware) in VENDOR_STACKS[stack]:
        return VENDOR_STACKS[stack][_vendor(hardware)]
    elif stack == "vllm" and _vllm_v0(text):
        return "vllm-v0"
    return stack


def _vllm_v0(text: str) -> bool:
    """Whether a framework text names a vLLM release before 0.8, whose default engine was V0 (the
    V1 engine became the default in v0.8.0): ``vllm 0.7.4.dev181``, ``vLLM v0.6.3``."""
    import re

    m = re.search(r"vllm\s*v?(\d+)\.(\d+)", text)
    return m is not None and (int(m.group(1)), int(m.group(2))) < (0, 8)


# Engines whose builds for another vendor's devices run other kernels: (stack, profile vendor)
# -> the stack fitted on that vendor's rows. vLLM on ROCm ran the ROCm kernels of its builds
# (moesim/data/stacks.toml [vllm-rocm]; AMD ROCm blog 2025-03-21 'Supercharge DeepSeek-R1
# Inference on AMD Instinct MI300X': AITER +2x GEMM, +3x MoE, +17x MLA decode over the earlier
# kernels). SGLang on ROCm ran the same ROCm kernel libraries (the blog's AITER gains are SGLang's
# own): ``sglang-rocm``, SGLang's host structure at vllm-rocm's fitted fraction.
VENDOR_STACKS: dict[str, dict[str, str]] = {"vllm": {"amd": "vllm-rocm"}, "sglang": {"amd": "sglang-rocm"}}


def _vendor(hardware: str) -> str | None:
    """The ``vendor`` of hardware profile ``hardware`` (None for a name that is not a profile)."""
    from moesim.catalog import load_profile
    from moesim.errors import MoesimError

    try:
        return load_profile(hardware).vendor
    except MoesimError:  # an unknown or unreadable profile name: no vendor-specific stack
        return None
