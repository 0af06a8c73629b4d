"""``moesim pilot SCENARIO.toml --share 0.1``: a staged pilot with metrics to watch and rollback thresholds."""
from __future__ import annotations

import argparse

from moesim.cli import Result
from moesim.commands.plan import add_scenario_args, load
from moesim.textfmt import table

ORDER = 13


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pilot", help="pilot plan: smallest deployment for a share of traffic, watches, rollback")
    add_scenario_args(p, optional=False)
    p.add_argument("--share", type=float, default=0.1, help="share of the scenario's traffic (0-1]")
    p.set_defaults(handler=pilot_cmd)


def pilot_cmd(args) -> Result:
    from moesim.planner.pilot import pilot_plan

    scenario = load(args)
    pp = pilot_plan(scenario, args.share)
    head = (f"{scenario.name}: pilot at {pp.share:.0%} of the traffic: {pp.devices} x {pp.hardware} "
            f"({pp.layout}, batch {pp.batch}/device), ${pp.usd_per_hour:,.2f}/h")
    rows = [(w.metric, f"{w.expected:.4g}", f"{w.band_low:.4g} - {w.band_high:.4g}", w.rollback_if, w.source)
            for w in pp.watches]
    text = head + "\n\n" + table(rows, ["watch", "expected", "band", "roll back if", "band from"])
    return Result(pp.to_dict(), text)
