"""The training/serving/moe_layer predictors (the case-file callers of the step model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.catalog import load_model, load_profile
from moesim.step_cases import predict_moe_layer_case, predict_serving_case, predict_training_case
from moesim.validate import UnsupportedCase

DSV3 = load_model("deepseek-v3")
H800 = load_profile("h800-sxm")
CASES = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-calibration.json"


INLINE = {"hidden": 1024, "expert_ffn": 512, "num_experts": 16, "top_k": 2, "num_shared_experts": 1}


def test_moe_layer_predictor_inline_and_preset():
    base = {"metric": "time_s", "ranks": 8, "ranks_per_node": 8, "tokens_per_rank": 512, "dtype": "bf16"}
    fwd = predict_moe_layer_case({**base, "model": INLINE, "phase": "forward"}, H800)
    fb = predict_moe_layer_case({**base, "model": INLINE, "phase": "forward_backward"}, H800)
    assert 0 < fwd < fb < 3 * fwd
    assert predict_moe_layer_case({**base, "model": "mixtral-8x7b", "phase": "forward"}, H800) > fwd
    with pytest.raises(UnsupportedCase):
        predict_moe_layer_case({**base, "model": INLINE, "metric": "bandwidth_GBps"}, H800)
    with pytest.raises(UnsupportedCase):
        predict_moe_layer_case({**base, "model": {"hidden": 64}}, H800)


@pytest.mark.skipif(not CASES.is_file(), reason="repository copy of the published calibration set missing")
def test_published_training_and_serving_cases_predict():
    from moesim.cases import load_cases
    from moesim.validate import case_inputs

    cases = [c for c in load_cases(CASES).cases if c.kind in ("training", "serving")]
    assert len(cases) == 9
    for c in cases:
        predict = predict_training_case if c.kind == "training" else predict_serving_case
        value = predict(case_inputs(c), load_profile(c.hardware))
        # no accuracy bound asserted here: the errors are reported by `moesim validate`
        assert np.isfinite(value) and value > 0, c.id


MTP_DECODE = {"metric": "tokens_per_s_per_device", "model": "deepseek-v3", "phase": "decode", "devices": 16,
              "devices_per_node": 8, "attention_layout": "dp", "ep": 16, "dtype": "fp8",
              "batch_per_device": 64, "context_len": 2000}


def _plain_step_s(batch, context):
    """The decode step of MTP_DECODE's deployment at ``batch`` x ``context``, through the plain path."""
    t = predict_serving_case({**MTP_DECODE, "batch_per_device": batch, "context_len": context}, H800)
    return batch / t  # tokens/s per device = batch / step time


def test_mtp_decode_row_is_the_speculative_closed_form():
    """A decode row with MTP emits E = (1 - a^(d+1)) / (1 - a) tokens per sequence per step of
    max(t(b(1+d), 1) + t(b, C) - t(b, 1), t(b, C)) + d (mtp_layers / layers) t(b, C)
    (moesim/planner/pool_cost.py speculative_step_s), recomputed here from plain decode rows
    (exact up to float rounding: the same step model on the same deployment)."""
    b, c, a = 64, 2000, 0.8
    got = predict_serving_case({**MTP_DECODE, "mtp": True, "mtp_acceptance_rate": a}, H800)
    plain = _plain_step_s(b, c)
    verify = _plain_step_s(2 * b, 1) + plain - _plain_step_s(b, 1)
    step = max(verify, plain) + (DSV3.mtp_layers / DSV3.num_layers) * plain
    assert got == pytest.approx(b * (1 + a) / step, rel=1e-9)
    # acceptance 0 never beats no MTP (the draft and the wider verify cost, one token emitted)
    none = predict_serving_case(MTP_DECODE, H800)
    zero = predict_serving_case({**MTP_DECODE, "mtp": True, "mtp_acceptance_rate": 0.0}, H800)
    assert zero < none < got


def test_mtp_without_an_acceptance_rate_is_refused_naming_it_and_mtp_off_is_plain():
    with pytest.raises(UnsupportedCase, match="mtp_acceptance_rate"):
        predict_serving_case({**MTP_DECODE, "mtp": True}, H800)
    with pytest.raises(UnsupportedCase, match="acceptance_rate"):
        predict_serving_case({**MTP_DECODE, "mtp": True, "mtp_acceptance_rate": 1.5}, H800)
    with pytest.raises(UnsupportedCase, match="input 'mtp_draft_tokens' = 0"):
        predict_serving_case({**MTP_DECODE, "mtp": True, "mtp_acceptance_rate": 0.8, "mtp_draft_tokens": 0}, H800)
    assert predict_serving_case({**MTP_DECODE, "mtp": False}, H800) == predict_serving_case(MTP_DECODE, H800)
    assert predict_serving_case({**MTP_DECODE, "mtp": "none"}, H800) == predict_serving_case(MTP_DECODE, H800)
    with pytest.raises(UnsupportedCase, match="no MTP layers"):
        predict_serving_case({**MTP_DECODE, "model": "qwen3-30b-a3b", "mtp": True, "mtp_acceptance_rate": 0.8}, H800)


