"""``moesim plan [SCENARIO.toml]``: the capacity planner, the main job.

With no file it plans the built-in default scenario (moesim/planner/default_scenario.toml).
"""
from __future__ import annotations

import argparse
import logging

from moesim.cli import Result, add_json_flag, add_limit_flag, check_work
from moesim.errors import SpecError
from moesim.safeio import Outputs

ORDER = 10  # the main job comes first in --help
log = logging.getLogger(__name__)


def add_scenario_args(p: argparse.ArgumentParser, optional: bool = True) -> None:
    """Arguments every planner command shares: the scenario, --set changes, executor, speed knobs."""
    if optional:
        p.add_argument("scenario", nargs="?", help="scenario TOML (default: the built-in scenario)")
    else:
        p.add_argument("scenario", help="scenario TOML ('default' for the built-in scenario)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                   help="change a scenario field first, e.g. --set slo.tpot_s=0.04 (repeatable)")
    p.add_argument("--verify-top", type=int, default=None, metavar="N",
                   help="verify the N cheapest candidates with the serving DES (0 = analytic only)")
    p.add_argument("--small", action="store_true",
                   help="a small search (fewer device counts and batches) for quick answers")
    p.add_argument("--report", metavar="FILE.html",
                   help="write a self-contained HTML report (answer, provenance, cost-latency chart, "
                        "step breakdowns, rejections)")
    add_limit_flag(p)
    add_json_flag(p)


def load(args):
    """The scenario named by ``args`` with --set, --verify-top and --small applied."""
    from moesim.planner.scenario import load_scenario
    from moesim.planner.whatif import apply_changes, parse_sets

    path = None if args.scenario in (None, "default") else args.scenario
    scenario = load_scenario(path)
    # --small first: what the user sets explicitly (--set, --verify-top) wins over its defaults
    changes = small_search(scenario) if args.small else {}
    changes.update(parse_sets(args.sets))
    if args.verify_top is not None:
        if args.verify_top < 0:
            raise SpecError("--verify-top", args.verify_top, "must be >= 0")
        if scenario.kind == "training":
            if args.verify_top > 0:
                raise SpecError("--verify-top", args.verify_top, "training plans are analytic only (the serving "
                                "DES verifies serving plans); omit it or give 0")
        else:
            changes["verify.top_n"] = args.verify_top
    scenario = apply_changes(scenario, changes) if changes else scenario
    _check_verify_size(args, scenario)
    return scenario


def _check_verify_size(args, scenario) -> None:
    """Refuse a serving-DES verification whose probes would simulate an absurd number of requests
    (a typo such as verify.duration_s = 1e12; ``--allow-long`` overrides): the arrivals of the
    largest probe, the whole target on one replica over its span (``verify.probe_duration_s``)."""
    if scenario.kind != "serving" or scenario.verify.top_n == 0:
        return
    from moesim.commands.serve import MAX_REQUESTS
    from moesim.planner.verify import probe_duration_s

    rate = scenario.target_output_tokens_per_s / scenario.workload.output_len
    check_work(args, "serving DES verification (verify.duration_s)", rate * probe_duration_s(scenario, rate),
               MAX_REQUESTS, "simulated requests per probe")


def small_search(scenario) -> dict:
    """A cut-down search space: few device counts, batches and layouts (examples, smoke tests)."""
    if scenario.kind == "training":
        return {"search.devices": [d for d in scenario.search.devices if d in (256, 512, 1024, 2048)] or [512],
                "search.micro_batch": [1], "search.tp": [1, 2, 4], "search.pp": [1, 4, 8]}
    return {"search.batch_per_device": [8, 32, 128], "search.tp": [1, 8],
            "search.devices_per_replica": [n for n in scenario.search.devices_per_replica if n <= 32] or [8],
            "verify.top_n": min(scenario.verify.top_n, 1), "verify.duration_s": min(scenario.verify.duration_s, 30.0),
            "disaggregated.decode_devices_per_replica": [8, 16, 32], "disaggregated.prefill_devices_per_replica": [8],
            "disaggregated.prefill_token_budget_per_rank": [8192], "disaggregated.redundant_slots_per_rank": [0]}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="capacity planner: which hardware, how many, which layout, what cost")
    add_scenario_args(p)
    p.add_argument("--top", type=int, default=10, help="rows of the ranked table")
    add_csv_flag(p)
    p.add_argument("--plot", metavar="FILE.png", help="cost vs latency plot with the Pareto frontier")
    p.add_argument("--executor", choices=["local", "inline", "dask"], default="local")
    p.add_argument("--address", help="Dask scheduler address (tcp://HOST:PORT) for --executor dask")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    p.add_argument("--results", metavar="FILE.jsonl",
                   help="stream results here; rerunning with the same file resumes the sweep")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr (default: when a TTY)")
    p.add_argument("--screen", action="store_true",
                   help="serving: prune the space with model lower bounds first and evaluate exactly only "
                        "layouts that can reach the top (same top 10 and answer; runs inline)")
    p.add_argument("--emit", choices=["sglang", "vllm"], default=None,
                   help="print the answer's launch settings for this engine (moesim/planner/launch.py)")
    p.set_defaults(handler=plan_cmd)


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def plan_cmd(args) -> Result:
    from moesim.planner.plan import plan
    from moesim.planner.report import plot_pareto, render, write_csv
    from moesim.provenance import for_plan

    if args.top <= 0:
        raise SpecError("--top", args.top, "must be positive")
    if args.workers is not None and args.workers <= 0:
        raise SpecError("--workers", args.workers, "must be positive")
    if args.screen and args.results:
        raise SpecError("--results", args.results, "does not apply with --screen (the screened search runs "
                        "inline and is not resumed); drop one of them")
    if args.executor == "dask" and not args.address:
        raise SpecError("--executor", "dask", "needs --address tcp://HOST:PORT")
    with Outputs() as outputs:
        if args.csv:
            outputs.check(args.csv, "--csv")
        if args.plot:
            outputs.check(args.plot, "--plot", PLOT_SUFFIXES)
        if args.report:
            outputs.check(args.report, "--report", (".html", ".htm"))
        if args.results:
            outputs.check(args.results, "--results")
        scenario = load(args)
        from moesim.progress import wanted

        progress = args.progress or wanted(args)
        log.info("planning %s: %s on %s", scenario.name, scenario.model, ", ".join(scenario.hardware))
        result = plan(scenario, executor=args.executor, address=args.address, workers=args.workers,
                      results_path=args.results, progress=progress, screen=args.screen)
        log.info("searched %d configurations in %.1f s (%d ranked)", result.space_size,
                 result.timings_s.get("analytic_s", 0.0) + result.timings_s.get("verify_s", 0.0), len(result.ranked))
        result.require_feasible()
        prov = for_plan(result)
        files = []
        if args.csv:
            write_csv(result, outputs.path(args.csv, "--csv"), provenance=prov)
            files.append(args.csv)
        if args.plot:
            plot_pareto(result, outputs.path(args.plot, "--plot", PLOT_SUFFIXES))
            files.append(args.plot)
        if args.report:
            from moesim.report_html import plan_report, step_breakdowns

            html = plan_report(result, prov, step_breakdowns(result, args.top), args.top)
            outputs.path(args.report, "--report", (".html", ".htm")).write_text(html)
            files.append(args.report)
        text = with_overlap_line(render(result, top=args.top, provenance=prov), result)  # before the outputs commit
        data = with_overlaps(with_provenance(result.to_dict(), prov), result)
        if args.emit:
            from moesim.planner.launch import launch_settings

            launch = launch_settings(result, args.emit)
            text += "\n\n" + launch.text()
            data["launch"] = launch.to_dict()
        if files:
            text += "\n\nwrote " + ", ".join(files)
        return Result(data, text, files=tuple(files))


