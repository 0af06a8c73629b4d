"""Case inputs are honoured or flagged: ignored_inputs, recompute spellings, partial scale-up
domains, redundant expert slots in the all-to-all predictor."""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.cases import parse_cases
from moesim.catalog import load_profile
from moesim.comm.cases import predict_all_to_all_case
from moesim.errors import SpecError
from moesim.case_inputs import RECOMPUTE_SPELLINGS, recompute_plan
from moesim.step_cases import predict_training_case
from moesim.validate import CaseInputs, validate

B200 = load_profile("b200")
GB200 = load_profile("gb200")
H800 = load_profile("h800-sxm")
TRAIN = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "devices": 8, "devices_per_node": 8,
         "tp": 1, "pp": 1, "ep": 8, "cp": 1, "vpp": None, "global_batch": 256, "seq_len": 4096,
         "micro_batch": 1, "dtype": "bf16"}


def _file(inputs: dict, kind="training", hardware="b200", metric="tokens_per_s_per_device"):
    return parse_cases({"schema": "moesim-cases/1", "cases": [
        {"id": "c1", "kind": kind, "hardware": hardware, "inputs": inputs,
         "measured": {"metric": metric, "value": 1000.0}}]})


def test_unused_and_unmodelled_inputs_are_listed():
    inputs = {k: v for k, v in TRAIN.items() if k != "metric"}
    rep = validate(_file({**inputs, "colour": "blue", "fsdp": 1, "node_limited_routing_nodes": 4, "fsdp_note": None}))
    (c,) = rep.cases
    assert c.status == "ok"
    ignored = dict(c.ignored_inputs)
    assert set(ignored) == {"colour", "fsdp", "node_limited_routing_nodes"}  # null, descriptive keys not listed
    assert "not used" in ignored["colour"] and "FSDP" in ignored["fsdp"]
    # DDP (fsdp 0) is what the step model prices: read, honoured, not listed
    (c0,) = validate(_file({**inputs, "fsdp": 0})).cases
    assert dict(c0.ignored_inputs) == {}


def test_recompute_spellings_map_to_modes():
    # hand check: Megatron's "block" method and NeMo's "full" are the same full recompute
    for spelling, (mode, modules, _) in RECOMPUTE_SPELLINGS.items():
        assert recompute_plan(CaseInputs({"recompute": spelling})) == (mode, modules)
    full = predict_training_case({**TRAIN, "recompute": "full"}, B200)
    block = predict_training_case({**TRAIN, "recompute": "Block"}, B200)
    sel = predict_training_case({**TRAIN, "recompute": "attention-only"}, B200)
    none = predict_training_case({**TRAIN, "recompute": None}, B200)
    assert full == block and none > sel > full   # recompute costs time, full the most
    with pytest.raises(SpecError, match="recompute"):
        recompute_plan({"recompute": "sometimes"})


def test_unknown_recompute_is_an_error_naming_the_case():
    inputs = {k: v for k, v in TRAIN.items() if k != "metric"}
    (c,) = validate(_file({**inputs, "recompute": "sometimes"})).cases
    assert c.status == "error" and "c1" in c.reason and "sometimes" in c.reason


def test_partial_nvl72_rack_is_priced_as_even_domains():
    # 256 GPUs on 72-GPU NVL72 racks: 3 full racks + 40 -> modelled as 4 domains of 64 (EP 32
    # groups inside one domain), the same answer as stating 64 per domain.
    case = {**TRAIN, "model": "deepseek-v3", "devices": 256, "devices_per_node": 72, "pp": 8, "ep": 32,
            "global_batch": 4096, "dtype": "fp8"}
    inputs = CaseInputs(case)
    partial = predict_training_case(inputs, GB200)
    assert "4 domains of 64" in inputs.assumed["devices_per_node"]
    even = predict_training_case({**case, "devices_per_node": 64}, GB200)
    assert_allclose(partial, even, rtol=1e-12)   # same layout, same arithmetic


A2A = {"metric": "time_s", "op": "dispatch", "ranks": 64, "ranks_per_node": 8, "tokens_per_rank": 4096,
       "hidden": 7168, "top_k": 8, "bytes_per_token": 7168, "mode": "normal", "dedup": "node", "routing": "uniform"}


def test_all_to_all_with_experts_not_divisible_by_ranks_uses_redundant_slots():
    # 288 experts at EP 64: 32 redundant slots make 320 = 5 per rank (the smallest that divides)
    implicit = predict_all_to_all_case({**A2A, "num_experts": 288}, H800)
    explicit = predict_all_to_all_case({**A2A, "num_experts": 288, "redundant_experts": 32}, H800)
    as_slots = predict_all_to_all_case({**A2A, "num_experts": 320}, H800)
    assert implicit == explicit == as_slots
    for ranks in (128, 256):
        assert predict_all_to_all_case({**A2A, "num_experts": 288, "ranks": ranks}, H800) > 0
    with pytest.raises(SpecError, match="redundant_experts"):
        predict_all_to_all_case({**A2A, "num_experts": 288, "redundant_experts": 1}, H800)


