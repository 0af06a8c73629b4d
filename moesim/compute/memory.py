"""Memory footprint of one device of a deployment: weights, KV cache, activations, optimizer.

Sizes are for the most loaded device: the pipeline stage with the most parameters (stage 0
holds the input embedding, the last stage the LM head) and an EP rank with
``ceil((E + redundant) / ep)`` expert slots. Conventions:

- weights: attention, dense FFN, shared experts, embedding and LM head are split over TP;
  routed experts over EP (and ETP inside an expert); router and norms are replicated.
  Bytes per weight = ``bytes_per_element(weight_dtype)`` (model.weight_dtype by default). A
  checkpoint that ships its experts in their own format (``ModelSpec.expert_weight_dtype``:
  GPT-OSS's MXFP4 experts, BF16 elsewhere) is served as stored: in ``serve`` mode its experts
  count at that format and the rest at ``model.weight_dtype``, whatever ``weight_dtype`` the run
  states (the engines load it as is: moesim/step/setup.py ``expert_gemm_dtypes``).
- KV cache per token: sum over the stage's layers of ``ModelSpec.kv_elements_per_token()`` x
  kv bytes; GQA heads split over TP (at least one head per rank); MLA's latent is replicated over
  TP (every rank needs it). Windowed layers are counted in full (conservative for fit).
- training (Korthikanti et al. 2022, "Reducing activation recomputation", without the attention
  score term that flash attention never stores): per token and layer, in elements of 2 bytes,
  attention 2D + 2 q_w + 2 kv_w, norms 2D, FFN D + 3F (SwiGLU: gate and up outputs, activation);
  an MoE FFN stores top_k copies of D + 3F_expert plus the shared experts'. Selective recompute
  drops what its modules recompute (moesim/step/recompute.py; Megatron-Core's default core_attn
  drops nothing here, since flash attention stores no score matrix): layernorm the norms, moe_act
  the routed activation output (D + 2F kept per copy), mla_up_proj MLA's up-projected q, k, v
  (the latents kept), mlp a dense FFN and moe an MoE layer but its input D, shared_experts the
  shared experts; full recompute keeps only each layer's input (D) plus one layer's working set. Sequence parallel divides by tp, context parallel by cp.
  With 1F1B, stage 0 holds pp micro-batches in flight. Trained MTP modules (DeepSeek-V3's
  multi-token prediction: a transformer layer of the last layer's kind, eh_proj 2h x h and three
  norms each; the embedding and head shared with the model) sit on the last stage with the head.
- mixed-precision Adam: gradients (4 B/param fp32 main_grad, not sharded) and 12 B/param of
  fp32 master weights, first and second moments, sharded over the data-parallel replicas of
  that parameter when the distributed optimizer is on (dp x cp for dense, expert-dp for experts).
- ``sharding`` over the data-parallel group of each parameter (ZeRO, Rajbhandari et al. 2020,
  arXiv 1910.02054, Fig. 1; FSDP, Zhao et al. 2023, arXiv 2304.11277; MaxText/XLA's ``fsdp``
  mesh axis is ZeRO-3): ``ddp`` shards nothing; ``zero1`` the optimizer states (= the
  distributed optimizer, the default); ``zero2`` also the gradients; ``zero3`` / ``fsdp`` also
  the weights, plus the gathered working set of two layers' full weights and gradients (the
  unit being computed and the one prefetched; FSDP's default one-unit prefetch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from moesim import units
from moesim.compute.counts import attention_params_per_layer, expert_params, ffn_params, router_params_per_layer, shared_params_per_layer
from moesim.errors import SpecError
from moesim.specs import HardwareProfile, ModelSpec, Parallelism, bytes_per_element, check_parallelism, experts_per_rank
from moesim.specs.deployment import recomputed_modules
from moesim.specs.pipeline_layout import pipeline_stages

Recompute = Literal["none", "selective", "full"]
Sharding = Literal["ddp", "zero1", "zero2", "zero3", "fsdp"]
SHARDINGS: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3", "fsdp")
GRAD_BYTES = 4.0  # fp32 main gradient per parameter
RECOMPUTE: tuple[str, ...] = ("none", "selective", "full")
ADAM_STATE_BYTES = 12.0  # fp32 master weight + Adam m + Adam v (4 B each) per parameter
ACT_BYTES = 2.0  # activations kept in bf16


@dataclass(frozen=True)
class MemoryFootprint:
    """Bytes on the most loaded device and whether they fit in its HBM."""

    mode: str
    weight_bytes: float
    expert_weight_bytes: float
    kv_bytes_per_token: float
    kv_cache_bytes: float
    kv_tokens_fit: int
    activation_bytes: float
    gradient_bytes: float
    optimizer_bytes: float
    reserve_bytes: float
    total_bytes: float
    capacity_bytes: float
    fits: bool
    shortfall_GiB: float
    reason: str

    @property
    def free_bytes(self) -> float:
        return self.capacity_bytes - self.total_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_GiB"] = self.total_bytes / units.GiB
        d["capacity_GiB"] = self.capacity_bytes / units.GiB
        d["weight_GiB"] = self.weight_bytes / units.GiB
        return d


def stage_params(model: ModelSpec, par: Parallelism, mtp_layers: int = 0,
                 layout: str | None = None) -> list[tuple[float, float]]:
    """(non-expert params, routed-expert params) per device of each pipeline rank, as
    ``pipeline_stages`` places the layers (ceil split, or a Megatron ``layout``) with
    ``mtp_layers`` MTP modules (training: ``Deployment.trained_mtp``)."""
    tp, etp = par.tp, par.etp
    attn = attention_params_per_layer(model) / tp + 2 * model.hidden
    dense = ffn_params(model, model.dense_ffn) / tp if model.dense_ffn else 0.0
    slots = experts_per_rank(model, par)

    def layer(i: int) -> tuple[float, float]:
        if not model.layer_is_moe(i):
            return attn + dense, 0.0
        base = attn + router_params_per_layer(model) + shared_params_per_layer(model) / tp
        return base + (dense if model.moe.parallel_dense_ffn else 0.0), slots * expert_params(model) / etp

    out = []
    h = model.hidden
    for rank in pipeline_stages(model.num_layers, par.pp, par.vpp, mtp_layers, layout):
        base, experts = 0.0, 0.0
        for i in rank.layers:
            b, e = layer(i)
            base, experts = base + b, experts + e
        if rank.embedding:
            base += model.vocab_size * h / tp
        if rank.head and not model.tie_embeddings:
            base += model.vocab_size * h / tp
        b, e = layer(model.num_layers - 1)  # an MTP module's transformer layer: the last layer's kind
        base += rank.mtp * (b + 2 * h * h / tp + 3 * h)  # + eh_proj (2h -> h) and enorm, hnorm, its final norm
        experts += rank.mtp * e
        out.append((base, experts))
    return out


def kv_bytes_per_token(model: ModelSpec, par: Parallelism, kv_dtype: str, layers: range | None = None) -> float:
    """KV-cache bytes one token occupies on one device (the layers of one stage)."""
    att = model.attention
    layers = range(model.num_layers) if layers is None else layers
    if att.kind == "mla":
        per_layer = float(model.kv_elements_per_token("latent"))
    else:
        heads = max(1.0, att.num_kv_heads / par.tp)
        per_layer = 2.0 * heads * att.head_dim
    return len(layers) * per_layer * bytes_per_element(kv_dtype)


def activation_elements_per_token_layer(model: ModelSpec, moe: bool, recompute: str,
                                        modules: tuple[str, ...] | None = None) -> float:
    """Stored activation elements per token in one layer (module docstring); ``modules``: the
    selective recompute's modules (``recomputed_modules``: Megatron's core_attn by default)."""
    att, d = model.attention, model.hidden
    q_w = att.num_heads * att.qk_head_dim
    kv_w = (att.num_heads if att.kind == "mla" else att.num_kv_heads) * (att.qk_head_dim + att.v_dim) / 2
    if recompute == "full":
        return float(d)
    rec = recomputed_modules(recompute, modules)
    if "mla_up_proj" in rec and att.kind == "mla":  # only the latents stay; q without compression stays
        q_w = att.q_lora_rank or q_w
        kv_w = att.kv_lora_rank + att.qk_rope_head_dim

    def ffn(width: float, act_recomputed: bool) -> float:
        return d + (2 * width if act_recomputed else 3 * width)

    if moe:
        m = model.moe
        if "moe" in rec:
            f = float(d)
        else:
            shared = 0.0 if "shared_experts" in rec else m.num_shared_experts * ffn(m.shared_expert_ffn, False)
            f = m.top_k * ffn(m.expert_ffn, "moe_act" in rec) + shared + m.num_experts
    else:
        f = float(d) if "mlp" in rec else ffn(model.dense_ffn, False)
    norms = 0.0 if "layernorm" in rec else 2.0 * d
    return 2.0 * d + 2.0 * q_w + 2.0 * kv_w + norms + f


def memory_footprint(model: ModelSpec, hw: HardwareProfile, par: Parallelism, *,
                     mode: Literal["serve", "train"] = "serve", weight_dtype: str | None = None,
                     kv_dtype: str | None = None, kv_tokens: int = 0, micro_batch: int = 1,
                     seq_len: int = 4096, recompute: Recompute = "none", recompute_modules: tuple[str, ...] | None = None,
                     distributed_optimizer: bool = True, reserve_GiB: float = 0.0,
                     sharding: Sharding | None = None, mtp_layers: int = 0,
                     pipeline_layout: str | None = None) -> MemoryFootprint:
    """Bytes per device of ``model`` under ``par`` on ``hw``; never raises for a misfit.

    serve: weights + ``kv_tokens`` of KV cache (``kv_tokens_fit`` = tokens the rest would hold).
    train: weights + gradients + optimizer states + activations of ``micro_batch`` x ``seq_len``;
    ``sharding`` (train only; default ``zero1``, or ``ddp`` when ``distributed_optimizer`` is
    False) says what is sharded over the data-parallel group (module docstring); ``mtp_layers``
    (train only) MTP modules on the last stage, each one more layer of weights and activations;
    ``pipeline_layout`` (train only) a Megatron layout placing the layers (moesim/specs/
    pipeline_layout.py; None: the ceil split).
    """
    if sharding is None:
        sharding = "zero1" if distributed_optimizer else "ddp"
    if sharding not in SHARDINGS:
        raise SpecError("sharding", sharding, f"allowed: {', '.join(SHARDINGS)}")
    if mode not in ("serve", "train"):
        raise SpecError("mode", mode, "allowed: serve, train")
    if recompute not in RECOMPUTE:
        raise SpecError("recompute", recompute, f"allowed: {', '.join(RECOMPUTE)}")
    for name, v in (("kv_tokens", kv_tokens), ("reserve_GiB", reserve_GiB), ("mtp_layers", mtp_layers)):
        if v < 0:
            raise SpecError(name, v, "must be >= 0")
    for name, v in (("micro_batch", micro_batch), ("seq_len", seq_len)):
        if v <= 0:
            raise SpecError(name, v, "must be positive")
    check_parallelism(model, par, pipeline_layout=pipeline_layout if mode == "train" else None)
    w_bytes = bytes_per_element(weight_dtype or model.weight_dtype)
    kv_dt = kv_dtype or ("bf16" if (weight_dtype or model.weight_dtype) in ("fp8", "fp4") else (weight_dtype or model.weight_dtype))
    mtp = mtp_layers if mode == "train" else 0
    layout = pipeline_layout if mode == "train" else None
    ranks = pipeline_stages(model.num_layers, par.pp, par.vpp, mtp, layout)
    stages = stage_params(model, par, mtp, layout)
    s = max(range(len(stages)), key=lambda i: sum(stages[i]))
    base, experts = stages[s]
    layers = ranks[s].layers
    e_bytes = w_bytes
    if mode == "serve" and model.expert_weight_dtype:  # served as stored (module docstring)
        w_bytes, e_bytes = bytes_per_element(model.weight_dtype), bytes_per_element(model.expert_weight_dtype)
    weights = base * w_bytes + experts * e_bytes
    expert_w = experts * e_bytes
    kv_tok = kv_bytes_per_token(model, par, kv_dt, layers)
    reserve = reserve_GiB * units.GiB
    grads = opt = acts = kv_cache = 0.0
    if mode == "train":
        dp_dense, dp_exp = par.dp * par.cp, par.expert_dp
        sharded = lambda level: (base / dp_dense + experts / dp_exp) if SHARDINGS.index(sharding) >= level \
            else base + experts  # noqa: E731 - params per device at a sharding level
        grads = sharded(2) * GRAD_BYTES
        opt = ADAM_STATE_BYTES * sharded(1)
        if sharding in ("zero3", "fsdp"):
            unit = 2.0 * (base + experts) / max(1, len(layers))   # two layers gathered at a time
            weights = (sharded(3) + unit) * w_bytes
            expert_w = experts / dp_exp * w_bytes
            grads += unit * GRAD_BYTES
        tokens = micro_batch * seq_len * min(par.pp, 1 + par.pp - 1 - s) / (par.tp * par.cp)
        stored = [*layers, *[model.num_layers - 1] * ranks[s].mtp]  # MTP: the last layer's kind
        per_tok = sum(activation_elements_per_token_layer(model, model.layer_is_moe(i), recompute, recompute_modules)
                      for i in stored)
        if recompute == "full":
            one = activation_elements_per_token_layer(model, model.is_moe, "none")
            acts = (tokens * per_tok + micro_batch * seq_len / (par.tp * par.cp) * one) * ACT_BYTES
        else:
            acts = tokens * per_tok * ACT_BYTES
    else:
        kv_cache = kv_tokens * kv_tok
    total = weights + grads + opt + acts + kv_cache + reserve
    cap = hw.hbm_bytes
    free = cap - (weights + grads + opt + acts + reserve)
    fit_tokens = int(max(0.0, free) // kv_tok) if kv_tok > 0 else 0
    fits = total <= cap
    shortfall = max(0.0, total - cap) / units.GiB
    reason = "" if fits else (
        f"needs {total / units.GiB:.1f} GiB per device (weights {weights / units.GiB:.1f}"
        + (f", grads {grads / units.GiB:.1f}, optimizer {opt / units.GiB:.1f}, activations {acts / units.GiB:.1f}" if mode == "train" else f", KV {kv_cache / units.GiB:.1f}")
        + f") but {hw.name} has {cap / units.GiB:.1f} GiB: short by {shortfall:.1f} GiB"
    )
    return MemoryFootprint(
        mode=mode, weight_bytes=weights, expert_weight_bytes=expert_w, kv_bytes_per_token=kv_tok,
        kv_cache_bytes=kv_cache, kv_tokens_fit=fit_tokens, activation_bytes=acts, gradient_bytes=grads,
        optimizer_bytes=opt, reserve_bytes=reserve, total_bytes=total, capacity_bytes=cap, fits=fits,
        shortfall_GiB=shortfall, reason=reason,
    )
