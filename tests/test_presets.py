"""Model presets: each loads, reproduces its published parameter counts, and has the layout the
reference sheet states.

Expected values come from published tables, never from the code under test:
- parameter counts: the vendor's stated total / active (source in each PUBLISHED row);
- layouts, dims and KV-cache sizes: docs/reference/moe-models.md (Tables A-D and notes);
- the Llama 3.1 dense references (not in that sheet): Meta's llama-models sku_list.py and MODEL_CARD.md,
  and MaxText's llama3.1-*.yml (cited in each preset's [sources]).
"""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import list_models, load_model
from moesim.compute.counts import param_counts

# NOTE: totals within 3%: vendors round their headline figures ("1T" for Kimi-K2's 1.026T,
# 2.6% off) and some totals count parts outside the text decoder (Llama-4-Scout's 109B vs a
# 107.8B text-only count). Every row's sheet C-check lies within this bound.
RTOL_TOTAL = 0.03
# NOTE: active within 6%: vendors state active counts to two significant figures ("2.4B",
# "17B": +-2-3% from rounding alone) and differ on what they count (embedding, LM head); the
# sheet says its active C-check matches within about 5%.
RTOL_ACTIVE = 0.06

# (preset, published total B, published active B, vendor leaves the input embedding out of
#  "active", source). Numbers as the vendor printed them.
PUBLISHED = [
    ("deepseek-v3", 671, 37, False, "DSV3-GH README.md; DSV3-TR (37B activated; 671B excludes MTP)"),
    ("deepseek-v2", 236, 21, False, "DSV2-GH README.md"),
    ("deepseek-v2-lite", 16, 2.4, True, "DSV2-GH README.md"),
    ("kimi-k2", 1000, 32, False, "KIMI-GH README.md ('1T total, 32B activated')"),
    ("mixtral-8x7b", 46.7, 12.9, False, "MIX-BLOG"),
    ("mixtral-8x22b", 141, 39, False, "MIX22-BLOG"),
    ("qwen3-30b-a3b", 30.5, 3.3, False, "QW3-CARD"),
    ("qwen3-235b-a22b", 235, 22, False, "QW3-GH README.md"),
    ("qwen2-57b-a14b", 57, 14, False, "QW2-TR"),
    ("qwen1.5-moe-a2.7b", 14.3, 2.7, False, "QW15-BLOG"),
    ("olmoe-1b-7b", 6.9, 1.3, False, "OLMOE-HF model card"),
    ("dbrx", 132, 36, False, "DBRX-GH README.md (132B total, 36B live)"),
    ("gpt-oss-20b", 21, 3.6, True, "OAI-GH README.md"),
    ("gpt-oss-120b", 117, 5.1, True, "OAI-GH README.md"),
    ("llama4-scout", 109, 17, False, "LL4-GH models/llama4/MODEL_CARD.md"),
    ("llama4-maverick", 400, 17, False, "LL4-GH models/llama4/MODEL_CARD.md"),
    # Active: xAI states only "25% of the weights active on a given token" (GROK-BLOG);
    # 78.5 = 0.25 x 314 is that fraction, not a count. See test_grok1_active_fraction.
    ("grok-1", 314, 78.5, False, "GROK-GH README.md (314B); GROK-BLOG ('25%' active)"),
    ("arctic", 480, 17, False, "ARC-DESC (Snowflake's description; secondary)"),
    ("llama3.1-8b", 8, 8, False, "meta-llama/llama-models models/llama3_1/MODEL_CARD.md"),
    ("llama3.1-70b", 70, 70, False, "meta-llama/llama-models models/llama3_1/MODEL_CARD.md"),
    ("llama3.1-405b", 405, 405, False, "meta-llama/llama-models models/llama3_1/MODEL_CARD.md"),
]
_IDS = [row[0] for row in PUBLISHED]

# Presets whose published "active" is a rounded fraction, not a count.
ACTIVE_IS_A_FRACTION = {"grok-1"}

# docs/cases.md, "Names": the preset names every case file may use.
CASES_MODEL_NAMES = [
    "deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "kimi-k2", "mixtral-8x7b", "mixtral-8x22b",
    "qwen3-30b-a3b", "qwen3-235b-a22b", "qwen2-57b-a14b", "qwen1.5-moe-a2.7b", "olmoe-1b-7b",
    "dbrx", "gpt-oss-20b", "gpt-oss-120b", "llama4-scout", "llama4-maverick", "grok-1", "arctic",
    "llama3.1-8b", "llama3.1-70b", "llama3.1-405b",
]

