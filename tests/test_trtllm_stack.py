"""TensorRT-LLM as two software stacks (moesim/data/stacks.toml ``trtllm``: the PyTorch backend,
``trtllm-engine``: TensorRT engines with the C++ runtime) and the executor loop's per-sequence
host time (moesim/step/host.py eqs. 4-6): closed forms, the step model, the case mapping, the
scheduler, spec validation and old tables."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate import case_stack_params
from moesim.case_inputs import case_stack
from moesim.cases import load_cases
from moesim.catalog import build, load_model, load_profile
from moesim.errors import SpecError
from moesim.specs import Deployment
from moesim.specs.software_stack import PhaseHost
from moesim.step import Decode, Prefill, estimate
from moesim.step.host import loop_host_s, loop_sequences, loop_time_s
from moesim.step.stacks import fit_params, is_trtllm, parse_table, stack_table
from moesim.step_cases import case_scheduler

ROOT = Path(__file__).resolve().parents[1]
MIXTRAL = load_model("mixtral-8x7b")
H200 = load_profile("h200-sxm")
SERVING_2 = ROOT / "validation/data/published-e2e-serving-2.json"
MAXLOAD = ROOT / "validation/data/published-e2e-serving-maxload.json"


def _stack(us: float, loop: str = "overlapped"):
    """trtllm as an explicit SoftwareStack with ``host_seq_us`` = us and the given loop."""
    t = stack_table().with_values({"trtllm.decode.host_seq_us": us})
    s = t.inline("trtllm", "decode")
    return s.model_copy(update={p: s.phase(p).model_copy(update={"loop": loop}) for p in ("prefill", "decode")})


# ---- closed forms ------------------------------------------------------------------------------
def test_loop_host_is_sequences_times_us():
    # eq. 4 by hand: 300 sequences x 20 us = 6 ms (exact up to float rounding)
    assert loop_host_s(300, "decode", _stack(20.0)) == pytest.approx(6e-3, rel=1e-12)
    assert loop_host_s(300, "prefill", _stack(20.0)) == pytest.approx(6e-3, rel=1e-12)  # prefill -> trtllm.decode
    # stacks that price no loop: 0 whatever the batch
    for name in ("sglang", "vllm", "trtllm-engine", "megatron"):
        assert loop_host_s(4096, "decode", name) == 0.0
    # sequences an executor rank handles: decode batch x tp x pp; prefill prompts x tp x pp
    assert loop_sequences(16, 4, 2, "decode") == 128
    assert loop_sequences(8192, 2, 1, "prefill", prompt_len=1024) == 16


def test_max_rule_overlapped_and_sum_rule_synchronous():
    dev, issue = np.array([10e-3, 10e-3, 10e-3]), np.array([1e-3, 1e-3, 4e-3])
    loop = np.array([2e-3, 12e-3, 7e-3])
    # eq. 5: max(device, issue + loop): 10, 13, 11 ms
    got = loop_time_s(dev, issue, loop, "decode", _stack(1.0, "overlapped"))
    assert got == pytest.approx([10e-3, 13e-3, 11e-3], rel=1e-12)
    # eq. 6: device + loop: 12, 22, 17 ms
    got = loop_time_s(dev, issue, loop, "decode", _stack(1.0, "synchronous"))
    assert got == pytest.approx([12e-3, 22e-3, 17e-3], rel=1e-12)


# ---- the step model ----------------------------------------------------------------------------
def _dep(stack, tp: int = 1):
    return Deployment(hardware=H200, devices=tp, tp=tp, dp=1, ep=tp, dtype="fp8", stack=stack)


@pytest.mark.parametrize("tp", [1, 2])
def test_step_model_charges_the_loop_in_decode(tp):
    batches = [1.0, 64.0, 512.0]
    w = Decode(batches, 1024)
    base = estimate(MIXTRAL, _dep(_stack(0.0), tp), w, check_memory=False)
    for loop in ("overlapped", "synchronous"):
        got = estimate(MIXTRAL, _dep(_stack(50.0, loop), tp), w, check_memory=False)
        n = np.asarray(batches) * tp  # a TP group's ranks all handle its whole batch
        h = n * 50e-6
        issue = np.array([b.host_issue_s for b in base.breakdowns()])
        want = np.maximum(base.step_time_s, issue + h) if loop == "overlapped" else base.step_time_s + h
        # the same closed form on the h = 0 iteration (float rounding only)
        assert got.step_time_s == pytest.approx(want, rel=1e-9)
        for i, b in enumerate(got.breakdowns()):
            assert b.host_loop_s == pytest.approx(h[i], rel=1e-12)
            # the exposed part is host time the device waits for
            assert b.host_s - base.breakdown(i).host_s == pytest.approx(want[i] - base.step_time_s[i], rel=1e-9,
                                                                        abs=1e-15)
    # overlapped: one sequence's loop hides behind the device; 512 x tp x 200 us = 102 ms x tp does
    # not (the device iteration at 512 is ~64 ms)
    over = estimate(MIXTRAL, _dep(_stack(200.0), tp), w, check_memory=False)
    assert over.step_time_s[0] == pytest.approx(base.step_time_s[0], rel=1e-12)
    assert over.step_time_s[2] > base.step_time_s[2]


def test_step_model_prefill_is_eager_and_pays_the_loop_per_prompt():
    w = Prefill(1024, [1.0, 8.0])
    base = estimate(MIXTRAL, _dep(_stack(0.0)), w, check_memory=False)
    got = estimate(MIXTRAL, _dep(_stack(400.0, "synchronous")), w, check_memory=False)
    # synchronous: + prompts x 400 us (1 and 8 prompts)
    assert got.step_time_s - base.step_time_s == pytest.approx([400e-6, 3200e-6], rel=1e-9)
    # a context iteration of the PyTorch backend issues every operator (no graph): host issue
    # of an eager layer; a generation-only iteration replays one graph
    pre = stack_table().phase("trtllm", "prefill")
    dec = stack_table().phase("trtllm", "decode")
    assert pre.captured == "none" and float(pre.host_op_us) > 0 and dec.captured == "all"
    assert base.breakdown(0).host_issue_s > 100 * estimate(MIXTRAL, _dep(_stack(0.0)), Decode(1.0, 1024),
                                                           check_memory=False).breakdown(0).host_issue_s


def test_mixed_iteration_charges_eager_issue_and_the_loop():
    # GridCost.mixed_time_s = max(decode(d), prefill(P + d) + attention): the eager prefill pass
    # carries the operator issue, the decode pass the loop over the d sequences
    from moesim.des.serving.deployment import from_deployment

    d = 256
    cost = from_deployment(MIXTRAL, _dep(_stack(100.0)), prompt_len_hint=1024)
    decode = cost.decode_time_s(d, 1024)
    mixed = cost.mixed_time_s(1024, 1, d, 1024)
    assert decode >= d * 100e-6  # overlapped: the iteration is at least its loop
    assert mixed >= decode
    eager = estimate(MIXTRAL, _dep(_stack(100.0)), Prefill(1024, 1.0), check_memory=False).breakdown(0)
    assert mixed >= eager.host_issue_s


def test_cli_step_shows_the_loop_term():
    import contextlib
    import io

    from moesim.cli import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(["step", "--model", "mixtral-8x7b", "--hw", "h200-sxm", "--devices", "1", "--phase", "decode",
              "--batch-per-device", "64", "--context", "1024", "--dtype", "fp8", "--stack", "trtllm"])
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("host"))
    assert "executor loop" in line and "us/sequence" in line and "overlapped" in line


# ---- the split ---------------------------------------------------------------------------------
def test_every_published_trtllm_row_maps_to_its_stack():
    rows = load_cases(SERVING_2).cases + load_cases(MAXLOAD).cases
    assert len(rows) == 230 + 123  # v0.17 20 + v1.0-era 210; maxload 106 MoE + 17 dense (session 26)
    for c in rows:
        want = "trtllm-engine" if c.id.startswith("trtllm-v017-") else "trtllm"
        assert case_stack(dict(c.inputs), c.hardware, "decode") == want, c.id
        assert case_scheduler(dict(c.inputs)) == "trtllm", c.id  # both: TensorRT-LLM's scheduler


@pytest.mark.parametrize("framework, want", [
    ("TensorRT-LLM v0.17 (TensorRT engine built by trtllm-bench build), trtllm-bench throughput", "trtllm-engine"),
    ("TensorRT-LLM C++ runtime, gptManagerBenchmark", "trtllm-engine"),
    ("TensorRT-LLM (PyTorch backend), trtllm-bench throughput", "trtllm"),
    ("TRT-LLM 1.0", "trtllm"),
])
def test_framework_strings(framework, want):
    assert case_stack({"framework": framework}, "h200-sxm", "decode") == want
    assert case_stack({"framework": framework, "cuda_graphs": False}, "h200-sxm", "decode") == "eager"


def test_both_stacks_get_the_trtllm_scheduler_in_scenarios():
    from moesim.planner import serving_policy
    from moesim.planner.scenario import scenario_from_dict

    base = {"kind": "serving", "name": "t", "model": "mixtral-8x7b", "hardware": ["h200-sxm"], "max_devices": 8,
            "workload": {"prompt_len": 1000, "output_len": 1000, "target_output_tokens_per_s": 1.0, "dtype": "fp8"},
            "slo": {"tpot_s": 1.0, "ttft_s": 100.0}}
    for stack, want in (("trtllm", "trtllm"), ("trtllm-engine", "trtllm"), ("sglang", "batched_prefill"),
                        ("auto", "batched_prefill")):
        sc = scenario_from_dict({**base, "stack": stack}, source="test")
        assert serving_policy.engine(sc) == want, stack
    # an explicit SoftwareStack (a fit's trial values) keeps its name's scheduler
    assert is_trtllm(stack_table().inline("trtllm-engine", "decode"))
    assert is_trtllm(_stack(3.0)) and not is_trtllm("vllm") and not is_trtllm(None)
    with pytest.raises(Exception, match="trtllm-engine"):  # the error lists the new name
        scenario_from_dict({**base, "stack": "tensorrt"}, source="test")


def test_fit_parameters_per_stack():
    t = stack_table()
    params = fit_params(t)
    assert "trtllm.decode.host_seq_us" in params and "trtllm.prefill.device_fraction" in params
    assert "trtllm-engine.prefill.host_op_us" in params and "trtllm-engine.prefill.device_fraction" in params
    rows = {c.id: c for c in load_cases(SERVING_2).cases}
    v017 = case_stack_params(rows["trtllm-v017-mixtral-8x7b-h200-sxm-tp1-fp8-isl1000-osl1000"], t)
    v10 = case_stack_params(rows["trtllm-v10-llama4-scout-b200-tp1-fp4-isl1000-osl1000"], t)
    assert set(v017) == {"trtllm-engine.prefill.host_op_us", "trtllm-engine.prefill.device_fraction"}
    assert set(v10) == {"trtllm.prefill.device_fraction", "trtllm.prefill.host_op_us", "trtllm.decode.host_seq_us"}
    # one whole source per stack: every row of serving-2 is calibration, no maxload row is
    assert all(c.role == "calibration" for c in rows.values())
    assert not any(c.role == "calibration" for c in load_cases(MAXLOAD).cases)
    # the engine keeps no per-sequence loop (its C++ batch manager)
    assert stack_table().phase("trtllm-engine", "decode").host_seq_us == 0.0


# ---- validation and old tables -----------------------------------------------------------------
@pytest.mark.parametrize("field, value, match", [
    ("host_seq_us", -1.0, r"host_seq_us = -1.0: allowed: 0 to 1000 us"),
    ("host_seq_us", 5000.0, r"host_seq_us = 5000.0: allowed: 0 to 1000 us"),
    ("seq_fit_max", -2.0, r"seq_fit_max = -2.0: allowed: 0 to 1000 us"),
    ("loop", "async", r"loop"),
    ("host_seq_us", "nostack.decode", r"host_seq_us = 'nostack.decode': allowed: a number or"),
])
def test_phase_fields_are_validated(field, value, match):
    with pytest.raises(Exception, match=match):
        build(PhaseHost, {"captured": "all", "source": "test", field: value}, source="test row")


def test_fitted_host_seq_needs_prior_and_range():
    with pytest.raises(Exception, match="fit_seq"):
        build(PhaseHost, {"captured": "all", "source": "t", "host_seq_us": 1.0, "fit_seq": True}, source="t")
    with pytest.raises(SpecError, match="trtllm.decode.host_seq_us"):
        stack_table().with_values({"trtllm.decode.host_seq_us": 2000.0})


def test_old_table_without_the_split_still_loads():
    data = tomllib.loads((ROOT / "moesim/data/stacks.toml").read_text())
    old = {k: v for k, v in data.items() if k != "trtllm-engine"}
    old["trtllm"] = data["trtllm-engine"] | {
        "decode": {k: v for k, v in data["trtllm-engine"]["decode"].items()} | {"device_fraction": "trtllm.prefill"}}
    for ph in ("prefill", "decode"):  # the pre-split rows had no per-sequence keys
        for key in ("host_seq_us", "loop", "fit_seq", "seq_prior_us", "seq_fit_max"):
            old["trtllm"][ph].pop(key, None)
    t = parse_table(old)
    assert set(t.stacks) == set(stack_table().stacks)
    eng = t.phase("trtllm-engine", "decode")
    assert eng.host_seq_us == 0.0 and eng.loop == "synchronous"
    assert t.value("trtllm-engine.prefill.device_fraction") == t.value("trtllm.prefill.device_fraction")
    assert t.value("trtllm-engine.decode.device_fraction") == t.value("trtllm.prefill.device_fraction")


def test_a_stack_fit_is_reused_when_only_parameters_its_rows_do_not_run_change():
    """LOGO refits every stack per left-out group; a trtllm fit (210 end-to-end rows, minutes)
    depends on its rows, their profiles, bounds, priors and the other values its rows run, not on
    megatron's or sglang's values (moesim/calibrate.py ``_fingerprint``)."""
    from moesim.calibrate import _fingerprint

    rows = [c for c in load_cases(SERVING_2).cases if c.id.startswith("trtllm-v10-")][:3]
    table = stack_table()
    profiles = {c.hardware: load_profile(c.hardware) for c in rows}
    params = ["trtllm.prefill.device_fraction"]
    bounds, priors = {params[0]: (0.3, 1.0)}, {params[0]: 1.0}
    base = _fingerprint(rows, profiles, table, params, bounds, priors)
    assert _fingerprint(rows, profiles, table.with_values({"megatron.train.host_op_us": 99.0}), params, bounds,
                        priors) == base
    assert _fingerprint(rows, profiles, table.with_values({"sglang.prefill.device_fraction": 0.9}), params, bounds,
                        priors) == base
    # a value the rows run (the per-sequence host time of trtllm decode) is part of the key
    assert _fingerprint(rows, profiles, table.with_values({"trtllm.decode.host_seq_us": 9.0}), params, bounds,
                        priors) != base
