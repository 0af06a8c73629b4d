"""``moesim pilot SCENARIO.toml``: a staged pilot of the plan's answer at each stage's true load."""
from __future__ import annotations

import argparse
from pathlib import Path

from moesim.cli import Result
from moesim.commands.plan import add_csv_flag, add_scenario_args, load
from moesim.errors import MoesimError, SpecError
from moesim.safeio import Outputs
from moesim.textfmt import table

ORDER = 13


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pilot", help="staged pilot of the plan's answer: stages at their true load, gates, rollback")
    add_scenario_args(p, optional=False)
    p.add_argument("--stages", default="0.01,0.1,0.5,1",
                   help="comma list of traffic shares, increasing, in (0, 1] (default 0.01,0.1,0.5,1)")
    p.add_argument("--checklist", metavar="FILE.md", help="write the runbook checklist (Markdown) here")
    add_csv_flag(p, "one row per stage (expected values, bands, gates, rollback thresholds)")
    p.set_defaults(handler=pilot_cmd)


def parse_stages(text: str) -> tuple[float, ...]:
    try:
        stages = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SpecError("--stages", text, "a comma list of shares, e.g. 0.01,0.1,0.5,1") from None
    if not stages or any(not 0 < s <= 1 for s in stages) or list(stages) != sorted(set(stages)):
        raise SpecError("--stages", text, "increasing shares in (0, 1], e.g. 0.01,0.1,0.5,1")
    return stages


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def pilot_cmd(args) -> Result:
    stages = parse_stages(args.stages)
    with Outputs() as outputs:
        if args.csv:
            outputs.check(args.csv, "--csv")
        return _pilot(args, stages, outputs)


def _pilot(args, stages, outputs: Outputs) -> Result:
    from moesim.planner.pilot import staged_pilot
    from moesim.planner.plan import plan
    from moesim.progress import wanted
    from moesim.provenance import for_plan

    scenario = load(args)
    if scenario.kind != "serving":
        raise SpecError("scenario.kind", scenario.kind, "a pilot needs a serving scenario")
    result = plan(scenario, executor="inline").require_feasible()
    prov = for_plan(result)
    band = prov.answer_band
    error = min(band.median_abs_rel_error, 0.95) if band else 0.0
    pp = staged_pilot(scenario, result, error=error, error_source=band.text() if band else "no serving band",
                      stages=stages, progress=wanted(args))
    rows = []
    for s in pp.stages:
        t, f = s.watch("p99 TPOT"), s.watch("p99 TTFT")
        rows.append((f"{s.share:.0%}", s.replicas, s.devices, f"{s.request_rate_per_replica:.3g}",
                     f"{_ms(t.expected)} ({_ms(t.band_low)}-{_ms(t.band_high)})", _ms(t.rollback_value),
                     f"{_ms(f.expected)} ({_ms(f.band_low)}-{_ms(f.band_high)})", _ms(f.rollback_value),
                     f"{s.min_duration_s / 3600:.1f}", f"{s.usd_per_hour:,.2f}"))
    head = (f"{scenario.name}: staged pilot of the answer {pp.replicas_full} x {pp.devices_per_replica} {pp.hardware} "
            f"({pp.layout}, batch {pp.batch}/device)")
    text = "\n".join([head, "", table(rows, [
        "stage", "replicas", "devices", "req/s/replica", "p99 TPOT ms (band)", "roll back TPOT ms",
        "p99 TTFT ms (band)", "roll back TTFT ms", "min hours", "$/h"]),
        "(expected values from the serving DES at each stage's own load; bands add the measured forecast error)",
        "", "  " + prov.summary(), "", pp.checklist()])
    from moesim.commands.plan import with_provenance

    data = {**pp.to_dict(), "provenance": prov.to_dict()}
    data["plan"] = with_provenance(data["plan"], prov)
    files: tuple[str, ...] = ()
    if args.checklist:
        try:
            Path(args.checklist).write_text(pp.checklist() + "\n")
        except OSError as err:
            raise MoesimError(f"--checklist {args.checklist}: {err.strerror}") from None
        files = (args.checklist,)
    if args.csv:
        from moesim.planner.report import pilot_rows, write_rows

        write_rows(pilot_rows(pp, prov), outputs.path(args.csv, "--csv"))
        files += (args.csv,)
    if args.report:
        from moesim.commands.plan import write_report
        from moesim.report_html import pilot_report, step_breakdowns

        files += (write_report(pilot_report(pp, prov, step_breakdowns(result)), args.report),)
    return Result(data, text, files=files)
