"""The fifth published end-to-end serving set (validation/data/published-e2e-serving-5.json,
docs/evidence.md 'Fifth set'): GPUStack's GPT-OSS pages on H100 and its Qwen3-235B page on A100,
well formed, evaluation only,
every row pinned to its page, and every measured value follows from the numbers printed in the
same block."""
from __future__ import annotations

import json
from pathlib import Path

from moesim.cases import parse_cases
from published_checks import check_vllm_bench_block

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
NAME = "published-e2e-serving-5.json"
PAGES = {"gpt-oss-120b": "https://github.com/gpustack/gpustack/blob/72aee9dd195ff5c9bf3a4886add80038ce79aef8/"
                         "docs/performance-lab/gpt-oss-120b/h100.md",
         "gpt-oss-20b": "https://github.com/gpustack/gpustack/blob/7b50d5067ddbdeba0739e7f72d6f40e53d3b9a04/"
                        "docs/performance-lab/gpt-oss-20b/h100.md",
         "qwen3-235b-a22b": "https://github.com/gpustack/gpustack/blob/9babbd2674ad9b74c2ea48d804c79d845b6c329b/"
                            "docs/performance-lab/qwen3-235b-a22b/a100.md"}
HARDWARE = {"gpt-oss-120b": "h100-sxm", "gpt-oss-20b": "h100-sxm", "qwen3-235b-a22b": "a100-sxm-80gb"}


def _raw():
    return json.loads((DATA / NAME).read_text())


def test_loads_as_an_evaluation_file_with_a_pinned_page_per_row():
    raw = _raw()
    cf = parse_cases(raw, NAME)
    assert cf.problems == () and cf.role == "evaluation" and len(cf.cases) == len(raw["cases"]) == 20
    assert "evaluation only" in raw["description"].lower()
    assert {c.group for c in cf.cases} == {"gpustack/gpustack"}  # one source with the serving-3 GPUStack rows
    for c in raw["cases"]:
        assert "role" not in c, c["id"]  # no row may opt into a fit
        i = c["inputs"]
        assert c["source"].startswith(PAGES[i["model"]] + " "), c["id"]
        assert c["hardware"] == HARDWARE[i["model"]] and i["phase"] == "end_to_end" and i["max_load"] is True, c["id"]
        assert i["dtype"] == "bf16" and i["ep"] == 1 and i["tp"] == i["devices"], c["id"]
        for key in i.get("not_stated", ()):
            assert i[key] is None, (c["id"], key)
        for key in i.get("assumed", ()):
            assert key in i and key in c["notes"], (c["id"], key)


def test_two_commands_per_page_four_lengths_each():
    rows = sorted((c["inputs"]["model"], c["inputs"]["tp"], "--async-scheduling" in c["inputs"]["framework"],
                   c["inputs"]["prompt_len"]) for c in _raw()["cases"])
    lengths = [128, 2000, 4000, 32000]
    assert rows == sorted([("gpt-oss-120b", 1, False, n) for n in lengths] + [("gpt-oss-120b", 2, True, n) for n in lengths]
                          + [("gpt-oss-20b", 1, False, n) for n in lengths] + [("gpt-oss-20b", 1, True, n) for n in lengths]
                          + [("qwen3-235b-a22b", 8, False, n) for n in lengths])


def test_measured_follows_from_the_printed_block():
    # every row is one printed vllm bench serve block (published_checks.check_vllm_bench_block)
    for c in _raw()["cases"]:
        check_vllm_bench_block(c)


def test_disjoint_from_every_other_case_file():
    ids = {c["id"] for c in _raw()["cases"]}
    for other in DATA.glob("*.json"):
        if other.name == NAME:
            continue
        raw = json.loads(other.read_text())
        if isinstance(raw, dict) and "cases" in raw:
            assert not ids & {c["id"] for c in raw["cases"]}, other.name