def test_mtp_in_a_prefill_row_is_listed_as_ignored():
    from moesim.cases import parse_cases
    from moesim.validate import validate

    inputs = {k: v for k, v in MTP_DECODE.items() if k not in ("metric", "batch_per_device", "context_len")}
    rows = {"schema": "moesim-cases/1", "cases": [
        {"id": "p", "kind": "serving", "hardware": "h800-sxm",
         "inputs": {**inputs, "phase": "prefill", "prompt_len": 1000, "tokens_per_device": 8000, "mtp": True,
                    "mtp_acceptance_rate": 0.85},
         "measured": {"metric": "tokens_per_s_per_device", "value": 1000.0}},
        {"id": "d", "kind": "serving", "hardware": "h800-sxm",
         "inputs": {**inputs, "batch_per_device": 64, "context_len": 2000, "mtp": True, "mtp_acceptance_rate": 0.85},
         "measured": {"metric": "tokens_per_s_per_device", "value": 1000.0}}]}
    p, d = validate(parse_cases(rows)).cases
    assert p.status == d.status == "ok"
    assert "mtp" in dict(p.ignored_inputs)
    assert "mtp" not in dict(d.ignored_inputs) and "mtp_acceptance_rate" not in dict(d.ignored_inputs)


def test_a_decode_rows_kv_dtype_is_read_and_an_unstated_one_is_an_assumption():
    """A stated kv_dtype prices the decode step's KV-cache stream at its width (fp8: half the
    bf16 bytes, so at a long context the step is faster) and is not listed as
    ignored; an unstated one is the step-level default bf16 (the same answer as stating bf16,
    exactly) and is recorded under the case's assumptions."""
    from moesim.validate import CaseInputs

    # a GQA model: its decode attention streams the cache (MLA's absorbed decode is compute-bound)
    long_ctx = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "phase": "decode", "devices": 1,
                "ep": 1, "dtype": "fp8", "batch_per_device": 64, "context_len": 8000}
    unstated = CaseInputs({**long_ctx}, "serving")
    base = predict_serving_case(unstated, H800)
    assert "kv_dtype" in unstated.assumed and "bf16" in unstated.assumed["kv_dtype"]
    bf16 = CaseInputs({**long_ctx, "kv_dtype": "bf16"}, "serving")
    assert predict_serving_case(bf16, H800) == base
    fp8 = CaseInputs({**long_ctx, "kv_dtype": "fp8"}, "serving")
    assert predict_serving_case(fp8, H800) > base
    assert "kv_dtype" not in fp8.ignored() and "kv_dtype" not in fp8.assumed


def test_an_fp4_rows_attention_dtype_is_read_and_an_unstated_one_is_an_assumption():
    """Unstated on a low-precision row, the attention projections run at the row's dtype and the
    case says so under assumptions; a stated bf16 (an NVFP4 checkpoint that excludes its
    self_attn modules) streams 2-byte projection weights instead of ~0.56-byte ones, so the
    decode step at a small batch (weight-bound) is slower, and nothing is assumed."""
    from moesim.validate import CaseInputs

    row = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "phase": "decode", "devices": 1,
           "ep": 1, "dtype": "fp4", "kv_dtype": "fp8", "batch_per_device": 8, "context_len": 1000}
    b200 = load_profile("b200")
    unstated = CaseInputs({**row}, "serving")
    fp4 = predict_serving_case(unstated, b200)
    assert "fp4" in unstated.assumed["attention_dtype"]
    bf16 = CaseInputs({**row, "attention_dtype": "bf16"}, "serving")
    assert predict_serving_case(bf16, b200) < fp4
    assert "attention_dtype" not in bf16.assumed and "attention_dtype" not in bf16.ignored()
    bf16_row = CaseInputs({**row, "dtype": "bf16"}, "serving")  # nothing to assume at bf16
    predict_serving_case(bf16_row, b200)
    assert "attention_dtype" not in bf16_row.assumed


GB200 = load_profile("gb200")
FILL_DECODE = {"metric": "tokens_per_s_per_device", "model": "deepseek-v3", "phase": "decode", "devices": 8,
               "devices_per_node": 72, "attention_layout": "dp", "ep": 8, "dtype": "fp4", "framework": "vLLM",
               "batch_per_device": None, "context_len": 3072, "max_load": True}


