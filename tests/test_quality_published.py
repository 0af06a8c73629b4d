"""Published capacity-factor ablations (validation/data/published-quality.json) as an evaluation
of the quality model: the file quotes its sources exactly, the model is never fitted on it, and
the model orders the pairs it describes (eval-CF changes at a fixed train CF; train = eval CF)
as the papers do, except where the paper's difference is at its printed precision.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.quality import default_predictor
from moesim.quality.published import compare_published, summarize

PUBLISHED = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-quality.json"


@pytest.fixture(scope="module")
def doc():
    return json.loads(PUBLISHED.read_text())


@pytest.fixture(scope="module")
def comparisons(doc):
    return compare_published(doc, default_predictor())


def test_sources_are_cited_and_quoted(doc):
    assert doc["format"] == "moesim.published-quality" and "never fits" in doc["use"]
    for src in doc["sources"]:
        assert "arXiv:" in src["citation"] and "Table" in src["citation"] and src["quote"]
        assert src["rows"] and all({"model", "top_k", "train_cf", "eval_cf", "value"} <= set(r) for r in src["rows"])
    t1 = next(s for s in doc["sources"] if s["id"] == "switch-t1")
    # Switch Transformer Table 1, Switch-Base at capacity factor 1.0: -1.561 (quoted value)
    assert {(r["model"], r["train_cf"]): r["value"] for r in t1["rows"]}[("Switch-Base", 1.0)] == -1.561


def test_eval_cf_pairs_are_never_ordered_against_the_paper(comparisons):
    # ST-MoE Table 8: raising the eval CF at a fixed train CF never hurt; the model agrees on
    # every such pair (a larger CF drops fewer copies).
    pairs = [c for c in comparisons if c.kind == "eval_cf"]
    assert len(pairs) == 8 and all(c.agrees for c in pairs), [c.to_dict() for c in pairs if not c.agrees]


def test_train_equals_eval_pairs(comparisons):
    # Switch Table 1 and ST-MoE Table 8 at train CF = eval CF: the model agrees on every pair but
    # Switch-Base 2.0 vs 1.25, where the paper has 1.25 better by 0.001 (its printed precision).
    pairs = [c for c in comparisons if c.kind == "train_and_eval"]
    wrong = [(c.a, c.b, c.paper_delta) for c in pairs if not c.agrees]
    assert len(pairs) == 15
    assert wrong == [("Switch-Base train 2 / eval 2", "Switch-Base train 1.25 / eval 1.25", pytest.approx(-0.001))]


def test_summary_counts_every_pair(comparisons):
    s = summarize(comparisons)
    assert sum(v["pairs"] for v in s.values()) == len(comparisons)
    assert set(s) == {"switch-t1/train_and_eval", "st-moe-t8/eval_cf", "st-moe-t8/train_and_eval",
                      "st-moe-t8/train_cf", "st-moe-t5/train_cf"}
