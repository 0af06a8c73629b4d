"""``moesim compare SCENARIO.toml --dense MODEL``: MoE vs dense at the same target and SLO."""
from __future__ import annotations

import argparse

from moesim.cli import Result
from moesim.commands.plan import add_csv_flag, add_scenario_args, load
from moesim.commands.whatif import delta_table, sides_csv, sides_provenance, sides_report
from moesim.safeio import Outputs

ORDER = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="MoE vs dense: devices, cost per token and latency at the same SLO")
    add_scenario_args(p, optional=False)
    p.add_argument("--dense", required=True, help="dense model preset (or TOML) to compare with")
    add_csv_flag(p, "every ranked candidate of both models (a side column first: moe, dense)")
    p.set_defaults(handler=compare_cmd)


def compare_cmd(args) -> Result:
    from moesim.planner.compare import compare

    with Outputs() as outputs:
        if args.csv:
            outputs.check(args.csv, "--csv")
        if getattr(args, "report", None):
            outputs.check(args.report, "--report", (".html", ".htm"))
        scenario = load(args)
        result = compare(scenario, args.dense)
        text = (f"{scenario.name}: {scenario.model} (MoE) vs {args.dense} (dense), same target and SLO\n\n"
                + delta_table(result.deltas, scenario.model, args.dense))
        sides = (("moe", result.moe), ("dense", result.dense))
        quality = quality_assumption(scenario, result.moe)
        data, lines = sides_provenance({**result.to_dict(), **quality}, sides)
        lines = [quality["quality_assumption"], *lines]
        files = sides_csv(args, outputs, sides)
        files += sides_report(args, f"moesim compare: {scenario.model} vs {args.dense}", result.deltas,
                              scenario.model, args.dense, sides)
        return Result(data, text + "\n\n" + "\n".join(lines) + (f"\n\nwrote {', '.join(files)}" if files else ""),
                      files=files)


def quality_assumption(scenario, moe_plan) -> dict:
    """The quality assumption the comparison makes, with the MoE answer's predicted loss increase."""
    from moesim.quality import default_predictor
    from moesim.quality.tradeoff import answer_quality

    answer = moe_plan.answer.ranked if moe_plan.answer else (moe_plan.ranked[0] if moe_plan.ranked else None)
    if answer is None:
        return {"quality_assumption": "quality: not assessed (the MoE scenario has no feasible answer)",
                "moe_quality": None}
    est, text = answer_quality(scenario, answer, default_predictor())
    return {"quality_assumption": text, "moe_quality": est.to_dict() if est else None}