def with_provenance(data: dict, prov) -> dict:
    """A plan's JSON with its provenance and each candidate's provenance columns (the CSV's:
    moesim.planner.report.provenance_columns)."""
    from moesim.catalog import read_error_bands
    from moesim.planner.report import provenance_columns
    from moesim.provenance import Bands

    bands = Bands(read_error_bands())
    cols = {hw: provenance_columns(prov, hw, bands) for hw in {row["hardware"] for row in data.get("candidates", [])}}
    cands = [{**row, **cols[row["hardware"]]} for row in data.get("candidates", [])]
    return {**data, "candidates": cands, "provenance": prov.to_dict()}


def _overlaps(result) -> dict:
    """``{candidate key: {"decode": mode, "prefill": mode}}`` of the ranked serving candidates
    (the modes the evaluation chose: moesim/planner/serving_policy.py ``overlaps_of``)."""
    from moesim.planner.serving_policy import overlaps_of

    if result.scenario.kind != "serving":
        return {}
    return {r.candidate.key(): overlaps_of(r.evaluation.detail) for r in result.ranked}


def with_overlaps(data: dict, result) -> dict:
    """A plan's JSON with each serving candidate's ``decode_overlap`` / ``prefill_overlap``."""
    modes = _overlaps(result)
    if not modes:
        return data
    cands = [{**row, "decode_overlap": modes.get(row["rank_key"], {}).get("decode"),
              "prefill_overlap": modes.get(row["rank_key"], {}).get("prefill")} for row in data.get("candidates", [])]
    return {**data, "candidates": cands}


def with_overlap_line(text: str, result) -> str:
    """The text report with the co-located answer's overlap modes (and, under TensorRT-LLM's
    scheduler, its engine limits) under its answer line."""
    a = result.answer
    if a is None or result.scenario.kind != "serving":
        return text
    modes = _overlaps(result).get(a.ranked.candidate.key())
    if not modes:
        return text
    how = ("the faster of none / two_microbatch per phase" if result.scenario.search.overlap == "auto"
           else f"search.overlap = {result.scenario.search.overlap}")
    extra = [f"  overlap: decode {modes['decode']}, prefill {modes['prefill']} ({how})"]
    eng = _engine_line(result)
    if eng:
        extra.append(f"  {eng}")
    lines = text.split("\n")
    for i, ln in enumerate(lines):
        if ln.startswith(("co-located answer:", "answer:")):
            return "\n".join(lines[:i + 1] + extra + lines[i + 1:])
    return text


def _engine_line(result) -> str | None:
    """The co-located answer's TensorRT-LLM engine limits (moesim/planner/serving_policy.py
    ``engine_summary``), None under any other scheduler."""
    from moesim.planner.costs import PlanCache
    from moesim.planner.scenario import scenario_model
    from moesim.planner.serving_policy import engine_summary

    sc = result.scenario
    return engine_summary(result.answer.ranked.candidate, sc, scenario_model(sc), PlanCache())


def add_csv_flag(p: argparse.ArgumentParser, what: str = "every ranked candidate") -> None:
    p.add_argument("--csv", metavar="FILE", help=f"write {what} to FILE (with provenance columns)")


def write_report(text: str, path: str) -> str:
    """Write an HTML report atomically (the command's I/O edge); a bad path is one error line."""
    with Outputs() as outputs:
        outputs.path(path, "--report", (".html", ".htm")).write_text(text)
    return path
