"""Per-profile all-to-all calibration report: in-sample and leave-one-group-out errors.

``python -m validation.calibrate_comm CASES.json OUT.json`` fits the identifiable comm
efficiencies of every profile in the file's all_to_all cases with ``moesim.calibrate`` and
writes errors per group (intranode, internode, low_latency). Errors on the fit set are
*in-sample*; ``leave_one_group_out`` refits without each group and predicts it, which is the
out-of-sample figure.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from statistics import median

from moesim.calibrate import calibrate
from moesim.cases import load_cases
from moesim.catalog import load_profile
from moesim.comm.cases import a2a_fit_params, case_group, predict_all_to_all_case
from moesim.errors import MoesimError
from moesim.specs.hardware import HardwareProfile


def errors_by_group(cases, hw: HardwareProfile) -> dict:
    """Per case rel error and per group median / max |rel err| on ``hw``."""
    rows = []
    for c in cases:
        pred = predict_all_to_all_case({**c.inputs, "metric": c.metric}, hw)
        rows.append({"id": c.id, "group": case_group(dict(c.inputs), hw), "metric": c.metric,
                     "measured": c.measured, "predicted": pred, "rel_error": (pred - c.measured) / c.measured})
    groups = {}
    for g in sorted({r["group"] for r in rows}):
        errs = [abs(r["rel_error"]) for r in rows if r["group"] == g]
        groups[g] = {"n": len(errs), "median_abs_rel_error": median(errs), "max_abs_rel_error": max(errs)}
    return {"cases": rows, "groups": groups}


@dataclass(frozen=True)
class CommFit:
    """Fitted profile and parameter values (``params``: path -> value)."""

    profile: HardwareProfile
    params: dict


def fit(cases, hw: HardwareProfile, source: str = "") -> CommFit:
    """Fit the identifiable comm parameters of ``hw`` on ``cases`` (``moesim.calibrate``)."""
    result = calibrate(list(cases), hw, params=a2a_fit_params(cases, hw), source=source)
    return CommFit(result.profile, result.params)


def leave_one_group_out(cases, hw: HardwareProfile) -> dict:
    """For each group: fit on the other groups of ``hw``, report errors on the held-out group."""
    out = {}
    groups = {case_group(dict(c.inputs), hw) for c in cases}
    for g in sorted(groups):
        train = [c for c in cases if case_group(dict(c.inputs), hw) != g]
        test = [c for c in cases if case_group(dict(c.inputs), hw) == g]
        if not train:
            continue
        result = fit(train, hw)
        ev = errors_by_group(test, result.profile)
        out[g] = {"fitted_on": sorted({case_group(dict(c.inputs), hw) for c in train}),
                  "params": result.params, **ev["groups"][g]}
    return out


def report(path: str) -> dict:
    """Fit every profile of the all_to_all cases in ``path``; in-sample and held-out errors."""
    cases = load_cases(path).of_kind("all_to_all")
    out = {"source": path, "note": "in-sample: fitted and judged on the same published cases; "
           "leave_one_group_out is the out-of-sample figure", "profiles": {}}
    for name in sorted({c.hardware for c in cases}):
        hw = load_profile(name)
        mine = [c for c in cases if c.hardware == name]
        before = errors_by_group(mine, hw)
        result = fit(mine, hw, source=path)
        after = errors_by_group(mine, result.profile)
        out["profiles"][name] = {
            "fitted_params": result.params,
            "comm_efficiency": result.profile.efficiency.comm.model_dump(),
            "prior_groups": before["groups"],
            "in_sample_groups": after["groups"],
            "in_sample_cases": after["cases"],
            "leave_one_group_out": leave_one_group_out(mine, hw),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m validation.calibrate_comm CASES.json OUT.json")
    try:
        data = report(argv[0])
    except MoesimError as err:
        raise SystemExit(f"error: {err}") from None
    with open(argv[1], "w") as fh:
        json.dump(data, fh, indent=1)
    for name, p in data["profiles"].items():
        print(name, {k: round(v, 4) for k, v in p["fitted_params"].items()})
        for g, e in p["in_sample_groups"].items():
            print(f"  in-sample {g}: n={e['n']} median {e['median_abs_rel_error']:.3f} max {e['max_abs_rel_error']:.3f}")
        for g, e in p["leave_one_group_out"].items():
            print(f"  held-out  {g}: n={e['n']} median {e['median_abs_rel_error']:.3f} max {e['max_abs_rel_error']:.3f}")


if __name__ == "__main__":
    main()
