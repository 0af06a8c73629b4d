"""``moesim validate`` and ``moesim calibrate``: judge predictions against measured case files."""
from __future__ import annotations

import argparse

from moesim.cases import load_cases
from moesim.catalog import load_profile, write_toml
from moesim.cli import Result, add_json_flag
from moesim.errors import SpecError
from moesim.safeio import check_output
from moesim.textfmt import table

ORDER = 80


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="predict every case of moesim-cases/1 files and report errors")
    p.add_argument("cases", nargs="+", help="case files (JSON, moesim-cases/1); several are judged together")
    p.add_argument("--logo", action="store_true",
                   help="also report per kind: in-sample, leave-one-source-out, leave-one-hardware-out and "
                        "out-of-sample errors (refits without each group; give the calibration file too)")
    from moesim.accuracy import GROUP_KEYS

    p.add_argument("--by", action="append", default=[], choices=GROUP_KEYS, metavar="KEY",
                   help=f"also report the errors per group of cases, in-sample and out-of-sample apart: "
                        f"{', '.join(GROUP_KEYS)}; repeatable")
    p.add_argument("--profile", action="append", default=[], metavar="TOML",
                   help="use this profile file (e.g. a calibrated one) for its hardware; repeatable")
    p.add_argument("--write-bands", metavar="FILE.json",
                   help="store this file's measured errors per kind as error bands in FILE (merged; the "
                        "shipped file is moesim/data/error_bands.json): the bands plan answers carry")
    p.add_argument("--sample", choices=["out-of-sample", "in-sample"], default="out-of-sample",
                   help="with --write-bands: whether the profiles were fitted on this file (in-sample)")
    add_json_flag(p)
    p.set_defaults(handler=validate_cmd)

    p = sub.add_parser("calibrate", help="fit a profile's efficiency parameters to a case file")
    p.add_argument("cases", help="case file (JSON, moesim-cases/1)")
    p.add_argument("--hw", required=True, help="profile name or TOML path to fit")
    p.add_argument("-o", "--output", help="write the calibrated profile TOML here")
    p.add_argument("--params", help="comma list of efficiency parameters (default: per case kind)")
    add_json_flag(p)
    p.set_defaults(handler=calibrate_cmd)


def _fmt(x: float | None) -> str:
    """A relative error in percent, signed, for a column whose header says ``%``."""
    return "-" if x is None else f"{x * 100:+.1f}"


def _cls(s) -> str:
    unpriced = f", {s.unpriced} not priced" if s is not None and s.unpriced else ""
    if s is None or not s.n:
        return f"- (0{unpriced})" if unpriced else "-"
    return f"{s.median_abs_rel_error * 100:.1f} / {s.max_abs_rel_error * 100:.1f} ({s.n}{unpriced})"


def validate_cmd(args) -> Result:
    from moesim.cases import CaseFile
    from moesim.validate import validate

    files = [load_cases(path) for path in args.cases]
    cases = tuple(c for f in files for c in f.cases)
    seen: set[str] = set()
    dup = sorted({c.id for c in cases if c.id in seen or seen.add(c.id)})
    if dup:
        raise SpecError("cases", ", ".join(dup[:3]), "case ids must be unique across the files given")
    casefile = CaseFile(", ".join(args.cases), "", cases, tuple(p for f in files for p in f.problems))
    profiles = {}
    for path in args.profile:
        prof = load_profile(path)
        profiles[prof.name] = prof
    report = validate(casefile, profiles)
    rows = [(c.id, c.kind, c.metric, f"{c.measured:.4g}",
             "-" if c.predicted is None else f"{c.predicted:.4g}",
             _fmt(c.rel_error) if c.status == "ok" else f"{c.status}: {c.reason}",
             ", ".join(k for k, _ in c.ignored_inputs) or "-")
            for c in report.cases]
    text = table(rows, ["id", "kind", "metric", "measured", "predicted", "error %", "ignored inputs"])
    srows = [(k, s.n, _fmt(s.median_abs_rel_error).lstrip("+"), _fmt(s.max_abs_rel_error).lstrip("+"),
              _fmt(s.signed_median_rel_error), s.unsupported, s.errors) for k, s in report.summary.items()]
    text += "\n\n" + table(srows, ["kind", "n", "median |err| %", "max |err| %", "signed median %", "unsupported",
                                    "errors"])
    data = report.to_dict()
    if args.by:
        text += _by_groups(args, files, cases, report, data)
    if args.logo:
        from moesim.accuracy import CLASSES, accuracy_table

        acc = accuracy_table(cases)
        data["accuracy"] = acc.to_dict()
        arows = [(k, *(_cls(v.get(cls)) for cls in CLASSES)) for k, v in acc.summary.items()]
        text += ("\n\nmedian / max |err| % (n cases) by sample class\n"
                 + table(arows, ["kind", "in-sample %", "leave-one-source-out %", "leave-one-hardware-out %",
                                 "out-of-sample %"]))
    errors = tuple(f"case {p.id}: {p.problem}" for p in casefile.problems)
    # an error's reason already names its case (moesim/validate.py run_predictor's PredictorError)
    errors += tuple(c.reason for c in report.cases if c.status == "error")
    exit_code = 2 if casefile.problems else (1 if any(c.status == "error" for c in report.cases) else 0)
    out_files = ()
    if args.write_bands:
        out_files = (_write_bands(args, casefile, report, profiles),)
        text += f"\n\nwrote error bands ({args.sample}) to {out_files[0]}"
    return Result(data, text, files=out_files, errors=errors, exit_code=exit_code)