def test_a_feature_stated_off_is_honoured_and_a_flagged_false_is_listed():
    inputs = {k: v for k, v in TRAIN.items() if k != "metric"}
    (c,) = validate(_file({**inputs, "mtp": False, "dropless": False})).cases
    ignored = dict(c.ignored_inputs)
    assert "mtp" not in ignored                      # MTP off: what the step model prices
    for off in ({"mtp_depth": 0}, {"mtp": "none"}, {"mtp": "off"}):  # off as sources write it
        (co,) = validate(_file({**inputs, **off})).cases
        assert not set(off) & set(dict(co.ignored_inputs)), off
    (c1,) = validate(_file({**inputs, "mtp_depth": 1})).cases
    assert "mtp_depth" not in dict(c1.ignored_inputs)  # one MTP module: priced (tests/test_train_mtp.py)
    assert "dropless" not in ignored                 # a token-drop run is priced (capacity factor)
    assert "capacity_factor" in dict(c.assumptions)  # 1.0 padded, the token-drop recipes' default


def test_token_drop_capacity_factor_is_read_and_checked():
    from moesim.case_inputs import TOKEN_DROP_CAPACITY_FACTOR, training_capacity_factor

    assert training_capacity_factor({"dropless": True}) is None
    assert training_capacity_factor({}) is None
    assert training_capacity_factor({"dropless": False}) == TOKEN_DROP_CAPACITY_FACTOR == 1.0
    assert training_capacity_factor({"dropless": False, "capacity_factor": 1.25}) == 1.25
    with pytest.raises(SpecError, match="capacity_factor"):
        training_capacity_factor({"dropless": False, "capacity_factor": 0})


E2E = {"metric": "tokens_per_s_per_device", "model": "qwen3-30b-a3b", "phase": "end_to_end", "devices": 1,
       "attention_layout": "tp", "tp": 1, "ep": 1, "dtype": "fp4", "prompt_len": 1000, "output_len": 1000,
       "max_load": True}


def test_end_to_end_rows_go_through_the_planner():
    from moesim.step_cases import predict_serving_case

    inputs = CaseInputs(E2E, "serving")
    value = predict_serving_case(inputs, B200)
    # the planner's own best candidate of the same deployment (second computation of the answer)
    from moesim.planner.plan import plan
    from moesim.planner.scenario import scenario_from_dict
    from moesim.step_cases import END_TO_END_BATCHES

    from moesim.catalog import load_model
    from moesim.planner import serving_policy
    from moesim.planner.costs import PlanCache
    from moesim.planner.evaluation import Candidate

    def scenario(batches):
        return scenario_from_dict({"kind": "serving", "name": "t", "model": "qwen3-30b-a3b", "hardware": ["b200"],
                                   "max_devices": 1,
                                   "workload": {"prompt_len": 1000, "output_len": 1000,
                                                "target_output_tokens_per_s": 1.0, "dtype": "fp4", "kv_dtype": "fp8"},
                                   "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6},
                                   "search": {"devices_per_replica": [1], "batch_per_device": batches,
                                              "tp": [1], "pp": [1], "attention_layouts": ["tp"], "overlap": "none"},
                                   "verify": {"top_n": 0}})  # no framework: stack and scheduler auto; overlap as stated

    # a maximum-load row also runs the batch the engine fills: its KV share (SGLang, one device:
    # 0.88) at the mean context, in closed form; auto = sglang states no running-sequence cap
    one = Candidate("b200", 1, tp=1, dp=1, ep=1, batch=1)
    mem = serving_policy.serving_memory(one, scenario([1]), load_model("qwen3-30b-a3b"), PlanCache())
    fill = int((0.88 * mem.capacity_bytes - mem.fixed_bytes) // mem.kv_bytes_per_seq)
    assert mem.fraction == 0.88 and mem.max_batch() == fill
    sc = scenario(sorted(set(END_TO_END_BATCHES) | {fill}))
    best = max(r.evaluation.tokens_per_s / r.evaluation.candidate.devices for r in plan(sc, executor="inline").ranked)
    assert value == best
    assert "ep" not in inputs.ignored()  # honoured: the MoE layout follows it (one device: ep = 1)
    # a profile changed in-process reaches the planner (which loads by name) through
    # catalog.profile_overrides: the same planner answer on the changed profile, not the catalog's
    from moesim.calibrate import with_params
    from moesim.catalog import profile_overrides
    changed = with_params(B200, {"compute.kernel_overhead_us": 20.0})
    value2 = predict_serving_case(CaseInputs(E2E, "serving"), changed)
    with profile_overrides({"b200": changed}):
        best2 = max(r.evaluation.tokens_per_s / r.evaluation.candidate.devices
                    for r in plan(sc, executor="inline").ranked)
    assert value2 == best2 and value2 < value
    with pytest.raises(Exception, match="latency limits"):
        predict_serving_case({**E2E, "max_load": None}, B200)


def test_stated_recompute_modules_are_priced_not_ignored():
    """A row's recompute_modules (Megatron --recompute-modules) is read and priced: it changes the
    prediction against the default selective (core_attn) and is not listed in ignored_inputs;
    stated with a recompute that is not selective it is refused naming the field."""
    inputs = {k: v for k, v in TRAIN.items() if k != "metric"}
    (sel,) = validate(_file({**inputs, "recompute": "selective"})).cases
    (mods,) = validate(_file({**inputs, "recompute": "selective", "recompute_modules": ["moe_act", "layernorm"]})).cases
    assert sel.status == mods.status == "ok" and "recompute_modules" not in dict(mods.ignored_inputs)
    assert mods.predicted != sel.predicted
    (bad,) = validate(_file({**inputs, "recompute": "full", "recompute_modules": ["mlp"]})).cases
    assert bad.status == "error" and "recompute_modules" in bad.reason
