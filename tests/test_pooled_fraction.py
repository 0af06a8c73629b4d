"""Pooled device fractions (moesim/data/stacks.toml ``pool_fraction``; moesim/calibrate.py
``pool_fractions``) and the ROCm SGLang stack.

An engine with no calibration source of its own (vLLM on CUDA) takes the median of the identified
serving-phase fractions of the other stacks, recomputed by every fit: its own rows are never fitted
on, and a fold that leaves a source out drops that source's fit from the pool. The shipped value
must be that median of the shipped fitted fractions."""
from __future__ import annotations

from statistics import median

import pytest

from moesim.calibrate import StackParamFit, fit_stacks, pool_fractions
from moesim.case_inputs import case_stack
from moesim.specs.software_stack import PhaseHost
from moesim.step.stacks import fit_params, pooled_params, stack_table

DONORS = ("sglang.prefill.device_fraction", "trtllm.prefill.device_fraction",
          "trtllm-engine.prefill.device_fraction", "vllm-rocm.prefill.device_fraction")


def _fit(param: str, value: float, identified: bool = True, rows=("r",)) -> StackParamFit:
    return StackParamFit(param, value, tuple(rows), identified, "test")


def test_vllm_is_the_pooled_engine_and_never_a_fit_parameter():
    t = stack_table()
    assert pooled_params(t) == ("vllm.prefill.device_fraction",)
    assert not set(pooled_params(t)) & set(fit_params(t))
    assert t.value("vllm.decode.device_fraction") == t.value("vllm.prefill.device_fraction")


def test_shipped_pool_is_the_median_of_the_shipped_serving_fits():
    # every serving-phase fraction the table fits (the donors) and nothing else: megatron's train
    # fraction is a training stack's and stays out
    t = stack_table()
    fitted = {p for p in fit_params(t) if p.endswith(".device_fraction") and ".train." not in p}
    assert fitted == set(DONORS)
    want = median(t.value(p) for p in DONORS)
    assert t.value("vllm.prefill.device_fraction") == pytest.approx(want, abs=5e-5 + 1e-9)  # written to 4 digits (half a unit, plus float slack)


def test_pool_uses_only_identified_serving_fractions():
    t = stack_table()
    fits = {"sglang.prefill.device_fraction": _fit("sglang.prefill.device_fraction", 0.6, rows=("a",)),
            "trtllm.prefill.device_fraction": _fit("trtllm.prefill.device_fraction", 0.7, rows=("b", "c")),
            "trtllm-engine.prefill.device_fraction": _fit("trtllm-engine.prefill.device_fraction", 1.0, False),
            "megatron.train.device_fraction": _fit("megatron.train.device_fraction", 0.1),
            "trtllm.prefill.host_op_us": _fit("trtllm.prefill.host_op_us", 15.0)}
    out = pool_fractions(fits, t)["vllm.prefill.device_fraction"]
    assert out.pooled and out.identified
    assert out.value == pytest.approx(0.65)  # median of 0.6 and 0.7: the unidentified 1.0 and train 0.1 left out
    assert out.rows == ("a", "b", "c")
    assert "sglang.prefill.device_fraction 0.6" in out.note and "megatron" not in out.note


def test_a_held_out_engine_takes_the_pool_not_the_full_kernel_rate():
    # a leave-one-group-out fold that drops trtllm's only source: its serving fraction has no row
    # (fit_stacks' "no row runs it") and is pooled like an engine that never had a source; one
    # with rows that did not identify it keeps the fit's answer, and training fractions never pool
    t = stack_table()
    fits = {"sglang.prefill.device_fraction": _fit("sglang.prefill.device_fraction", 0.6, rows=("a",)),
            "vllm-rocm.prefill.device_fraction": _fit("vllm-rocm.prefill.device_fraction", 0.3, rows=("b",)),
            "trtllm.prefill.device_fraction": _fit("trtllm.prefill.device_fraction", 1.0, False, rows=()),
            "trtllm-engine.prefill.device_fraction": _fit("trtllm-engine.prefill.device_fraction", 1.0, False),
            "megatron.train.device_fraction": _fit("megatron.train.device_fraction", 1.0, False, rows=()),
            "trtllm.prefill.host_op_us": _fit("trtllm.prefill.host_op_us", 5.0, False, rows=())}
    out = pool_fractions(fits, t)
    held = out["trtllm.prefill.device_fraction"]
    assert held.pooled and held.identified and held.value == pytest.approx(0.45)  # median of 0.6 and 0.3
    assert held.rows == ("a", "b")
    assert out["vllm.prefill.device_fraction"].value == pytest.approx(0.45)
    assert "trtllm-engine.prefill.device_fraction" not in out  # it has rows: its own fit stands
    assert "megatron.train.device_fraction" not in out and "trtllm.prefill.host_op_us" not in out


def test_nothing_identified_keeps_the_prior():
    out = pool_fractions({"sglang.prefill.device_fraction": _fit("sglang.prefill.device_fraction", 1.0, False)},
                         stack_table())["vllm.prefill.device_fraction"]
    assert out.value == 1.0 and not out.identified and out.pooled


