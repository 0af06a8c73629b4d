"""``moesim whatif SCENARIO.toml --set PATH=VALUE ...``: base and changed plans side by side."""
from __future__ import annotations

import argparse

from moesim.cli import Result
from moesim.commands.plan import add_csv_flag, add_scenario_args, load
from moesim.safeio import Outputs
from moesim.textfmt import table

ORDER = 11


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("whatif", help="what if: a scenario plus --set changes, side by side with deltas")
    add_scenario_args(p, optional=False)
    p.add_argument("--change", dest="changes", action="append", default=[], metavar="PATH=VALUE",
                   help="alias of --set for the changed side")
    add_csv_flag(p, "every ranked candidate of both sides (a side column first)")
    p.set_defaults(handler=whatif_cmd)


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# headline metric -> (table label with its unit, scale from the JSON value); JSON keeps the SI key
LABELS = {"tpot_s": ("TPOT ms", 1e3), "ttft_s": ("TTFT ms", 1e3), "usd_per_hour": ("$/h", 1.0),
          "usd_per_million_tokens": ("$/M tok", 1.0), "drop_fraction": ("drop %", 100.0),
          "imbalance": ("imbalance max/mean", 1.0), "mfu": ("MFU %", 100.0), "total_usd": ("total $", 1.0)}


def delta_rows(deltas) -> list[tuple]:
    """The side-by-side rows: each metric's label states its unit (ms, $/h, %), values scaled to it."""
    def scaled(x, k):
        return x * k if isinstance(x, (int, float)) and not isinstance(x, bool) else x

    rows = []
    for d in deltas:
        label, k = LABELS.get(d.metric, (d.metric, 1.0))
        rows.append((label, fmt(scaled(d.base, k)), fmt(scaled(d.changed, k)), fmt(scaled(d.delta, k)),
                     "-" if d.relative is None else f"{d.relative * 100:+.1f}"))
    return rows


def delta_table(deltas, left: str, right: str) -> str:
    return table(delta_rows(deltas), ["metric", left, right, "delta", "delta %"])


def whatif_cmd(args) -> Result:
    from moesim.planner.whatif import parse_sets, what_if, why_infeasible

    with Outputs() as outputs:
        if args.csv:
            outputs.check(args.csv, "--csv")
        if getattr(args, "report", None):
            outputs.check(args.report, "--report", (".html", ".htm"))
        changes = parse_sets(args.sets + args.changes)
        args.sets = []
        base = load(args)
        result = what_if(base, changes)
        shown = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(no changes)"
        text = f"{base.name}: what if {shown}\n\n" + delta_table(result.deltas, "base", "changed")
        for side, plan_result in (("base", result.base), ("changed", result.changed)):
            if not plan_result.feasible:
                text += f"\n\n{side} is infeasible: {why_infeasible(plan_result)}"
        sides = (("base", result.base), ("changed", result.changed))
        quality = side_quality(result)
        text += "\n" * bool(quality) + "".join(f"\nquality, {side}: {q['text']}" for side, q in quality.items())
        data, lines = sides_provenance({**result.to_dict(), "quality": quality}, sides)
        files = sides_csv(args, outputs, sides)
        files += sides_report(args, f"moesim whatif: {base.name}: {shown}", result.deltas, "base", "changed", sides)
        return Result(data, text + "\n\n" + "\n".join(lines) + (f"\n\nwrote {', '.join(files)}" if files else ""),
                      files=files)


def sides_csv(args, outputs: Outputs, sides) -> tuple[str, ...]:
    """``--csv``: every ranked candidate of each side with its provenance columns, staged in
    ``outputs`` (written only when the command succeeds)."""
    if not getattr(args, "csv", None):
        return ()
    from moesim.planner.report import sides_rows, write_rows
    from moesim.provenance import for_plan

    rows = sides_rows([(name, r, for_plan(r)) for name, r in sides])
    write_rows(rows, outputs.path(args.csv, "--csv"))
    return (args.csv,)


def sides_report(args, title: str, deltas, left: str, right: str, sides) -> tuple[str, ...]:
    """``--report``: the delta table and each side's plan section as one HTML file."""
    if not getattr(args, "report", None):
        return ()
    from moesim.commands.plan import write_report
    from moesim.provenance import for_plan
    from moesim.report_html import sides_report as html_sides, step_breakdowns

    html = html_sides(title, delta_rows(deltas), ["metric", left, right, "delta", "delta %"],
                      [(name, r, for_plan(r), step_breakdowns(r)) for name, r in sides])
    return (write_report(html, args.report),)


def sides_provenance(data: dict, sides) -> tuple[dict, list[str]]:
    """``data`` with each side's provenance (``provenance.<side>``), each side's candidates with
    their provenance columns (plan's), and one text line per side."""
    from moesim.commands.plan import with_provenance
    from moesim.provenance import for_plan

    provs = {side: for_plan(r) for side, r in sides}
    out = dict(data)
    for side, p in provs.items():
        if isinstance(out.get(side), dict):
            out[side] = with_provenance(out[side], p)
    return {**out, "provenance": {k: p.to_dict() for k, p in provs.items()}}, \
        [f"{side}: {p.summary()}" for side, p in provs.items()]


def side_quality(result) -> dict:
    """Predicted quality cost of each side's answer (moesim.quality; the changed side is priced
    against the base model's top-k, so a top-k what-if shows what the reduction costs)."""
    from moesim.planner.scenario import scenario_model
    from moesim.quality import default_predictor
    from moesim.quality.tradeoff import answer_quality

    base_model = scenario_model(result.base.scenario)
    trained = base_model.moe.top_k if base_model.moe is not None else None
    predictor, out = default_predictor(), {}
    for side, pr in (("base", result.base), ("changed", result.changed)):
        answer = pr.answer.ranked if pr.answer else (pr.ranked[0] if pr.ranked else None)
        if answer is None:
            continue
        est, text = answer_quality(pr.scenario, answer, predictor, trained_top_k=trained)
        out[side] = {"loss_increase": None if est is None else est.loss_increase, "text": text.split("; ", 1)[-1]}
    return out
