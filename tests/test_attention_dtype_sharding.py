"""``Deployment.attention_dtype`` and ``Deployment.sharding`` reach the user: ``moesim step
--attention-dtype / --sharding`` and the planner's ``search.attention_dtype`` (end-to-end rows
that state it pass it on instead of listing it as ignored). Each path must give the step model's
own number for the same Deployment (tolerance: same call, rtol 1e-12)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from moesim.catalog import load_model, load_profile
from moesim.cli import run
from moesim.planner import serving_policy as sp
from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner.costs import deployment_of
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict
from moesim.specs import Deployment
from moesim.step import Decode, Training, estimate

ROOT = Path(__file__).resolve().parents[1]


def _step_json(capsys, *argv):
    code = run(["step", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_step_attention_dtype_and_sharding_flags(capsys):
    m, hw = load_model("deepseek-v3"), load_profile("h200-sxm")
    base = ["--model", "deepseek-v3", "--hw", "h200-sxm", "--devices", "8", "--ep", "8", "--attention", "dp",
            "--phase", "decode", "--dtype", "fp8", "--batch-per-device", "32", "--context", "2000"]
    code, data, _ = _step_json(capsys, *base, "--attention-dtype", "bf16")
    dep = Deployment(hardware=hw, devices=8, dp=8, ep=8, attention_layout="dp", dtype="fp8", attention_dtype="bf16")
    assert code == 0
    assert data["step_time_s"] == pytest.approx(estimate(m, dep, Decode(32, 2000)).step_time_s[0], rel=1e-12)
    _, plain, _ = _step_json(capsys, *base)
    assert data["step_time_s"] > plain["step_time_s"]  # bf16 projections cost more than fp8 ones

    mx = load_model("mixtral-8x7b")
    train = ["--model", "mixtral-8x7b", "--hw", "h100-sxm", "--devices", "64", "--ep", "8", "--phase", "train",
             "--no-memory-check"]
    times = {}
    for sharding in ("ddp", "zero1", "fsdp"):
        code, data, _ = _step_json(capsys, *train, "--sharding", sharding)
        dep = Deployment(hardware=load_profile("h100-sxm"), devices=64, dp=64, ep=8, sharding=sharding)
        assert code == 0
        times[sharding] = data["step_time_s"]
        assert times[sharding] == pytest.approx(estimate(mx, dep, Training(1024, 4096, 1), check_memory=False)
                                                .step_time_s[0], rel=1e-12)
    assert times["fsdp"] > times["zero1"]  # per-layer weight all-gathers and gradient reduce-scatters


@pytest.mark.parametrize("argv, names", [
    (["--attention-dtype", "fp7"], ("--attention-dtype", "bf16", "fp8")),
    (["--sharding", "fsdp"], ("--sharding", "--phase train", "ddp, zero1, fsdp")),
])
def test_step_flag_errors_name_the_field_and_allowed_values(capsys, argv, names):
    code = run(["step", "--model", "deepseek-v3", "--hw", "h200-sxm", "--devices", "8", "--ep", "8",
                "--phase", "decode", *argv])
    err = capsys.readouterr().err
    assert code == 2 and all(n in err for n in names) and "Traceback" not in err


def _scenario(attention_dtype=None):
    search = {"devices_per_replica": [8], "batch_per_device": [32], "tp": [1], "attention_layouts": ["dp"]}
    if attention_dtype is not None:
        search["attention_dtype"] = attention_dtype
    return scenario_from_dict({"model": "deepseek-v3", "hardware": ["h200-sxm"],
                               "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
                               "slo": {"tpot_s": 1.0}, "search": search, "verify": {"top_n": 0}})


def test_planner_prices_search_attention_dtype():
    m = load_model("deepseek-v3")
    c = Candidate("h200-sxm", 8, tp=1, dp=8, ep=8, attention_layout="dp", batch=32)
    sc = _scenario("bf16")
    ev = AnalyticEvaluator().evaluate([c], sc)[0]
    dep = deployment_of(c, sc, m, overlap=sp.overlaps_of(ev.detail)["decode"])
    assert dep.attention_dtype == "bf16"
    assert ev.step_time_s == pytest.approx(estimate(m, dep, Decode(32, 1200), check_memory=False).step_time_s[0],
                                           rel=1e-12)
    plain = AnalyticEvaluator().evaluate([c], _scenario())[0]
    assert ev.step_time_s > plain.step_time_s


def test_search_attention_dtype_error_names_field():
    from moesim.errors import MoesimError

    with pytest.raises(MoesimError, match=r"search\.attention_dtype.*allowed dtypes: .*bf16"):
        _scenario("fp7")


def test_end_to_end_row_passes_attention_dtype_on():
    from moesim.cases import load_cases
    from moesim.validate import predict_case

    cases = load_cases(ROOT / "validation" / "data" / "published-e2e-serving-2.json").cases
    case = next(c for c in cases if c.id == "trtllm-v017-mixtral-8x7b-h200-sxm-tp1-fp8-isl1000-osl1000")
    hw = load_profile(case.hardware)
    with_bf16 = replace(case, inputs={**case.inputs, "attention_dtype": "bf16"})
    p, q = predict_case(with_bf16, hw), predict_case(case, hw)
    assert p.status == "ok" and "attention_dtype" not in dict(p.ignored_inputs)
    assert p.predicted < q.predicted  # bf16 attention projections: fewer output tokens/s than fp8
