"""Parameter and FLOP counts of a ModelSpec, by component.

Counting convention (stated, because published figures differ in it):
- counted: attention projections (and their biases, sinks and q/k norms where the model has
  them), MLA down/up projections and their norms, routers (and router biases), routed experts,
  shared experts (and the Qwen shared-expert gate), dense FFNs, RMSNorm weights, the input
  embedding and an untied LM head;
- not counted: FFN biases (gpt-oss expert biases, < 0.1% of its total), rotary tables;
- MTP layers (DeepSeek-V3) are counted apart in ``mtp`` and are not in ``total``;
- ``active`` counts what one token touches: top_k routed experts plus everything dense; it
  includes the input-embedding row table, ``active_without_input_embedding`` does not.
This is the convention of docs/reference/moe-models.md's C-check (which also ignores norms;
norms add < 0.01% here).

FLOPs: a matmul with P weights costs 2P FLOPs per token (multiply + add). The attention context
term per layer is 2 x heads x (qk_head_dim + v_head_dim) FLOPs per attended key (scores QK^T and
the weighted sum of V). The input embedding is a lookup: no FLOPs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from moesim.specs.model import ModelSpec


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model by component (counts, not bytes)."""

    embedding: int
    lm_head: int
    attention: int
    norms: int
    dense_ffn: int
    router: int
    routed_experts: int
    shared_experts: int
    mtp: int
    active: int
    active_without_input_embedding: int

    @property
    def total(self) -> int:
        """All parameters except MTP layers."""
        return (
            self.embedding + self.lm_head + self.attention + self.norms + self.dense_ffn
            + self.router + self.routed_experts + self.shared_experts
        )

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        d["total_with_mtp"] = self.total_with_mtp
        return d


def attention_params_per_layer(model: ModelSpec) -> int:
    """Weights of one attention block (projections, biases, sinks, q/k norms, MLA norms)."""
    a, h = model.attention, model.hidden
    if a.kind == "mla":
        q_width = a.num_heads * a.qk_head_dim
        if a.q_lora_rank:
            q = h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * q_width
        else:
            q = h * q_width
        kv_a = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv_b = a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
        o = a.num_heads * a.v_head_dim * h
        return q + kv_a + kv_b + o
    q_width = a.num_heads * a.head_dim
    kv_width = a.num_kv_heads * a.head_dim
    params = h * q_width + 2 * h * kv_width + q_width * h
    if a.attention_bias:
        params += q_width + 2 * kv_width + h
    if a.sinks:
        params += a.num_heads
    if a.qk_norm:
        params += 2 * a.head_dim
    return params


def ffn_params(model: ModelSpec, width: int) -> int:
    """Weights of one FFN of intermediate ``width`` (3 matrices gated, 2 ReLU)."""
    return model.ffn_matrices * model.hidden * width


def expert_params(model: ModelSpec) -> int:
    """Weights of one routed expert."""
    return ffn_params(model, model.moe.expert_ffn) if model.moe else 0


def shared_params_per_layer(model: ModelSpec) -> int:
    """Weights of the shared experts of one MoE layer (and their gate)."""
    m = model.moe
    if m is None or m.num_shared_experts == 0:
        return 0
    gate = model.hidden if m.shared_expert_gate else 0
    return m.num_shared_experts * ffn_params(model, m.shared_expert_ffn) + gate


def router_params_per_layer(model: ModelSpec) -> int:
    m = model.moe
    if m is None:
        return 0
    return model.hidden * m.num_experts + (m.num_experts if m.router_bias else 0)


def _moe_layer_params(model: ModelSpec, experts: int) -> int:
    """Router, ``experts`` routed experts and the shared experts of one MoE layer."""
    return router_params_per_layer(model) + experts * expert_params(model) + shared_params_per_layer(model)


