"""The dense training rows (Megatron-Bridge Llama 3 recipes, docs/evidence.md 'Dense training rows'):
well formed, evaluation only, copied as printed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.catalog import load_model
from moesim.cases import load_cases, parse_cases

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
EVAL = "published-e2e-training-dense.json"


def _raw(name):
    return json.loads((DATA / name).read_text())


def test_well_formed_dense_rows():
    raw = _raw(EVAL)
    cf = parse_cases(raw, EVAL)
    assert cf.problems == () and cf.role == "evaluation" and len(cf.cases) == len(raw["cases"]) == 42
    assert all(c.role == "evaluation" for c in cf.cases)
    for c in raw["cases"]:
        i = c["inputs"]
        assert c["kind"] == "training" and i["ep"] == 1, c["id"]  # dense: no experts
        assert c["source"].startswith("https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/"), c["id"]
        assert c["measured"]["value"] == c["published"]["value"], c["id"]
        for key in i.get("not_stated", ()):
            assert i[key] is None, (c["id"], key)
        for key in i.get("assumed", ()):
            assert key in i and key in c["notes"], (c["id"], key)
        # GA = GBS / (DP x MBS), DP = devices / (TP x PP x CP)
        dp = i["devices"] // (i["tp"] * i["pp"] * i["cp"])
        assert i["grad_accum_steps"] * dp * i["micro_batch"] == i["global_batch"], c["id"]


def test_dense_rows_copied_as_printed():
    # model TFLOP/s per token is one constant per (model, sequence length) across hardware, versions
    # and precisions (the table's own counting convention): a transcription check, rtol 2% for the
    # table's rounding of both columns (the smallest printed value, 8B tokens/s, has 4-5 digits)
    per_token: dict[tuple, list[float]] = {}
    for c in _raw(EVAL)["cases"]:
        key = (c["inputs"]["model"], c["inputs"]["seq_len"])
        per_token.setdefault(key, []).append(c["also_published"][0]["value"] / c["measured"]["value"])
    assert len(per_token) >= 3
    for key, v in per_token.items():
        assert max(v) / min(v) < 1.02, (key, v)


def test_dense_rows_load_as_cases():
    cases = load_cases(DATA / EVAL).cases
    assert len(cases) == 42 and all(load_model(c.inputs["model"]).moe is None for c in cases) and {c.hardware for c in cases} == {"gb300", "gb200", "b200", "h100-sxm"}
