"""Every planner example in examples/ runs (with --small so each stays within a few seconds)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from moesim.planner.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["plan_serving.py", "plan_training.py", "whatif_topk_capacity.py", "moe_vs_dense.py", "pilot_plan.py"]
SCENARIOS = ["plan_deepseek_v3_gpu_tpu.toml", "train_mixtral_8x22b.toml", "plan_deepseek_v3_disagg.toml"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_files_validate(name):
    assert load_scenario(EXAMPLES / name).name


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, "--small"])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    expected = {"plan_serving.py": "answer:", "plan_training.py": "MFU", "whatif_topk_capacity.py": "delta",
                "moe_vs_dense.py": "llama3.1-405b", "pilot_plan.py": "roll back if"}[name]
    assert expected in out