def param_counts(model: ModelSpec) -> ParamCounts:
    """Parameters by component under the convention in the module docstring."""
    h, layers = model.hidden, model.num_layers
    n_moe, n_dense = model.moe_layers, model.dense_layers
    m = model.moe
    embedding = model.vocab_size * h
    lm_head = 0 if model.tie_embeddings else model.vocab_size * h
    attention = layers * attention_params_per_layer(model)
    norms = layers * 2 * h + h
    dense_ffn = n_dense * ffn_params(model, model.dense_ffn) if n_dense else 0
    if m is not None and m.parallel_dense_ffn:
        dense_ffn += n_moe * ffn_params(model, model.dense_ffn)
    router = n_moe * router_params_per_layer(model)
    routed = n_moe * m.num_experts * expert_params(model) if m else 0
    shared = n_moe * shared_params_per_layer(model)
    mtp = 0
    if model.mtp_layers and m is not None:
        # One MTP module = a full MoE layer + eh_proj (2h x h) + two norms on its inputs
        # (DeepSeek-V3 README_WEIGHTS); embedding and head are shared with the main model.
        one = attention_params_per_layer(model) + _moe_layer_params(model, m.num_experts)
        mtp = model.mtp_layers * (one + 2 * h * h + 2 * h + 2 * h)
    active_moe = n_moe * _moe_layer_params(model, m.top_k) if m else 0
    active_wo_emb = lm_head + attention + norms + dense_ffn + active_moe
    if model.tie_embeddings:
        active_wo_emb += embedding  # the tied table serves as the LM head
    return ParamCounts(
        embedding=embedding,
        lm_head=lm_head,
        attention=attention,
        norms=norms,
        dense_ffn=dense_ffn,
        router=router,
        routed_experts=routed,
        shared_experts=shared,
        mtp=mtp,
        active=active_wo_emb + (0 if model.tie_embeddings else embedding),
        active_without_input_embedding=active_wo_emb,
    )


def attention_context_flops_per_key(model: ModelSpec, mla_absorbed: bool = False) -> int:
    """FLOPs one query token spends per attended key in one layer (QK^T and AV).

    MLA absorbed (decode): scores over the latent (kv_lora_rank + rope) and values in the
    latent (kv_lora_rank), per head (DeepSeek-V2 paper, "absorb W^UK into W^Q").
    """
    a = model.attention
    if a.kind == "mla" and mla_absorbed:
        return 2 * a.num_heads * ((a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank)
    return 2 * a.num_heads * (a.qk_head_dim + a.v_dim)


def attended_keys(model: ModelSpec, layer: int, context: float) -> float:
    """Keys a query at ``context`` tokens of history attends to in ``layer`` (window-capped)."""
    if model.layer_is_windowed(layer):
        return min(context, float(model.attention.window_tokens))
    return context


def forward_flops_per_token(model: ModelSpec, context: float = 0.0, mla_absorbed: bool = False) -> float:
    """Forward FLOPs for one token that attends to ``context`` keys (0 = weights only).

    = 2 x (active weights touched by matmuls: everything active except the input embedding)
      + sum over layers of attention_context_flops_per_key x attended keys.
    For a causal sequence of length S, the mean token attends to (S + 1) / 2 keys; use
    ``sequence_forward_flops_per_token`` for that.
    """
    pc = param_counts(model)
    matmul = 2.0 * pc.active_without_input_embedding - 2.0 * pc.norms
    if context <= 0:
        return matmul
    per_key = attention_context_flops_per_key(model, mla_absorbed)
    keys = sum(attended_keys(model, i, context) for i in range(model.num_layers))
    return matmul + per_key * keys


def sequence_forward_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Mean forward FLOPs per token of a causal sequence of ``seq_len`` tokens (prefill/training)."""
    a = model.attention
    per_key = attention_context_flops_per_key(model)
    matmul = forward_flops_per_token(model, 0.0)
    total_keys = 0.0
    for i in range(model.num_layers):
        if model.layer_is_windowed(i):
            w = min(a.window_tokens, seq_len)
            # positions 1..w attend to themselves and all before; later ones to w keys
            keys = w * (w + 1) / 2 + (seq_len - w) * w
        else:
            keys = seq_len * (seq_len + 1) / 2
        total_keys += keys / seq_len
    return matmul + per_key * total_keys