def _fill_deployment(row):
    """The Deployment predict_serving_case builds for ``row`` (its own builder, called the same way)."""
    from moesim.catalog import build
    from moesim.specs import Deployment
    from moesim.step_cases import case_software_stack, domain_layout

    return build(Deployment, {"hardware": GB200, "devices": 8, "tp": 1, "dp": 8, "ep": 8, "attention_layout": "dp",
                              "devices_per_domain": domain_layout(row, GB200, 8, 8), "dtype": "fp4",
                              "kv_dtype": "bf16", "stack": case_software_stack(row, GB200, "decode", None)})


def test_a_max_load_decode_row_runs_at_the_batch_its_memory_holds():
    """A decode row that states max_load and no batch (the source says the batch fills the memory)
    is priced at floor(KV tokens of the engine's memory share / (context x devices)) sequences per
    device, capped by the scheduler's running sequences per attention rank: the same number as the
    row stating that batch, exactly; the batch is recorded under the case's assumptions."""
    from moesim.des.serving.deployment import kv_capacity_tokens
    from moesim.validate import CaseInputs

    fill = kv_capacity_tokens(DSV3, _fill_deployment(FILL_DECODE)) // (3072 * 8)
    assert 100 < fill < 1024  # the vllm stack's default cap (1024 per rank) does not bind here
    row = CaseInputs(dict(FILL_DECODE), "serving")
    got = predict_serving_case(row, GB200)
    stated = predict_serving_case({**FILL_DECODE, "batch_per_device": fill, "max_load": None}, GB200)
    assert got == stated
    assert f"{fill} sequences per device of 3072 tokens, bound by the KV cache" in row.assumed["batch_per_device"]
    # a stated running-sequence cap binds: the batch is the cap per attention rank (tp = 1 here)
    capped = CaseInputs({**FILL_DECODE, "max_num_seqs": 64}, "serving")
    assert predict_serving_case(capped, GB200) == predict_serving_case(
        {**FILL_DECODE, "batch_per_device": 64, "max_load": None}, GB200)
    assert "the scheduler's 64 running sequences per attention rank (stated)" in capped.assumed["batch_per_device"]
    # a longer context holds fewer sequences: the throughput falls with it
    assert predict_serving_case({**FILL_DECODE, "context_len": 12288}, GB200) < got


def test_a_decode_row_without_batch_or_max_load_is_still_refused():
    from moesim.validate import CaseInputs

    with pytest.raises(UnsupportedCase, match="batch_per_device"):
        predict_serving_case(CaseInputs({**FILL_DECODE, "max_load": None}, "serving"), GB200)
    # no room for any KV (DeepSeek-V3's FP8 weights over 2 GB200s): refused with the reason, not a crash
    with pytest.raises(UnsupportedCase, match="fits"):
        predict_serving_case(CaseInputs({**FILL_DECODE, "devices": 2, "ep": 2, "dtype": "fp8"}, "serving"), GB200)


@pytest.mark.parametrize("bad", [0, -4, 2.5, "many", True])
def test_a_bad_running_sequence_cap_is_refused_naming_the_field(bad):
    from moesim.errors import SpecError
    from moesim.validate import CaseInputs

    with pytest.raises(SpecError, match="max_num_seqs"):
        predict_serving_case(CaseInputs({**FILL_DECODE, "max_num_seqs": bad}, "serving"), GB200)


def test_the_memory_filled_batch_is_the_planners_maximum_load_batch():
    """Two paths to one number: the decode row's batch (the DES replica's KV capacity,
    kv_capacity_tokens) equals the planner's maximum-load batch of the same deployment and mean
    context (serving_policy.max_load_batch: the engine's memory share, ServingMemory), here a
    2048 / 2048 workload whose mean in-flight context is 3072."""
    from moesim.planner import serving_policy
    from moesim.planner.costs import PlanCache
    from moesim.planner.scenario import scenario_from_dict
    from moesim.planner.space import serving_space
    from moesim.validate import CaseInputs

    sc = scenario_from_dict({
        "kind": "serving", "name": "fill", "model": "deepseek-v3", "hardware": ["gb200"], "max_devices": 8,
        "workload": {"prompt_len": 2048, "output_len": 2048, "target_output_tokens_per_s": 1.0, "dtype": "fp4",
                     "kv_dtype": "bf16"},
        "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6},
        "search": {"devices_per_replica": [8], "batch_per_device": [64], "tp": [1], "pp": [1],
                   "attention_layouts": ["dp"], "moe_layouts": ["ep"], "overlap": "none"},
        "verify": {"top_n": 0}, "stack": "vllm"}, source="test")
    (c,) = serving_space(sc, DSV3).candidates
    planner = serving_policy.max_load_batch(c, sc, DSV3, PlanCache())
    row = CaseInputs(dict(FILL_DECODE), "serving")
    predict_serving_case(row, GB200)
    assert f"{planner} sequences per device of 3072 tokens" in row.assumed["batch_per_device"]
