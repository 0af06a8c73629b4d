"""Selective recompute by module: which forward work a training step runs again in its backward.

Megatron-Core's ``--recompute-granularity selective`` recomputes the submodules named in
``--recompute-modules`` (megatron/core/transformer/transformer_config.py ``recompute_modules``:
choices "core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts";
default ``["core_attn"]``). Each recomputed module's forward runs once more before its backward
and its internal activations are not stored (moesim/compute/memory.py
``activation_elements_per_token_layer``). Per layer and micro-batch, priced from the layer's own
forward operations (moesim/step/layer.py, already at the stack's device fraction f):

    core_attn       the attention core (``attention_core_s``: flash attention's score/value part)
    mla_up_proj     MLA's up-projection GEMMs (q_b: q_lora_rank -> heads x qk_head_dim; kv_b:
                    kv_lora_rank -> heads x (qk_nope + v)) on the TP group's rows, / f
    layernorm       the two RMSNorms: read + write D each, 4 D x 2 B per token, at the
                    memory-bound kernel bandwidth (moesim/step/elementwise.py ``memory_bound_s``), / f
    moe_act         the routed experts' gated activation: read 2 F, write F per routed copy
                    (k copies; read F, write F for a non-gated activation), / f
    mlp             a dense layer's FFN (``dense_ffn_s``) and its activation (Megatron applies
                    "mlp" to dense MLP submodules only, not to an MoE layer)
    shared_experts  the shared experts' FFN (``shared_experts_s``) and activation
    moe             the whole MoE layer: router, dispatch, routed experts, shared experts,
                    combine and the activations (a recomputed MoE layer runs its all-to-alls again)

NOTE: the re-run kernels' launch floors, the RoPE of mla_up_proj and the permutes of a recomputed
MoE layer are not priced (each well under 1% of a layer); host issue of the recomputed operators is
priced for full recompute only (moesim/step/training.py).
"""
from __future__ import annotations

from moesim.specs import ModelSpec
from moesim.step.elementwise import ACT_BYTES, gate_elements, memory_bound_s

# breakdown components a recompute adds to (moesim/step/estimate.py LAYER_COMPONENTS)
RECOMPUTE_COMPONENTS: tuple[str, ...] = ("attention_s", "elementwise_s", "router_s", "dispatch_s", "experts_s",
                                         "shared_experts_s", "combine_s", "dense_ffn_s")
NORM_ELEMENTS_PER_D = 4.0  # two RMSNorms, each reads and writes D elements per token


def up_projection_shapes(model: ModelSpec, tp: int) -> list[tuple[int, int]]:
    """(n, k) of MLA's up-projection GEMMs per token row on one TP rank (training/prefill form);
    empty for a model without MLA. Without query compression (q_lora_rank 0) q is a direct
    projection of the hidden state, not an up-projection."""
    a = model.attention
    if a.kind != "mla":
        return []
    h = a.num_heads // tp
    shapes = [(h * a.qk_head_dim, a.q_lora_rank)] if a.q_lora_rank else []
    return shapes + [(h * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank)]


def module_forward_s(setup, op, moe: bool, tokens: float, modules: frozenset[str]) -> dict[str, float]:
    """Seconds of one layer's forward work that ``modules`` recompute, by breakdown component
    (module docstring). ``op``: the layer's forward ``LayerOps`` for ``tokens`` owned tokens per
    device (moesim/step/layer.py ``layer_ops``)."""
    from moesim.step import pricing

    out = dict.fromkeys(RECOMPUTE_COMPONENTS, 0.0)
    if not modules or tokens <= 0:
        return out
    model, hw, f = setup.model, setup.hw, setup.device_fraction
    d, gate = model.hidden, gate_elements(model)

    def stream(elements_per_token: float) -> float:
        return memory_bound_s(hw, tokens * elements_per_token * ACT_BYTES) / f

    if "core_attn" in modules:
        out["attention_s"] += op.attention_core_s
    if "mla_up_proj" in modules:
        tp = setup.attention_tp
        out["attention_s"] += sum(pricing.gemm_s(hw, tokens * tp, n, k, setup.projection_dtype)
                                  for n, k in up_projection_shapes(model, tp)) / f
    if "layernorm" in modules:
        out["elementwise_s"] += stream(NORM_ELEMENTS_PER_D * d)
    if not moe:
        if "mlp" in modules:
            out["dense_ffn_s"] += op.dense_ffn_s
            out["elementwise_s"] += stream(gate * model.dense_ffn / setup.attention_tp)
        return out
    m = model.moe
    routed_act = gate * m.top_k * m.expert_ffn
    shared_act = gate * m.num_shared_experts * m.shared_expert_ffn / setup.attention_tp
    if "moe" in modules:
        for name in ("router_s", "dispatch_s", "experts_s", "shared_experts_s", "combine_s"):
            out[name] += getattr(op, name)
        out["elementwise_s"] += stream(routed_act + shared_act)
        return out
    if "moe_act" in modules:
        out["elementwise_s"] += stream(routed_act)
    if "shared_experts" in modules:
        out["shared_experts_s"] += op.shared_experts_s
        out["elementwise_s"] += stream(shared_act)
    return out