def test_fit_stacks_returns_the_pool_and_its_own_rows_stay_out():
    # no row at all: every fraction keeps its prior, so the pool has no donor
    fits = fit_stacks([], {})
    assert fits["vllm.prefill.device_fraction"].value == 1.0 and not fits["vllm.prefill.device_fraction"].identified
    # a vLLM (CUDA) row, V1 or V0 engine, runs no fitted parameter: it is never a row of any fit, so it
    # stays out of sample
    from pathlib import Path

    from moesim.calibrate import case_stack_params
    from moesim.cases import load_cases

    rows = [c for c in load_cases(Path(__file__).resolve().parents[1] / "validation/data/published-e2e-serving-3.json").cases
            if case_stack(dict(c.inputs), c.hardware, "decode") in ("vllm", "vllm-v0")]
    assert len(rows) == 14 and all(case_stack_params(c, stack_table()) == () for c in rows)


def test_a_pooled_entry_is_either_pooled_or_fitted():
    with pytest.raises(ValueError, match="pool_fraction"):  # pydantic wraps the SpecError
        PhaseHost(captured="all", device_fraction=0.5, pool_fraction=True, fit_fraction=True, source="x")
    with pytest.raises(ValueError, match="pool_fraction"):  # pydantic wraps the SpecError
        PhaseHost(captured="all", device_fraction="sglang.prefill", pool_fraction=True, source="x")


def test_sglang_rocm_runs_sglang_host_at_the_rocm_fraction():
    t = stack_table()
    for phase in ("prefill", "decode"):
        assert t.value(f"sglang-rocm.{phase}.device_fraction") == t.value("vllm-rocm.prefill.device_fraction")
        assert t.phase("sglang-rocm", phase).captured == t.phase("sglang", phase).captured
    assert t.value("sglang-rocm.prefill.host_op_us") == t.value("sglang.prefill.host_op_us")
    assert "AITER" in t.phase("sglang-rocm", "prefill").source
    assert case_stack({"framework": "SGLang 0.4.2.post4 (ROCm)"}, "mi325x", "prefill") == "sglang-rocm"
    assert case_stack({"framework": "SGLang"}, "h100-sxm", "prefill") == "sglang"


@pytest.mark.parametrize("stack, line, origin", [
    ("vllm", "vllm: device fraction {f} (pooled, as vllm.prefill)", "pooled"),
    ("sglang-rocm", "sglang-rocm: device fraction {f} (fitted, as vllm-rocm.prefill)", "fitted"),
    ("cuda_graphs", "cuda_graphs: device fraction {f} (prior)", "prior"),
])
def test_step_says_where_the_fraction_comes_from(capsys, stack, line, origin):
    # the text line and the JSON keys of `moesim step` (the shipped table's values, printed to 4 digits)
    import json

    from moesim.cli import run as main

    hw = "mi300x" if stack == "sglang-rocm" else "h100-sxm"  # a ROCm stack runs on AMD hardware only
    args = ["step", "--model", "qwen3-30b-a3b", "--hw", hw, "--devices", "1", "--phase", "decode",
            "--batch-per-device", "8", "--context", "512", "--dtype", "fp8", "--stack", stack]
    assert main(args) == 0
    assert line.format(f=f"{stack_table().value(f'{stack}.decode.device_fraction'):.4g}") in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stack"] == stack and data["device_fraction_origin"] == origin
    assert data["device_fraction"] == pytest.approx(stack_table().value(f"{stack}.decode.device_fraction"))


def test_fraction_origin_of_names_and_an_explicit_stack():
    from moesim.step.stacks import fraction_origin

    t = stack_table()
    assert fraction_origin("auto", "decode") == fraction_origin("sglang", "decode")
    fo = fraction_origin("vllm", "decode")
    assert (fo.stack, fo.origin, fo.entry) == ("vllm", "pooled", "vllm.prefill")
    assert fo.fraction == t.value("vllm.prefill.device_fraction")
    assert fraction_origin("megatron-cudagraph", "train").origin == "fitted"
    stated = fraction_origin(t.inline("trtllm", "decode"), "decode")
    assert stated.origin == "stated" and stated.entry is None and stated.fraction == t.value("trtllm.prefill.device_fraction")


def test_plan_provenance_names_the_stack_fraction():
    # the default scenario (stack auto -> sglang in serving) and the same scenario under vllm
    from moesim.planner.scenario import default_scenario
    from moesim.provenance import for_plan

    s = default_scenario()

    class _Result:  # the two attributes for_plan reads of a PlanResult
        scenario, answer = s, None

    prov = for_plan(_Result())
    line = next(x for x in prov.lines() if x.startswith("software stack"))
    f = stack_table().value("sglang.prefill.device_fraction")
    assert line == f"software stack sglang: device fraction {f:.4g} (fitted) in prefill and decode"
    assert [d["phase"] for d in prov.to_dict()["stack_fractions"]] == ["prefill", "decode"]

    class _Vllm:
        scenario, answer = s.model_copy(update={"stack": "vllm"}), None

    line = next(x for x in for_plan(_Vllm()).lines() if x.startswith("software stack"))
    f = stack_table().value("vllm.prefill.device_fraction")
    assert line.startswith(f"software stack vllm: device fraction {f:.4g} (pooled)")