# moe-models.md Table D (and Table C for MLA: kv_lora_rank 512 + qk_rope_head_dim 64, latent
# cache). Llama 3.1: 2 x 8 KV heads x 128 from its configs.
KV_ELEMENTS_PER_TOKEN_PER_LAYER = {
    "mixtral-8x7b": 2048, "mixtral-8x22b": 2048, "dbrx": 2048, "grok-1": 2048, "arctic": 2048,
    "llama4-scout": 2048, "llama4-maverick": 2048,
    "qwen2-57b-a14b": 1024, "qwen3-30b-a3b": 1024, "qwen3-235b-a22b": 1024,
    "qwen1.5-moe-a2.7b": 4096, "olmoe-1b-7b": 4096,
    "gpt-oss-20b": 1024, "gpt-oss-120b": 1024,
    "deepseek-v2-lite": 576, "deepseek-v2": 576, "deepseek-v3": 576, "kimi-k2": 576,
    "llama3.1-8b": 2048, "llama3.1-70b": 2048, "llama3.1-405b": 2048,
}


def test_catalog_lists_exactly_the_case_names():
    assert sorted(list_models()) == sorted(CASES_MODEL_NAMES)
    assert sorted(_IDS) == sorted(CASES_MODEL_NAMES)
    assert sorted(KV_ELEMENTS_PER_TOKEN_PER_LAYER) == sorted(CASES_MODEL_NAMES)


@pytest.mark.parametrize("name, total_B, active_B, excl_emb, source", PUBLISHED, ids=_IDS)
def test_preset_loads_and_states_the_published_counts(name, total_B, active_B, excl_emb, source):
    model = load_model(name)
    assert model.name == name
    pub = model.published
    assert pub is not None and pub.source and pub.convention
    # The preset's [published] block carries the same figures as this table.
    assert pub.total_params_B == total_B
    assert pub.active_params_B == active_B
    assert pub.active_counts_input_embedding is (not excl_emb)


@pytest.mark.parametrize("name, total_B, active_B, excl_emb, source", PUBLISHED, ids=_IDS)
def test_total_params_match_published(name, total_B, active_B, excl_emb, source):
    counts = param_counts(load_model(name))
    assert_allclose(counts.total / 1e9, total_B, rtol=RTOL_TOTAL)


@pytest.mark.parametrize(
    "name, total_B, active_B, excl_emb, source",
    [row for row in PUBLISHED if row[0] not in ACTIVE_IS_A_FRACTION],
    ids=[n for n in _IDS if n not in ACTIVE_IS_A_FRACTION],
)
def test_active_params_match_published(name, total_B, active_B, excl_emb, source):
    counts = param_counts(load_model(name))
    active = counts.active_without_input_embedding if excl_emb else counts.active
    assert_allclose(active / 1e9, active_B, rtol=RTOL_ACTIVE)


def test_grok1_active_fraction():
    # GROK-BLOG: "25% of the weights active on a given token" -- a percentage rounded to a
    # multiple of 5, so it stands for 22.5%..27.5%. The sheet's C-check gives 84.6 / 316.5 = 26.7%.
    counts = param_counts(load_model("grok-1"))
    assert abs(counts.active / counts.total - 0.25) <= 0.025
    # Third-party figures (~86B) and the C-check (84.6B) agree within the 6% active bound.
    assert_allclose(counts.active / 1e9, 84.6, rtol=0.01)  # moe-models.md Table B C-check


# ---- layouts (moe-models.md Table B "dense vs MoE layer layout") ------------------------------
@pytest.mark.parametrize(
    "name, moe_layers, dense_layers",
    [
        ("deepseek-v3", 58, 3),
        ("deepseek-v2", 59, 1),
        ("deepseek-v2-lite", 26, 1),
        ("kimi-k2", 60, 1),
        ("llama4-maverick", 24, 24),
        ("llama4-scout", 48, 0),
        ("mixtral-8x22b", 56, 0),
        ("qwen3-235b-a22b", 94, 0),
        ("arctic", 35, 0),
        ("llama3.1-405b", 0, 126),
    ],
)
def test_moe_and_dense_layer_counts(name, moe_layers, dense_layers):
    model = load_model(name)
    assert (model.moe_layers, model.dense_layers) == (moe_layers, dense_layers)


def test_deepseek_v3_first_three_layers_dense():
    model = load_model("deepseek-v3")
    assert [model.layer_is_moe(i) for i in range(4)] == [False, False, False, True]


def test_maverick_alternates_dense_first():
    # interleave_moe_layer_step 2: layer i is MoE iff (i + 1) % 2 == 0.
    model = load_model("llama4-maverick")
    assert [model.layer_is_moe(i) for i in range(4)] == [False, True, False, True]
    assert model.dense_ffn == 16384


