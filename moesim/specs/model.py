"""Model spec: the dimensions of a (sparse or dense) decoder-only transformer.

Presets live in ``moesim/presets/*.toml``, one per model, with the dimensions of the model's
published config and a ``sources`` entry for every section. Field names follow the Hugging Face
config where one exists, shortened (``hidden`` for ``hidden_size``).

Layer layout: layer ``i`` (0-based) is an MoE layer iff ``i >= moe.first_k_dense`` and
``(i + 1) % moe.moe_layer_step == 0`` (DeepSeek's ``first_k_dense_replace``; Llama-4's
``interleave_moe_layer_step``). Windowed attention: when ``attention.window_tokens`` is set,
layer ``i`` attends globally iff ``attention.full_attention_every`` is set and
``(i + 1) % full_attention_every == 0`` (gpt-oss: sliding first, then full; Llama-4: every
4th layer global).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from moesim.errors import SpecError
from moesim.specs.common import Spec, canonical_dtype
from moesim.specs.hardware import Sourced


# NOTE: published models have at most a few hundred layers; code walks layers one by one, so a
# typo such as 10**12 layers would run for hours: refused at the boundary instead.
MAX_LAYERS = 100_000


class AttentionSpec(Sourced):
    """Self-attention: MHA/GQA (``num_kv_heads`` x ``head_dim``) or MLA (DeepSeek latent KV)."""

    kind: Literal["mha", "gqa", "mla"]
    num_heads: int = Field(gt=0)
    num_kv_heads: int | None = Field(None, gt=0, description="MHA/GQA only; nominal under MLA")
    head_dim: int | None = Field(None, gt=0, description="MHA/GQA only (may differ from hidden/heads)")
    q_lora_rank: int = Field(0, ge=0, description="MLA query compression rank; 0 = none")
    kv_lora_rank: int | None = Field(None, gt=0, description="MLA compressed KV width")
    qk_nope_head_dim: int | None = Field(None, gt=0)
    qk_rope_head_dim: int | None = Field(None, gt=0)
    v_head_dim: int | None = Field(None, gt=0)
    window_tokens: int | None = Field(None, gt=0, description="sliding window or chunk size")
    window_kind: Literal["sliding", "chunked"] = "sliding"
    full_attention_every: int | None = Field(
        None, gt=0, description="with a window: every n-th layer attends globally; None = all windowed"
    )
    attention_bias: bool = False
    qk_norm: bool = False
    sinks: bool = Field(False, description="learned per-head attention sinks (gpt-oss)")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "mla":
            missing = [
                f
                for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
                if getattr(self, f) is None
            ]
            if missing:
                raise SpecError(missing[0], None, f"kind 'mla' needs {', '.join(missing)}")
        else:
            if self.num_kv_heads is None or self.head_dim is None:
                missing = "num_kv_heads" if self.num_kv_heads is None else "head_dim"
                raise SpecError(missing, None, f"kind {self.kind} needs num_kv_heads and head_dim")
            if self.num_heads % self.num_kv_heads:
                raise SpecError("num_heads", self.num_heads, "allowed: a multiple of num_kv_heads")
            if self.kind == "mha" and self.num_kv_heads != self.num_heads:
                raise SpecError("num_kv_heads", self.num_kv_heads,
                                "kind 'mha' needs num_kv_heads == num_heads (use 'gqa' otherwise)")
        return self

    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head (nope + rope under MLA)."""
        if self.kind == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of one value head."""
        return self.v_head_dim if self.kind == "mla" else self.head_dim


class MoESpec(Sourced):
    """Routed and shared experts, the router, and which layers are MoE."""

    num_experts: int = Field(gt=0, description="routed experts per MoE layer")
    top_k: int = Field(gt=0, description="routed experts per token")
    expert_ffn: int = Field(gt=0, description="intermediate width of one routed expert")
    num_shared_experts: int = Field(0, ge=0)
    shared_expert_ffn: int = Field(
        0, ge=0, description="intermediate width of one shared expert (a fused block counts as one)"
    )
    shared_expert_gate: bool = Field(False, description="sigmoid gate on the shared block (Qwen)")
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = Field(1.0, gt=0)
    router_bias: bool = False
    n_groups: int = Field(1, gt=0, description="expert groups for group-limited routing")
    topk_groups: int = Field(1, gt=0, description="groups a token may use")
    group_scoring: Literal["max", "top2_sum"] = Field(
        "max", description="group score: best expert (DeepSeek-V2) or sum of the top two (DeepSeek-V3)"
    )
    first_k_dense: int = Field(0, ge=0, description="leading layers that use the dense FFN")
    moe_layer_step: int = Field(1, gt=0, description="every n-th layer (after first_k_dense) is MoE")
    parallel_dense_ffn: bool = Field(
        False, description="a dense FFN runs beside the MoE in every layer (Arctic's residual MoE)"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_k > self.num_experts:
            raise SpecError("top_k", self.top_k, "allowed: at most num_experts")
        if self.num_experts % self.n_groups:
            raise SpecError("n_groups", self.n_groups, "allowed: a divisor of num_experts")
        if self.topk_groups > self.n_groups:
            raise SpecError("topk_groups", self.topk_groups, "allowed: at most n_groups")
        per_group = self.num_experts // self.n_groups
        if self.top_k > self.topk_groups * per_group:
            raise SpecError("top_k", self.top_k,
                            "allowed: at most topk_groups x num_experts / n_groups (the experts of the chosen groups)")
        if (self.num_shared_experts > 0) != (self.shared_expert_ffn > 0):
            raise SpecError("num_shared_experts", self.num_shared_experts,
                            "num_shared_experts and shared_expert_ffn must both be zero or both positive")
        return self


class PublishedCounts(Spec):
    """Parameter counts the model's authors published, and how they counted."""

    total_params_B: float = Field(gt=0)
    active_params_B: float = Field(gt=0)
    active_counts_input_embedding: bool = Field(
        True, description="False where the vendor leaves the input embedding out of 'active'"
    )
    total_includes_mtp: bool = False
    convention: str = Field("", description="what the published figure counts (vision encoder, MTP, ...)")
    source: str