def _by_groups(args, files, cases, report, data) -> str:
    """The ``--by`` tables (text) and their rows under ``data["by"]``."""
    from moesim.accuracy import WITHIN, by_group

    file_of = {c.id: path for path, f in zip(args.cases, files) for c in f.cases}
    text, data["by"] = "", {}
    for by in dict.fromkeys(args.by):  # each key once, in the order given
        groups = by_group(cases, report.cases, by, file_of)
        data["by"][by] = [g.to_dict() for g in groups]
        rows = [(g.kind, g.sample, g.group, g.n, _fmt(g.median_abs_rel_error).lstrip("+"),
                 _fmt(g.signed_median_rel_error), _fmt(g.max_abs_rel_error).lstrip("+"), g.within_15)
                for g in groups]
        text += (f"\n\nerrors by {by} (predicted cases; in-sample = calibration rows)\n"
                 + table(rows, ["kind", "sample", by, "n", "median |err| %", "signed median %", "max |err| %",
                                f"within {WITHIN:.0%}"]))
    return text


def _write_bands(args, casefile, report, profiles) -> str:
    """Validate again with every profile's efficiencies reset to the generic prior (the host
    issue time kept: it is a software-stack property every profile carries) and store both."""
    import datetime as _dt

    from moesim.catalog import read_error_bands, write_error_bands
    from moesim.provenance import bands_from_reports, merge_bands, prior_profile
    from moesim.validate import validate

    priors = {}
    for hw in sorted({c.hardware for c in casefile.cases}):
        priors[hw] = prior_profile(profiles.get(hw) or load_profile(hw))
    prior_report = validate(casefile, priors)
    new = bands_from_reports(report, prior_report, args.sample, _dt.date.today().isoformat())
    return write_error_bands(merge_bands(read_error_bands(args.write_bands), new), args.write_bands)


def calibrate_cmd(args) -> Result:
    from moesim.calibrate import calibrate  # scipy.optimize: imported only when fitting

    if args.output:
        check_output(args.output, "--output", (".toml",))  # before the fit, not after
    casefile = load_cases(args.cases)
    profile = load_profile(args.hw)
    params = None
    if args.params:
        params = tuple(p.strip() for p in args.params.split(",") if p.strip())
        if not params:
            raise SpecError("--params", args.params, "a comma list of efficiency parameter names")
    from moesim.progress import wanted

    result = calibrate(casefile.cases, profile, params, source=args.cases, progress=wanted(args))
    if args.output:
        write_toml(result.profile.to_dict(), args.output)
    data = result.to_dict()
    lines = [f"calibrated {profile.name} on {result.n_cases} cases ({', '.join(result.kinds)})"]
    lines += [f"  {k} = {v:.4g}" for k, v in result.params.items()]
    lines.append(f"median |rel err| {result.median_abs_rel_error_before:.1%} -> {result.median_abs_rel_error_after:.1%}; "
                 f"max {result.max_abs_rel_error_before:.1%} -> {result.max_abs_rel_error_after:.1%} (in-sample)")
    if args.output:
        lines.append(f"wrote {args.output}; judge it on another case file with `moesim validate FILE --profile {args.output}`")
    errors = tuple(f"{args.cases}: case {p.id}: {p.problem}" for p in casefile.problems)
    return Result(data, "\n".join(lines), errors=errors, exit_code=2 if errors else 0)
