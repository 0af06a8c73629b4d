"""Hugging Face ``config.json`` -> moesim model spec (``moesim models import``, ``--model hf:PATH``).

A local file only: nothing is downloaded. One mapper per ``model_type`` (a dict literal, no fuzzy
matching) turns the config's fields into :class:`~moesim.specs.ModelSpec` fields; the spec then
validates itself. A field the mapper needs and the config lacks, and a config field whose value
moesim cannot represent (``mlp_only_layers`` listing layers, a layer pattern other than leading
dense layers + every n-th MoE, an activation other than SiLU/GELU-gated), is named in the error.

Covered: DeepSeek-V2/V3 and Kimi-K2 (``deepseek_v2``, ``deepseek_v3``, ``kimi_k2``), Qwen2-MoE and
Qwen3-MoE (``qwen2_moe``, ``qwen3_moe``), Mixtral (``mixtral``), gpt-oss (``gpt_oss``), Llama-4
(``llama4`` with its ``text_config``, ``llama4_text``), OLMoE (``olmoe``), DBRX (``dbrx``) and dense
Llama (``llama``). tests/test_hf_import.py checks the parameter counts of imported published
configs against the presets of the same models.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from moesim.errors import MoesimError

HF_PREFIX = "hf:"


class HFImportError(MoesimError):
    """A config this importer cannot map; names the field."""


def _get(cfg: dict, key: str, source: str, default: Any = ...) -> Any:
    value = cfg.get(key, None)
    if value is None:
        if default is ...:
            raise HFImportError(f"{source}: config field {key!r} is missing (needed for {cfg.get('model_type')})")
        return default
    return value


def _dtype(cfg: dict) -> str:
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") == "fp8" or q.get("fmt") == "e4m3":
        return "fp8"
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
        cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16", "bf16")


def _activation(cfg: dict, source: str, key: str = "hidden_act") -> str:
    act = cfg.get(key, "silu")
    table = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu"}
    if act not in table:
        raise HFImportError(f"{source}: {key} = {act!r} cannot be mapped (moesim models SiLU- or GELU-gated FFNs)")
    return table[act]


def _gqa(cfg: dict, source: str, *, heads="num_attention_heads", kv="num_key_value_heads",
         hidden="hidden_size") -> dict:
    n = _get(cfg, heads, source)
    nkv = _get(cfg, kv, source, n)
    head_dim = cfg.get("head_dim") or _get(cfg, hidden, source) // n
    return {"kind": "mha" if nkv == n else "gqa", "num_heads": n, "num_kv_heads": nkv, "head_dim": head_dim,
            "attention_bias": bool(cfg.get("attention_bias", False))}


def _base(cfg: dict, source: str) -> dict:
    return {
        "num_layers": _get(cfg, "num_hidden_layers", source),
        "hidden": _get(cfg, "hidden_size", source),
        "vocab_size": _get(cfg, "vocab_size", source),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "max_context": _get(cfg, "max_position_embeddings", source),
        "ffn_activation": _activation(cfg, source),
        "weight_dtype": _dtype(cfg),
    }


def _deepseek(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    q_lora = cfg.get("q_lora_rank") or 0
    d["attention"] = {"kind": "mla", "num_heads": _get(cfg, "num_attention_heads", source), "q_lora_rank": q_lora,
                      "kv_lora_rank": _get(cfg, "kv_lora_rank", source),
                      "qk_nope_head_dim": _get(cfg, "qk_nope_head_dim", source),
                      "qk_rope_head_dim": _get(cfg, "qk_rope_head_dim", source),
                      "v_head_dim": _get(cfg, "v_head_dim", source)}
    shared = cfg.get("n_shared_experts") or 0
    ffn = _get(cfg, "moe_intermediate_size", source)
    method = cfg.get("topk_method", "greedy")
    d["moe"] = {"num_experts": _get(cfg, "n_routed_experts", source),
                "top_k": _get(cfg, "num_experts_per_tok", source), "expert_ffn": ffn,
                "num_shared_experts": shared, "shared_expert_ffn": ffn if shared else 0,
                "router_scoring": _get(cfg, "scoring_func", source, "softmax"),
                "norm_topk_prob": bool(cfg.get("norm_topk_prob", False)),
                "routed_scaling_factor": float(cfg.get("routed_scaling_factor") or 1.0),
                "n_groups": cfg.get("n_group") or 1, "topk_groups": cfg.get("topk_group") or 1,
                "group_scoring": "top2_sum" if method == "noaux_tc" else "max",
                "first_k_dense": cfg.get("first_k_dense_replace") or 0,
                "moe_layer_step": cfg.get("moe_layer_freq") or 1}
    d["dense_ffn"] = _get(cfg, "intermediate_size", source)
    d["mtp_layers"] = cfg.get("num_nextn_predict_layers") or 0
    return d


def _qwen_moe(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    if cfg.get("mlp_only_layers"):
        raise HFImportError(f"{source}: mlp_only_layers = {cfg['mlp_only_layers']} cannot be mapped (moesim's "
                            "layer pattern is leading dense layers + every n-th layer MoE)")
    d["attention"] = _gqa(cfg, source)
    d["attention"]["qk_norm"] = cfg.get("model_type") == "qwen3_moe"
    if cfg.get("model_type") == "qwen2_moe":
        d["attention"]["attention_bias"] = True  # Qwen2 q/k/v projections carry biases
    shared = cfg.get("shared_expert_intermediate_size") or 0
    step = cfg.get("decoder_sparse_step") or 1
    d["moe"] = {"num_experts": _get(cfg, "num_experts", source), "top_k": _get(cfg, "num_experts_per_tok", source),
                "expert_ffn": _get(cfg, "moe_intermediate_size", source),
                "num_shared_experts": 1 if shared else 0, "shared_expert_ffn": shared,
                "shared_expert_gate": bool(shared), "norm_topk_prob": bool(cfg.get("norm_topk_prob", False)),
                "moe_layer_step": step}
    if step > 1:
        d["dense_ffn"] = _get(cfg, "intermediate_size", source)
    return d


def _mixtral(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    d["attention"] = _gqa(cfg, source)
    if cfg.get("sliding_window"):
        d["attention"].update(window_tokens=cfg["sliding_window"], window_kind="sliding")
    d["moe"] = {"num_experts": _get(cfg, "num_local_experts", source),
                "top_k": _get(cfg, "num_experts_per_tok", source),
                "expert_ffn": _get(cfg, "intermediate_size", source), "norm_topk_prob": True}
    return d


def _gpt_oss(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    d["ffn_activation"] = "swiglu"  # gpt-oss's clamped SwiGLU variant (hidden_act is not in its config)
    d["attention"] = _gqa(cfg, source)
    d["attention"]["sinks"] = True
    types = cfg.get("layer_types")
    if cfg.get("sliding_window"):
        every = None
        if types:
            full = [i for i, t in enumerate(types) if t == "full_attention"]
            every = full[0] + 1 if full else None
            if every is None or any(((i + 1) % every == 0) != (t == "full_attention") for i, t in enumerate(types)):
                raise HFImportError(f"{source}: layer_types cannot be mapped (moesim: every n-th layer full)")
        d["attention"].update(window_tokens=cfg["sliding_window"], window_kind="sliding", full_attention_every=every)
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") == "mxfp4":
        d["weight_dtype"], d["expert_weight_dtype"] = "bf16", "mxfp4"
    d["moe"] = {"num_experts": _get(cfg, "num_local_experts", source),
                "top_k": cfg.get("num_experts_per_tok") or _get(cfg, "experts_per_token", source),
                "expert_ffn": _get(cfg, "intermediate_size", source), "norm_topk_prob": True, "router_bias": True}
    return d


def _llama4(cfg: dict, source: str) -> dict:
    text = cfg.get("text_config") or cfg
    d = _base(text, source)
    d["attention"] = _gqa(text, source)
    d["attention"]["qk_norm"] = bool(text.get("use_qk_norm", False))
    if text.get("attention_chunk_size"):
        d["attention"].update(window_tokens=text["attention_chunk_size"], window_kind="chunked",
                              full_attention_every=4)  # every 4th layer is global NoPE (no_rope_layer_interval 4)
    step = text.get("interleave_moe_layer_step") or 1
    d["moe"] = {"num_experts": _get(text, "num_local_experts", source),
                "top_k": _get(text, "num_experts_per_tok", source),
                "expert_ffn": _get(text, "intermediate_size", source),
                "num_shared_experts": 1, "shared_expert_ffn": _get(text, "intermediate_size", source),
                "norm_topk_prob": False, "moe_layer_step": step}
    if step > 1:
        d["dense_ffn"] = _get(text, "intermediate_size_mlp", source)
    return d


def _olmoe(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    d["attention"] = _gqa(cfg, source)
    d["attention"]["qk_norm"] = True  # OLMoE normalizes q and k (OlmoeAttention q_norm/k_norm)
    d["moe"] = {"num_experts": _get(cfg, "num_experts", source), "top_k": _get(cfg, "num_experts_per_tok", source),
                "expert_ffn": _get(cfg, "intermediate_size", source),
                "norm_topk_prob": bool(cfg.get("norm_topk_prob", False))}
    return d


def _dbrx(cfg: dict, source: str) -> dict:
    attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
    n = _get(cfg, "n_heads", source)
    d = {"num_layers": _get(cfg, "n_layers", source), "hidden": _get(cfg, "d_model", source),
         "vocab_size": _get(cfg, "vocab_size", source), "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
         "max_context": _get(cfg, "max_seq_len", source), "ffn_activation": "swiglu", "weight_dtype": _dtype(cfg)}
    nkv = _get(attn, "kv_n_heads", source + " attn_config")
    d["attention"] = {"kind": "mha" if nkv == n else "gqa", "num_heads": n, "num_kv_heads": nkv,
                      "head_dim": d["hidden"] // n}
    d["moe"] = {"num_experts": _get(ffn, "moe_num_experts", source + " ffn_config"),
                "top_k": _get(ffn, "moe_top_k", source + " ffn_config"),
                "expert_ffn": _get(ffn, "ffn_hidden_size", source + " ffn_config"), "norm_topk_prob": True}
    return d


def _llama(cfg: dict, source: str) -> dict:
    d = _base(cfg, source)
    d["attention"] = _gqa(cfg, source)
    d["dense_ffn"] = _get(cfg, "intermediate_size", source)
    return d


MAPPERS: dict[str, tuple[str, Callable[[dict, str], dict]]] = {
    "deepseek_v2": ("deepseek", _deepseek),
    "deepseek_v3": ("deepseek", _deepseek),
    "kimi_k2": ("kimi", _deepseek),
    "qwen2_moe": ("qwen", _qwen_moe),
    "qwen3_moe": ("qwen", _qwen_moe),
    "mixtral": ("mixtral", _mixtral),
    "gpt_oss": ("gpt-oss", _gpt_oss),
    "llama4": ("llama4", _llama4),
    "llama4_text": ("llama4", _llama4),
    "olmoe": ("olmoe", _olmoe),
    "dbrx": ("dbrx", _dbrx),
    "llama": ("llama", _llama),
}


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9.\-]+", "-", text.lower()).strip("-.")
    return s or "imported"


def model_dict_from_hf(cfg: dict, *, name: str, source: str = "config.json") -> dict:
    """A ModelSpec mapping from a parsed HF config (pure; validate with ``build(ModelSpec, ...)``)."""
    if not isinstance(cfg, dict):
        raise HFImportError(f"{source}: a config.json is a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in MAPPERS:
        raise HFImportError(f"{source}: model_type = {model_type!r} cannot be mapped; supported: "
                            f"{', '.join(sorted(MAPPERS))}")
    family, mapper = MAPPERS[model_type]
    d = mapper(cfg, source)
    d.update(name=_slug(name), display_name=f"{name} (imported from {Path(source).name})", family=family,
             sources={"*": f"Hugging Face config.json ({source}), imported by moesim.hf_import"},
             notes=f"imported from a Hugging Face config (model_type {model_type}); check the counts "
                   "against the published ones before relying on them")
    for section in ("attention", "moe"):
        if section in d:
            d[section] = {**d[section], "sources": {"*": f"Hugging Face config.json ({source})"}}
    return d


def read_hf_config(path: str | Path) -> dict:
    """Parse a local config.json (I/O edge; errors name the file)."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except OSError as err:
        raise HFImportError(f"{path}: {err.strerror or err}") from None
    except ValueError as err:
        raise HFImportError(f"{path}: not valid JSON ({err})") from None


def default_name(path: str | Path, cfg: dict) -> str:
    """A model name: the config's ``_name_or_path`` basename, else the folder (or file stem)."""
    named = cfg.get("_name_or_path")
    if named:
        return Path(named).name
    p = Path(path)
    return p.parent.name if p.stem == "config" and p.parent.name else p.stem
