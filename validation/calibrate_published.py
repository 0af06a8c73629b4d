"""Calibrate the built-in profiles on the published calibration set and write their [efficiency].

``python -m validation.calibrate_published [CASES.json]`` starts every profile that has
calibratable cases in the file (gemm, grouped_gemm, all_to_all) from the generic prior, fits
the parameters those cases can identify with ``moesim.calibrate`` and rewrites the profile's
``[efficiency]`` tables in hwprofiles/ (keeping every other line). The errors it prints are
in-sample; ``moesim validate validation/data/published-eval.json`` is the out-of-sample check.

Fitted efficiencies then transfer, by section, to profiles of the same silicon that have no
data of their own (``TRANSFER``): H100 and H200 are the same GH100 die, SMs and kernels as the
H800 (hardware-specs.md s1-s2), so the GEMM efficiencies fitted on H800 DeepGEMM apply to them;
H200 has the same NVLink 4 / 400G NIC fabric as H100. The H100 DeepGEMM rows of the evaluation
set then test that transfer out of sample.
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

# target profile -> {efficiency section: profile whose fitted section it takes}
TRANSFER: dict[str, dict[str, str]] = {
    "h100-sxm": {"compute": "h800-sxm"},
    "h200-sxm": {"compute": "h800-sxm", "comm": "h100-sxm"},
}


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
    for target, sections in TRANSFER.items():
        eff = load_profile(target).efficiency
        if not eff.origin.startswith("calibrated"):
            eff = Efficiency()
        updates, notes = {}, []
        for section, donor in sections.items():
            updates[section] = getattr(load_profile(donor).efficiency, section)
            notes.append(f"{section}: transferred from {donor} (same silicon)")
        merged = eff.model_copy(update={**updates, "origin": f"{eff.origin}; " + "; ".join(notes)})
        replace_efficiency(_profiles_dir() / f"{target}.toml", merged)
        print(f"{target}: " + "; ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
