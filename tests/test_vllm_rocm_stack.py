"""vLLM on ROCm as its own software stack (moesim/data/stacks.toml ``vllm-rocm``), mapped from the
framework text and the hardware profile's vendor (moesim/case_inputs.py ``case_stack``), and its
calibration source (validation/data/published-calibration-serving.json: AMD's ROCm vLLM 0.7.3
dev-docker table, docs/evidence.md 'Calibration of the vLLM ROCm stack'): the file loads, every row
names the pinned source and its measured value follows from the printed throughput; the fit on it
reproduces the shipped value; published-e2e-serving-3.json stays evaluation only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.calibrate import case_stack_params, fit_stacks
from moesim.case_inputs import case_stack
from moesim.cases import load_cases, parse_cases
from moesim.catalog import load_profile
from moesim.specs.software_stack import STACK_NAMES
from moesim.step.stacks import stack_table

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "validation/data/published-calibration-serving.json"
SERVING_3 = ROOT / "validation/data/published-e2e-serving-3.json"
SOURCE = "https://github.com/ROCm/vllm/blob/b309ea79418c6fc9058a6b2dec312375d3c75753/docs/dev-docker/README.md"


def test_every_serving_3_row_maps_to_its_stack():
    # each engine on the AMD profile -> its -rocm stack (the early-2025 ROCm kernels); on NVIDIA ->
    # itself, but vLLM 0.7.4.dev (dstack's H200 rows) ran the V0 engine -> vllm-v0
    rows = load_cases(SERVING_3).cases
    assert len(rows) == 23
    for c in rows:
        engine = "vllm" if "-vllm-" in c.id else "sglang"
        want = f"{engine}-rocm" if c.hardware == "mi300x" else engine
        if want == "vllm" and "0.7.4" in c.inputs["framework"]:
            want = "vllm-v0"
        assert case_stack(dict(c.inputs), c.hardware, "decode") == want, c.id
    assert sum(case_stack(dict(c.inputs), c.hardware, "decode") == "vllm-rocm" for c in rows) == 3
    assert sum(case_stack(dict(c.inputs), c.hardware, "decode") == "sglang-rocm" for c in rows) == 3


@pytest.mark.parametrize("framework, hardware, want", [
    ("vLLM 0.7.3", "mi300x", "vllm-rocm"), ("vLLM 0.7.3", "mi325x", "vllm-rocm"),
    ("vLLM v0.11.0", "h200-sxm", "vllm"), ("vLLM", "not-a-profile", "vllm"),
    ("vLLM 0.7.4.dev181+gf35f8e22", "h200-sxm", "vllm-v0"), ("vLLM v0.6.3", "a100-sxm-80gb", "vllm-v0"),
    ("vLLM 0.8.0", "h100-sxm", "vllm"), ("vLLM 1.0", "h100-sxm", "vllm"),
    ("SGLang 0.4.2", "mi300x", "sglang-rocm"), ("SGLang 0.4.3", "h200-sxm", "sglang"),
    ("TensorRT-LLM", "mi300x", "trtllm"),
])
def test_vendor_mapping(framework, hardware, want):
    assert case_stack({"framework": framework}, hardware, "decode") == want
    # a stated eager run stays eager on every vendor
    assert case_stack({"framework": framework, "cuda_graphs": False}, hardware, "decode") == "eager"


def test_vendor_of_the_profiles():
    assert load_profile("mi300x").vendor == load_profile("mi325x").vendor == "amd"
    assert load_profile("h200-sxm").vendor == "nvidia"


def test_stack_entry_and_scenario_name():
    from moesim.planner.scenario import scenario_from_dict

    assert "vllm-rocm" in STACK_NAMES
    t = stack_table()
    pre, dec = t.phase("vllm-rocm", "prefill"), t.phase("vllm-rocm", "decode")
    assert pre.captured == "none" and pre.fit_fraction and dec.captured == "all" and dec.graphs == "step"
    assert t.value("vllm-rocm.decode.device_fraction") == t.value("vllm-rocm.prefill.device_fraction")
    base = {"kind": "serving", "name": "t", "model": "mixtral-8x7b", "hardware": ["mi300x"], "max_devices": 8,
            "workload": {"prompt_len": 1000, "output_len": 1000, "target_output_tokens_per_s": 1.0, "dtype": "fp8"},
            "slo": {"tpot_s": 1.0, "ttft_s": 100.0}}
    assert scenario_from_dict({**base, "stack": "vllm-rocm"}, source="test").stack == "vllm-rocm"
    with pytest.raises(Exception, match="vllm-rocm"):  # the error lists the stacks, the new one among them
        scenario_from_dict({**base, "stack": "rocm"}, source="test")


def test_calibration_file_loads_and_every_row_names_its_source():
    raw = json.loads(CAL.read_text())
    cf = parse_cases(raw, CAL.name)
    assert cf.problems == () and len(cf.cases) == len(raw["cases"]) == 8
    for c in raw["cases"]:
        assert c["role"] == "calibration" and c["hardware"] == "mi300x", c["id"]
        assert c["source"].startswith(SOURCE) and "Throughput Measurements" in c["source"], c["id"]
        assert len(c["notes"]) > 80 and {"metric", "value", "unit"} <= set(c["published"]), c["id"]
        i = c["inputs"]
        assert i["phase"] == "end_to_end" and i["max_load"] is True and i["tp"] == i["devices"] == 8, c["id"]
        for key in i.get("not_stated", ()):
            assert i[key] is None, (c["id"], key)
        # measured = printed total (input + output) tokens/s x OSL / (ISL + OSL) / 8 GPUs (rounded to 1e-3)
        total = c["published"]["value"]
        assert c["measured"]["value"] == pytest.approx(total * i["output_len"] / (i["prompt_len"] + i["output_len"]) / 8,
                                                       abs=1e-3), c["id"]
        assert case_stack(dict(i), c["hardware"], "decode") == "vllm-rocm", c["id"]


def test_stack_fit_files_and_evaluation_file_untouched():
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate_published", ROOT / "validation/calibrate_published.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert CAL in [Path(p).resolve() for p in mod.STACK_FIT_FILES]
    assert not any(c.role == "calibration" for c in load_cases(SERVING_3).cases)  # never fitted on


def test_fit_reproduces_the_shipped_value():
    # the fit of the vllm-rocm group alone on its 8 rows (fit_stacks, the same function the script
    # runs): the shipped table must hold its result (exact: the written value, 4 significant digits)
    rows = load_cases(CAL).cases
    t = stack_table()
    assert all(set(case_stack_params(c, t)) == {"vllm-rocm.prefill.device_fraction"} for c in rows)
    fits = fit_stacks(rows, {"mi300x": load_profile("mi300x")})
    fit = fits["vllm-rocm.prefill.device_fraction"]
    assert round(fit.value, 4) == pytest.approx(t.value("vllm-rocm.prefill.device_fraction"), abs=1e-4)


def test_fraction_min_is_the_fit_floor_and_cannot_rise_above_the_generic_one():
    from moesim.specs.software_stack import FRACTION_MIN, PhaseHost

    t = stack_table()
    pre = t.phase("vllm-rocm", "prefill")
    assert pre.fraction_min == 0.1 and "AITER" in pre.source  # the lower floor names its source
    assert t.phase("sglang", "prefill").fraction_min == FRACTION_MIN  # every other entry: the generic floor
    # the fitted value is identified below the generic floor, within the entry's own range
    assert 0.1 < t.value("vllm-rocm.prefill.device_fraction") < 1.0
    with pytest.raises(Exception, match="fraction_min"):
        PhaseHost(captured="none", fit_fraction=True, fraction_min=0.5, source="x")


def test_a_bad_stack_table_names_the_field_without_union_noise():
    # a table written for `stack` fails as a table: the error names stack.prefill.fraction_min and
    # its range, not pydantic's union members or the list of stack names it is not
    from moesim.errors import MoesimError
    from moesim.planner.scenario import scenario_from_dict

    base = {"kind": "serving", "name": "t", "model": "mixtral-8x7b", "hardware": ["mi300x"], "max_devices": 8,
            "workload": {"prompt_len": 1000, "output_len": 1000, "target_output_tokens_per_s": 1.0, "dtype": "fp8"},
            "slo": {"tpot_s": 1.0, "ttft_s": 100.0}}
    table = {"name": "mine", "train": {"captured": "none", "source": "x"},
             "prefill": {"captured": "none", "fit_fraction": True, "fraction_min": 0.5, "source": "x"},
             "decode": {"captured": "all", "source": "x"}}
    with pytest.raises(MoesimError) as err:
        scenario_from_dict({**base, "stack": table}, source="test")
    msg = str(err.value)
    assert "stack.prefill.fraction_min = 0.5" in msg and "less than or equal to 0.3" in msg
    assert "[" not in msg.split("fraction_min")[0] and "'sglang'" not in msg
