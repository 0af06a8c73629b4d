"""Calibrate the ``cpu-host`` profile on this machine's calibration case file, judge it on the other.

``python -m validation.calibrate_cpu_host`` fits the cpu-host efficiency parameters on
validation/data/cpu-host-calib.json (written by ``python -m validation.bench --device cpu``),
rewrites the ``[efficiency]`` tables of hwprofiles/cpu-host.toml, and prints the errors on the
disjoint validation/data/cpu-host-eval.json (out of sample) per kind.
"""
from __future__ import annotations

import sys
from pathlib import Path

from moesim.calibrate import calibrate
from moesim.cases import load_cases
from moesim.catalog import _profiles_dir, load_profile, replace_efficiency
from moesim.specs.hardware import Efficiency
from moesim.validate import validate

DATA = Path(__file__).parent / "data"


def run(calib: Path, evaluation: Path, write: bool = True):
    """(CalibrationResult, ValidationReport on the evaluation file)."""
    prior = load_profile("cpu-host").with_efficiency(Efficiency())
    result = calibrate(load_cases(calib).cases, prior, source=f"validation/data/{calib.name}")
    if write:
        replace_efficiency(_profiles_dir() / "cpu-host.toml", result.profile.efficiency)
    report = validate(load_cases(evaluation), {"cpu-host": result.profile})
    return result, report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    calib = Path(argv[0]) if argv else DATA / "cpu-host-calib.json"
    evaluation = Path(argv[1]) if len(argv) > 1 else DATA / "cpu-host-eval.json"
    result, report = run(calib, evaluation)
    print(f"cpu-host fitted on {result.n_cases} cases ({', '.join(result.kinds)}): in-sample median "
          f"{result.median_abs_rel_error_after:.1%}, max {result.max_abs_rel_error_after:.1%}")
    for k, v in result.params.items():
        print(f"    {k} = {v:.4g}")
    print(f"out of sample ({evaluation.name}):")
    for kind, s in report.summary.items():
        med = "-" if s.median_abs_rel_error is None else f"{s.median_abs_rel_error:.1%}"
        mx = "-" if s.max_abs_rel_error is None else f"{s.max_abs_rel_error:.1%}"
        print(f"    {kind:13s} n={s.n:2d} median {med:>6s} max {mx:>6s} unsupported {s.unsupported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
