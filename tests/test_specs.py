"""Specs: validation at the boundary, messages that name the field, cross-field rules."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from moesim.catalog import build, load_model, load_profile, read_toml
from moesim.errors import MoesimError, SpecError
from moesim.specs import (
    SLO,
    Cluster,
    ModelSpec,
    Parallelism,
    RoutingSpec,
    ServingWorkload,
    TrainingWorkload,
    bytes_per_element,
    canonical_dtype,
    check_cluster,
    check_parallelism,
    parse_skew,
)
from moesim.specs.parallel import smallest_redundancy


@pytest.fixture(scope="module")
def dsv3():
    return load_model("deepseek-v3")


@pytest.fixture(scope="module")
def dsv3_raw():
    from moesim.catalog import _PRESETS_DIR

    return read_toml(_PRESETS_DIR / "deepseek-v3.toml")


def test_specs_are_frozen(dsv3):
    with pytest.raises(ValidationError):
        dsv3.hidden = 1


def test_unknown_key_rejected_with_its_path(dsv3_raw):
    bad = copy.deepcopy(dsv3_raw)
    bad["moe"]["num_expert"] = 3
    with pytest.raises(MoesimError, match=r"moe\.num_expert"):
        build(ModelSpec, bad, "test")


def test_top_k_above_experts_names_field(dsv3_raw):
    bad = copy.deepcopy(dsv3_raw)
    bad["moe"]["top_k"] = 300
    with pytest.raises(MoesimError, match=r"moe.top_k = 300: allowed: at most num_experts"):
        build(ModelSpec, bad, "test")


def test_number_without_source_rejected(dsv3_raw):
    bad = copy.deepcopy(dsv3_raw)
    del bad["sources"]
    with pytest.raises(MoesimError, match="num_layers = 61: every number needs a source"):
        build(ModelSpec, bad, "test")


def test_layer_layout_first_k_dense(dsv3):
    # DeepSeek-V3: first_k_dense_replace = 3 -> layers 0..2 dense, 3..60 MoE (moe-models.md Table B)
    assert [dsv3.layer_is_moe(i) for i in range(4)] == [False, False, False, True]
    assert (dsv3.moe_layers, dsv3.dense_layers) == (58, 3)


def test_mla_kv_elements(dsv3):
    # moe-models.md Table C: kv_lora_rank + qk_rope_head_dim = 512 + 64 = 576
    assert dsv3.kv_elements_per_token() == 576
    assert dsv3.kv_elements_per_token("full") == 128 * (192 + 128)


def test_ep_must_divide_experts_plus_redundant(dsv3):
    # EP 72 with 256 experts fails without redundant slots and names the fix (32 slots)
    with pytest.raises(SpecError, match=r"parallel\.ep.*256 \+ 0 = 256.*redundant_experts to 32"):
        check_parallelism(dsv3, Parallelism(dp=72, ep=72, attention_layout="dp"))
    check_parallelism(dsv3, Parallelism(dp=72, ep=72, attention_layout="dp", redundant_experts=32))
    assert smallest_redundancy(256, 72) == 32


def test_parallel_sizes_must_match_devices(dsv3):
    with pytest.raises(SpecError, match=r"must equal cluster.devices = 64"):
        check_parallelism(dsv3, Parallelism(tp=2, dp=16, ep=32), Cluster(hardware="h100-sxm", devices=64))


def test_tp_must_divide_heads(dsv3):
    with pytest.raises(SpecError, match=r"parallel\.tp.*num_heads = 128"):
        check_parallelism(dsv3, Parallelism(tp=3, dp=1))


def test_ep_times_etp_divides_non_pipeline_ranks():
    with pytest.raises(ValidationError, match=r"ep: 16 is invalid; allowed: ep x etp \(here 16\) must divide tp x cp x dp = 8"):
        Parallelism(tp=2, dp=4, ep=16)


def test_dense_model_rejects_ep():
    model = ModelSpec(
        name="tiny-dense", display_name="tiny", num_layers=2, hidden=64, vocab_size=100,
        max_context=128, dense_ffn=128, sources={"*": "test"},
        attention={"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "sources": {"*": "t"}},
    )
    with pytest.raises(SpecError, match="is dense: ep must be 1"):
        check_parallelism(model, Parallelism(dp=2, ep=2))


def test_cluster_domain_limits():
    h100 = load_profile("h100-sxm")
    with pytest.raises(SpecError, match="at most 256 devices"):
        check_cluster(Cluster(hardware="h100-sxm", devices=512, devices_per_domain=512), h100)
    with pytest.raises(ValidationError, match="devices: 12 is invalid; allowed: a multiple of devices_per_domain = 8"):
        Cluster(hardware="h100-sxm", devices=12, devices_per_domain=8)
    c = Cluster(hardware="h100-sxm", devices=64)
    assert (c.domain_size(h100), c.domains(h100)) == (8, 8)


def test_dtypes():
    assert canonical_dtype("mxfp8") == "fp8"
    assert bytes_per_element("bf16") == 2.0
    # MX formats: one 8-bit scale per 32 elements (OCP MX v1.0)
    assert bytes_per_element("mxfp4") == pytest.approx(0.5 + 1 / 32)
    with pytest.raises(SpecError, match="dtype: 'int3'"):
        canonical_dtype("int3")


def test_profile_peak_lookup_errors():
    h100 = load_profile("h100-sxm")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    with pytest.raises(SpecError, match="has peaks for"):
        h100.peak_flops("fp4")


@pytest.mark.parametrize(
    "text,expected",
    [("uniform", ("uniform", None)), ("zipf:1.2", ("zipf", 1.2)), ("dirichlet:0.5", ("dirichlet", 0.5)),
     ("trace:a/b.npz", ("trace", "a/b.npz")), ("explicit:1,2,3", ("explicit", (1.0, 2.0, 3.0)))],
)
def test_parse_skew(text, expected):
    assert parse_skew(text) == expected


@pytest.mark.parametrize("text", ["zipf", "zipf:-1", "dirichlet:0", "foo:1", "explicit:-1,2", ""])
def test_parse_skew_rejects(text):
    with pytest.raises(ValueError):
        parse_skew(text)


def test_workloads():
    t = TrainingWorkload(global_batch=1024, seq_len=4096, micro_batch=1, dtype="mxfp8")
    assert t.tokens_per_step == 1024 * 4096
    with pytest.raises(ValidationError, match="multiple of micro_batch"):
        TrainingWorkload(global_batch=10, seq_len=8, micro_batch=4)
    s = ServingWorkload(prompt_len=1000, output_len=500, target_output_tokens_per_s=20000)
    assert s.rate_per_s == pytest.approx(40.0)
    with pytest.raises(ValidationError, match="request_rate or target_output_tokens_per_s"):
        ServingWorkload(prompt_len=1, output_len=1)
    with pytest.raises(ValidationError, match="capacity_factor"):
        RoutingSpec(capacity_factor=-1)
    with pytest.raises(ValidationError, match="tpot_s"):
        SLO(tpot_s=0)


# ---- hypothesis: any invalid spec raises a ValidationError / MoesimError with a field path ------
_BAD_VALUES = st.one_of(
    st.integers(max_value=0), st.floats(max_value=0, allow_nan=False), st.text(max_size=3),
    st.none(), st.lists(st.integers(), max_size=2), st.booleans(),
)
_MODEL_FIELDS = ["num_layers", "hidden", "vocab_size", "max_context", "dense_ffn"]
_MOE_FIELDS = ["num_experts", "top_k", "expert_ffn", "n_groups", "topk_groups", "first_k_dense"]
_ATT_FIELDS = ["num_heads", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "kind"]


@settings(max_examples=150, deadline=None)
@given(
    section=st.sampled_from(["", "moe", "attention"]),
    index=st.integers(min_value=0, max_value=5),
    value=_BAD_VALUES,
)
def test_invalid_model_specs_raise_with_field_path(dsv3_raw, section, index, value):
    bad = copy.deepcopy(dsv3_raw)
    fields = {"": _MODEL_FIELDS, "moe": _MOE_FIELDS, "attention": _ATT_FIELDS}[section]
    name = fields[index % len(fields)]
    target = bad[section] if section else bad
    target[name] = value
    try:
        build(ModelSpec, bad, "test")
    except MoesimError as err:
        assert name in str(err) or (section and section in str(err)), str(err)
    # Some values are valid by construction (e.g. first_k_dense = 0 or a bool that pydantic
    # refuses only in strict mode); those must load, not crash.


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(["tp", "pp", "dp", "cp", "ep", "etp", "vpp", "redundant_experts", "attention_layout"]),
    value=st.one_of(
        st.integers(max_value=-1),
        st.text(alphabet="abcxyz_-", min_size=1, max_size=3),
        st.floats(allow_nan=True).filter(lambda x: not (x == x and x.is_integer() and x > 0)),
    ),
)
def test_invalid_parallelism_raises_validation_error(field, value):
    # Values that are valid in pydantic's lax mode (1.0 for 1, "2" for 2) are excluded above;
    # 0 is valid only for redundant_experts.
    if field == "redundant_experts" and value == 0:
        return
    with pytest.raises(ValidationError) as info:
        Parallelism(**{field: value})
    assert field in str(info.value)


@settings(max_examples=100, deadline=None)
@given(
    section=st.sampled_from(["memory", "scale_up", "compute", "price"]),
    value=st.one_of(st.integers(max_value=0), st.floats(max_value=0, allow_nan=False),
                    st.sampled_from(["inf", "NaN", "abc", "", "1e999"])),
)
def test_invalid_hardware_raises_with_path(section, value):
    from moesim.catalog import _profiles_dir
    from moesim.specs import HardwareProfile

    raw = read_toml(_profiles_dir() / "h100-sxm.toml")
    key = {"memory": "hbm_GB", "scale_up": "bandwidth_per_direction_GBps", "compute": "compute_units",
           "price": "usd_per_device_hour"}[section]
    raw[section][key] = value
    with pytest.raises(MoesimError) as info:
        build(HardwareProfile, raw, "test")
    assert f"{section}.{key}" in str(info.value)
