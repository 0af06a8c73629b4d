"""Calibrate the built-in profiles on the published calibration set and write their [efficiency].

``python -m validation.calibrate_published [CASES.json]`` starts every profile that has
calibratable cases in the file (gemm, grouped_gemm, all_to_all) from the generic prior, fits
the parameters those cases can identify with ``moesim.calibrate`` and rewrites the profile's
``[efficiency]`` tables in hwprofiles/ (keeping every other line). The errors it prints are
in-sample; ``moesim validate validation/data/published-eval.json`` is the out-of-sample check.
"""
from __future__ import annotations

import sys
from pathlib import Path

from moesim.calibrate import calibrate
from moesim.cases import load_cases
from moesim.catalog import _profiles_dir, load_profile, replace_efficiency
from moesim.specs.hardware import Efficiency
from moesim.validate import predictor_for

DEFAULT_CASES = Path(__file__).parent / "data" / "published-calibration.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else DEFAULT_CASES
    casefile = load_cases(path)
    usable = [c for c in casefile.cases if predictor_for(c.kind)[1]]
    for name in sorted({c.hardware for c in usable}):
        prior = load_profile(name).with_efficiency(Efficiency())
        result = calibrate(usable, prior, source=f"validation/data/{path.name}")
        replace_efficiency(_profiles_dir() / f"{name}.toml", result.profile.efficiency)
        print(f"{name}: {result.n_cases} cases ({', '.join(result.kinds)}); "
              f"median |err| {result.median_abs_rel_error_before:.3f} -> {result.median_abs_rel_error_after:.3f}, "
              f"max {result.max_abs_rel_error_before:.3f} -> {result.max_abs_rel_error_after:.3f} (in-sample)")
        for k, v in result.params.items():
            print(f"    {k} = {v:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
