"""Print the quality model's fit, held-out errors, measured ordering checks and the published
comparison as markdown (the tables of docs/quality.md).

Run: ``python -m validation.quality_report`` (reads the shipped table and
validation/data/published-quality.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from moesim.quality.holdout import GROUPINGS, holdout
from moesim.quality.predict import build_predictor
from moesim.quality.published import compare_published, summarize
from moesim.quality.table import load_table

PUBLISHED = Path(__file__).with_name("data") / "published-quality.json"
MEASURED = Path(__file__).with_name("data") / "quality-cpu-tinymoe.json"
CFS = ("0.5", "0.75", "1", "1.25", "1.5", "2")


def paired(st: dict, a: str, b: str) -> tuple[float, float]:
    """Mean and SE over held-out batches of loss(a) - loss(b) (same batches)."""
    rows = {r["key"]: r for r in st["results"]}
    d_B = np.subtract(rows[a]["loss_per_batch"], rows[b]["loss_per_batch"])
    return float(d_B.mean()), float(d_B.std(ddof=1) / np.sqrt(d_B.size))


def print_measured(doc: dict) -> None:
    print("## Measured (loss increase over dropless, nats/byte; paired SE in brackets)\n")
    print("| setting | dropless loss | imbalance | drops cf 1 / 1.25 / 2 | drop cf 1 | reroute cf 1 | shared cf 1 "
          "| drop cf 1.25 | k'=3 | k'=2 | k'=1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for st in doc["settings"]:
        rows = {r["key"]: r for r in st["results"]}
        k = st["config"]["top_k"]
        ref = rows[f"k{k}_dropless_drop"]

        def cell(key):
            r = rows[key]
            return f"{r['loss_increase']:.4f} ({r['loss_increase_se']:.4f})"
        drops = " / ".join(f"{100 * rows[f'k{k}_cf{cf}_drop']['drop_fraction']:.1f}%" for cf in ("1", "1.25", "2"))
        print(f"| {st['name']} | {ref['loss']:.4f} | {ref['imbalance']:.2f} | {drops} | {cell(f'k{k}_cf1_drop')} | "
              f"{cell(f'k{k}_cf1_reroute')} | {cell(f'k{k}_cf1_shared')} | {cell(f'k{k}_cf1.25_drop')} | "
              + " | ".join(cell(f"k{kk}_dropless_drop") for kk in range(k - 1, 0, -1)) + " |")
    print("\n## Paired policy differences: loss(drop) - loss(policy), nats, per capacity factor (SE)\n")
    print("| setting | policy | " + " | ".join(f"cf {c}" for c in CFS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in CFS) + " |")
    for st in doc["settings"]:
        k = st["config"]["top_k"]
        for pol in ("reroute", "shared"):
            cells = [paired(st, f"k{k}_cf{c}_drop", f"k{k}_cf{c}_{pol}") for c in CFS]
            print(f"| {st['name']} | {pol} | " + " | ".join(f"{m:+.4f} ({s:.4f})" for m, s in cells) + " |")


def ordering_checks(table) -> list[dict]:
    """Per model and capacity factor: reroute / shared backup against drop (loss increase, nats)."""
    out = []
    by = {(p.setting, p.top_k, p.capacity_factor, p.overflow): p for p in table.points}
    for (setting, k, cf, pol), p in by.items():
        if pol != "drop" or cf is None or k != p.trained_top_k:
            continue
        row = {"setting": setting, "capacity_factor": cf, "drop": p.loss_increase, "drop_se": p.loss_increase_se}
        for other in ("reroute", "shared"):
            q = by.get((setting, k, cf, other))
            if q is not None:
                row[other] = q.loss_increase
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.quality_report", description=__doc__.split("\n")[0])
    p.add_argument("--table", default=None, help="quality table (default: the shipped one)")
    args = p.parse_args(argv)
    if MEASURED.exists() and args.table is None:
        print_measured(json.loads(MEASURED.read_text()))
        print()
    table = load_table(args.table)
    pred = build_predictor(table)
    m = pred.model
    print("## Fit\n")
    print("| parameter | value |\n| --- | --- |")
    for name, v in m.params.items():
        print(f"| {name} | {v:.4g} |")
    print(f"\nin-sample: {m.points} points, rms {m.rms_nats:.4f} nats, max {m.max_abs_nats:.4f} nats\n")
    print("## Held out\n")
    print("| left out | folds | points | rms nats | max nats | median rel | p90 rel | worst |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for g in GROUPINGS:
        h = holdout(table, g)
        print(f"| {g} | {h.folds} | {h.points} | {h.rms_nats:.4f} | {h.max_abs_nats:.4f} | "
              f"{h.median_rel_error:.0%} | {h.p90_rel_error:.0%} | {h.worst} |")
    print("\n## Reroute / shared backup against drop (loss increase, nats; drop +- SE)\n")
    print("| setting | cf | drop | reroute | shared |\n| --- | --- | --- | --- | --- |")
    for r in ordering_checks(table):
        print(f"| {r['setting']} | {r['capacity_factor']:g} | {r['drop']:.4f} +- {r['drop_se']:.4f} | "
              f"{r.get('reroute', float('nan')):.4f} | {r.get('shared', float('nan')):.4f} |")
    doc = json.loads(PUBLISHED.read_text())
    comps = compare_published(doc, pred)
    print("\n## Published orderings\n")
    print("| source / kind | pairs | model agrees | model says tie |\n| --- | --- | --- | --- |")
    for key, s in summarize(comps).items():
        print(f"| {key} | {s['pairs']} | {s['agree']} | {s['model_tie']} |")
    print("\n| source | a | b | paper better | model better | paper delta | model delta nats |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in comps:
        if c.kind != "train_cf":
            print(f"| {c.source} | {c.a} | {c.b} | {c.paper_better} | {c.model_better} | "
                  f"{c.paper_delta:+.3f} | {c.model_delta_nats:+.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
