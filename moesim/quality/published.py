"""Published capacity-factor ablations as an evaluation of the quality model (never fitted on).

The document (validation/data/published-quality.json, read by the caller) lists, per paper table,
rows of (model, top_k, train_cf, eval_cf, value[, dropped_fraction]). Every pair of rows of the
same model and top-k is a comparison; the paper orders it by ``value`` and the quality model
orders it by its predicted loss increase at the row's drop fraction (the table's own
``dropped_fraction`` when it gives one, else the routing engine's expected drop fraction at
``eval_cf``: :func:`moesim.routing.api.route`, Monte Carlo, ``ROUTED_TOKENS`` tokens per capacity
group, popularity ``skew``: the papers do not give their routers' skew, so this is a stated
assumption. The default ``zipf:0.5`` (a mildly skewed router: ~4% of top-2 copies over capacity
at cf 2.0 with 32 experts) moves magnitudes, not the order of two capacity factors; with
``uniform`` almost nothing drops at cf >= 1.25 and the model calls those pairs ties).

Scope of a pair (``kind``): ``eval_cf`` (same train CF, different eval CF: what the model
describes), ``train_and_eval`` (train CF = eval CF on both rows: the model sees only the
inference-time drops, not what training at that capacity did) and ``train_cf`` (same eval CF,
different train CF: outside the model, which then predicts a tie; listed, not scored).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from moesim.quality.predict import QualityPredictor

ROUTED_TOKENS = 4096
DEFAULT_SKEW = "zipf:0.5"
TIE_NATS = 1e-5


@dataclass(frozen=True)
class Comparison:
    """One pair of published settings, ordered by the paper and by the model."""

    source: str
    model: str
    a: str
    b: str
    kind: str  # eval_cf | train_and_eval | train_cf
    paper_better: str  # "a", "b" or "tie"
    model_better: str
    paper_delta: float  # value_a - value_b in the paper's metric (sign: higher_is_better)
    model_delta_nats: float  # predicted loss increase of b - of a (positive: a better)

    @property
    def agrees(self) -> bool:
        return self.paper_better == self.model_better

    def to_dict(self) -> dict:
        return {**self.__dict__, "agrees": self.agrees}


def _label(row: dict) -> str:
    return f"{row['model']} train {row['train_cf']:g} / eval {row['eval_cf']:g}"


def _kind(a: dict, b: dict) -> str:
    if a["train_cf"] == b["train_cf"]:
        return "eval_cf"
    if a["train_cf"] == a["eval_cf"] and b["train_cf"] == b["eval_cf"]:
        return "train_and_eval"
    return "train_cf"


def routed_drop_fraction(num_experts: int, top_k: int, capacity_factor: float, skew: str = DEFAULT_SKEW) -> float:
    """Expected dropped share of copies, ``ROUTED_TOKENS`` per group (Monte Carlo, 32 steps, seed 0)."""
    from moesim.routing.api import route

    return float(route(num_experts, top_k, ROUTED_TOKENS, capacity_factor=capacity_factor, skew=skew,
                       engine="montecarlo", samples=32, seed=0).drop_fraction)


def compare_published(doc: dict, predictor: QualityPredictor, skew: str = DEFAULT_SKEW) -> list[Comparison]:
    """Every same-model pair of every source of ``doc``, ordered by paper and model."""
    out = []
    for src in doc["sources"]:
        sign = 1.0 if src["higher_is_better"] else -1.0

        def predicted(row: dict) -> float:
            d = row.get("dropped_fraction")
            if d is None:
                d = routed_drop_fraction(src["num_experts"], row["top_k"], row["eval_cf"], skew)
            return predictor.predict(drop_fraction=d, top_k=row["top_k"], effective_top_k=row["top_k"]).loss_increase

        for a, b in itertools.combinations(src["rows"], 2):
            if (a["model"], a["top_k"]) != (b["model"], b["top_k"]):
                continue
            paper = sign * (a["value"] - b["value"])
            model = predicted(b) - predicted(a)
            out.append(Comparison(
                source=src["id"], model=a["model"], a=_label(a), b=_label(b), kind=_kind(a, b),
                paper_better="a" if paper > 0 else "b" if paper < 0 else "tie",
                model_better="a" if model > TIE_NATS else "b" if model < -TIE_NATS else "tie",
                paper_delta=paper, model_delta_nats=model,
            ))
    return out


def summarize(comparisons: list[Comparison]) -> dict:
    """Agreement counts per source and kind (``train_cf`` pairs are outside the model: listed only)."""
    summary: dict = {}
    for c in comparisons:
        s = summary.setdefault(f"{c.source}/{c.kind}", {"pairs": 0, "agree": 0, "model_tie": 0})
        s["pairs"] += 1
        s["agree"] += int(c.agrees)
        s["model_tie"] += int(c.model_better == "tie")
    return summary