class ModelSpec(Sourced):
    """A decoder-only transformer, MoE or dense. Dims from the model's published config."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    display_name: str
    family: str = ""
    num_layers: int = Field(gt=0, le=MAX_LAYERS, description="transformer blocks (at most 100,000: more is a typo)")
    hidden: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_embeddings: bool = False
    max_context: int = Field(gt=0)
    ffn_activation: Literal["swiglu", "geglu", "relu"] = "swiglu"
    dense_ffn: int | None = Field(None, gt=0, description="intermediate width of the dense FFN")
    attention: AttentionSpec
    moe: MoESpec | None = None
    mtp_layers: int = Field(0, ge=0, description="extra multi-token-prediction layers (not in num_layers)")
    weight_dtype: str = Field("bf16", description="dtype of the released weights")
    expert_weight_dtype: str | None = Field(None, description="dtype of expert weights when different")
    published: PublishedCounts | None = None
    notes: str = ""

    @field_validator("weight_dtype", "expert_weight_dtype")
    @classmethod
    def _known_dtype(cls, value, info):
        if value is not None:
            canonical_dtype(value, field=info.field_name)
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.moe is None and self.dense_ffn is None:
            raise SpecError("dense_ffn", None, "a dense model (no [moe] table) needs dense_ffn")
        if self.moe is not None:
            if self.moe.first_k_dense >= self.num_layers:
                raise SpecError("moe.first_k_dense", self.moe.first_k_dense, "allowed: below num_layers")
            needs_dense = self.moe.first_k_dense > 0 or self.moe.moe_layer_step > 1
            if (needs_dense or self.moe.parallel_dense_ffn) and self.dense_ffn is None:
                raise SpecError("dense_ffn", None,
                                "dense layers (first_k_dense, moe_layer_step or parallel_dense_ffn) need dense_ffn")
        return self

    # ---- layout -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def layer_is_moe(self, i: int) -> bool:
        """Whether layer ``i`` (0-based) has routed experts."""
        if self.moe is None:
            return False
        return i >= self.moe.first_k_dense and (i + 1) % self.moe.moe_layer_step == 0

    @property
    def moe_layers(self) -> int:
        return sum(self.layer_is_moe(i) for i in range(self.num_layers))

    @property
    def dense_layers(self) -> int:
        """Layers with a dense FFN in place of the MoE (not counting Arctic's parallel dense FFN)."""
        return self.num_layers - self.moe_layers

    def layer_is_windowed(self, i: int) -> bool:
        """Whether layer ``i`` uses windowed (sliding or chunked) attention."""
        att = self.attention
        if att.window_tokens is None:
            return False
        if att.full_attention_every is None:
            return True
        return (i + 1) % att.full_attention_every != 0

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices per FFN: 3 for gated (SwiGLU, GeGLU), 2 for ReLU."""
        return 2 if self.ffn_activation == "relu" else 3

    def kv_elements_per_token(self, mla_cache: Literal["latent", "full"] = "latent") -> int:
        """KV-cache elements one token stores in one layer (moe-models.md, Tables C and D)."""
        att = self.attention
        if att.kind == "mla":
            if mla_cache == "latent":
                return att.kv_lora_rank + att.qk_rope_head_dim
            return att.num_heads * (att.qk_head_dim + att.v_head_dim)
        return 2 * att.num_kv_heads * att.head_dim
