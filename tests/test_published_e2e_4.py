"""The fourth published end-to-end serving set (validation/data/published-e2e-serving-4.json,
docs/evidence.md 'Fourth set'): TensorRT-LLM's DeepSeek-R1 best-performance guide, pinned; well
formed, evaluation only, every engine limit its command states carried as an input, and every
measured value consistent with the totals printed beside it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.cases import parse_cases
from moesim.planner.serving_policy import TRTLLM_ENGINE_KEYS

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
NAME = "published-e2e-serving-4.json"
SOURCE = ("https://github.com/NVIDIA/TensorRT-LLM/blob/01c4ece911eb569e72cf4177f83238a0520641c2/docs/source/blogs/"
          "Best_perf_practice_on_DeepSeek-R1_in_TensorRT-LLM.md")


def _raw():
    return json.loads((DATA / NAME).read_text())


def test_loads_as_an_evaluation_file_with_the_pinned_source():
    raw = _raw()
    cf = parse_cases(raw, NAME)
    assert cf.problems == () and cf.role == "evaluation" and len(cf.cases) == len(raw["cases"]) == 3
    assert "evaluation only" in raw["description"].lower()
    for c in raw["cases"]:
        assert "role" not in c, c["id"]
        assert c["source"].startswith(SOURCE), c["id"]
        i = c["inputs"]
        assert i["phase"] == "end_to_end" and i["max_load"] is True and i["attention_layout"] == "dp", c["id"]
        assert i["devices"] == i["ep"] == 8 and i["tp"] == 1, c["id"]
        assert all(i.get(k) is not None for k in TRTLLM_ENGINE_KEYS), c["id"]  # the command states every limit
        assert i["concurrency"] == 8 * i["max_batch_size"], c["id"]  # the guide's concurrency = ranks x batch
        assert i["max_num_tokens"] >= i["prompt_len"], c["id"]  # a whole prompt fits (no chunking)
        for key in i.get("assumed", ()):
            assert key in c["notes"], (c["id"], key)


def test_measured_is_the_printed_total_over_eight_gpus():
    # trtllm-bench prints Total Output Throughput and Per GPU Output Throughput (4 decimals each):
    # per GPU = total / 8 within the last printed digit (rel 1e-7)
    for c in _raw()["cases"]:
        also = {p["metric"]: p["value"] for p in c["also_published"]}
        assert c["measured"]["value"] == c["published"]["value"]
        assert c["measured"]["value"] == pytest.approx(also["total_output_throughput"] / 8, rel=1e-7), c["id"]
        # input / output tokens of the run: (total - output) / output = ISL / OSL of the 1K/2K dataset
        ratio = (also["total_token_throughput"] - also["total_output_throughput"]) / also["total_output_throughput"]
        assert ratio == pytest.approx(c["inputs"]["prompt_len"] / c["inputs"]["output_len"], abs=0.01), c["id"]