def test_arctic_parallel_dense_residual_in_every_layer():
    # Each layer = attention + dense MLP 7168 -> 7168 + residual MoE 128 x 4864, top-2.
    model = load_model("arctic")
    assert model.moe.parallel_dense_ffn
    assert model.dense_ffn == 7168 == model.hidden
    assert (model.moe.num_experts, model.moe.top_k, model.moe.expert_ffn) == (128, 2, 4864)
    assert all(model.layer_is_moe(i) for i in range(model.num_layers))


@pytest.mark.parametrize("name", CASES_MODEL_NAMES)
def test_kv_elements_per_token_per_layer(name):
    assert load_model(name).kv_elements_per_token() == KV_ELEMENTS_PER_TOKEN_PER_LAYER[name]


# ---- windowed attention (moe-models.md Table A attention notes) ------------------------------
@pytest.mark.parametrize("name", ["gpt-oss-20b", "gpt-oss-120b"])
def test_gpt_oss_alternates_sliding_128_then_full(name):
    model = load_model(name)
    att = model.attention
    assert (att.window_tokens, att.window_kind) == (128, "sliding")
    assert [model.layer_is_windowed(i) for i in range(4)] == [True, False, True, False]
    assert sum(model.layer_is_windowed(i) for i in range(model.num_layers)) == model.num_layers // 2
    assert att.attention_bias and att.sinks and model.moe.router_bias
    assert model.expert_weight_dtype == "mxfp4"


@pytest.mark.parametrize("name", ["llama4-scout", "llama4-maverick"])
def test_llama4_chunked_8192_every_fourth_layer_global(name):
    model = load_model(name)
    att = model.attention
    assert (att.window_tokens, att.window_kind) == (8192, "chunked")
    assert [model.layer_is_windowed(i) for i in range(4)] == [True, True, True, False]
    assert sum(not model.layer_is_windowed(i) for i in range(model.num_layers)) == 12


# ---- dims the sheet flags as traps -----------------------------------------------------------
@pytest.mark.parametrize(
    "name, head_dim, q_width",
    [("qwen3-30b-a3b", 128, 4096), ("qwen3-235b-a22b", 128, 8192), ("gpt-oss-120b", 64, 4096)],
)
def test_explicit_head_dim_not_hidden_over_heads(name, head_dim, q_width):
    model = load_model(name)
    assert model.attention.head_dim == head_dim
    assert model.attention.num_heads * model.attention.head_dim == q_width != model.hidden


@pytest.mark.parametrize("name, shared_ffn", [("qwen1.5-moe-a2.7b", 5632), ("qwen2-57b-a14b", 20480)])
def test_qwen_shared_expert_is_one_fused_gated_block(name, shared_ffn):
    moe = load_model(name).moe
    assert (moe.num_shared_experts, moe.shared_expert_ffn, moe.shared_expert_gate) == (1, shared_ffn, True)


def test_vocab_sizes_of_the_right_checkpoint():
    assert load_model("olmoe-1b-7b").vocab_size == 50304  # padded embedding, not the 50280 tokenizer
    assert load_model("mixtral-8x22b").vocab_size == 32000  # base v0.1 (Instruct: 32768)


def test_grok1_geglu_experts():
    model = load_model("grok-1")
    assert model.ffn_activation == "geglu" and model.ffn_matrices == 3
    assert model.moe.expert_ffn == 32768
    assert not model.moe.norm_topk_prob


def test_deepseek_family_routing_and_mla():
    lite, v2, k2 = load_model("deepseek-v2-lite"), load_model("deepseek-v2"), load_model("kimi-k2")
    assert lite.attention.q_lora_rank == 0
    assert (v2.moe.n_groups, v2.moe.topk_groups) == (8, 3)
    assert v2.moe.routed_scaling_factor == 16.0 and not v2.moe.norm_topk_prob
    assert (k2.moe.n_groups, k2.moe.num_experts, k2.moe.routed_scaling_factor) == (1, 384, 2.827)
    assert k2.moe.router_scoring == "sigmoid" and k2.mtp_layers == 0


@pytest.mark.parametrize("name", CASES_MODEL_NAMES)
def test_weight_dtype(name):
    expected = "fp8" if name in ("deepseek-v3", "kimi-k2") else "bf16"
    assert load_model(name).weight_dtype == expected


@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b", "llama3.1-405b"])
def test_dense_references_have_no_moe(name):
    model = load_model(name)
    assert model.moe is None and model.dense_ffn is not None
    counts = param_counts(model)
    assert counts.active == counts.total
