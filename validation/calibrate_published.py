"""Calibrate the built-in profiles on the published calibration set and write their [efficiency].

``python -m validation.calibrate_published [CASES.json]`` starts every profile that has
calibratable cases in the file (gemm, grouped_gemm, all_to_all) from the generic prior, fits
the parameters those cases can identify with ``moesim.calibrate`` and rewrites the profile's
``[efficiency]`` tables in hwprofiles/ (keeping every other line). The errors it prints are
in-sample; ``moesim validate validation/data/published-eval.json`` is the out-of-sample check.

Training and serving rows (``moesim.step_cases.JOINT_KINDS``) declare a parameter of the
software stack, not of the GPU (``compute.host_op_overhead_us``): after the per-profile fits it
is fitted JOINTLY over every training and serving row of every hardware (one value; soft-L1 on
log errors, scale 0.1, as ``moesim.calibrate``) and judged by leave-one-out (refit on all rows
but one, predict that one) since no disjoint set of training/serving rows exists yet. Both error
tables are printed. Being a property of the software stack (eager PyTorch/Megatron/SGLang
issuing CUDA/HIP kernels), not of one GPU, the value is written into EVERY gpu profile
(``software_stack_profiles``), each origin saying it was fitted on those rows and transferred;
TPU profiles get 0: XLA compiles the whole step into one executable, so there is no
per-operator host issue (moesim/step/host.py). The cpu-host profile keeps its own value.

Fitted efficiencies then transfer, by section, to profiles of the same silicon that have no
data of their own (``TRANSFER``): H100 and H200 are the same GH100 die, SMs and kernels as the
H800 (hardware-specs.md s1-s2), so the GEMM efficiencies fitted on H800 DeepGEMM apply to them;
H200 has the same NVLink 4 / 400G NIC fabric as H100. The H100 DeepGEMM rows of the evaluation
set then test that transfer out of sample.
"""
from __future__ import annotations

import datetime as _dt
import math
import sys
from pathlib import Path
from statistics import median

from moesim.calibrate import _log_errors, calibrate, joint_fit, with_params
from moesim.cases import load_cases
from moesim.catalog import _profiles_dir, list_profiles, load_profile, replace_efficiency
from moesim.specs.hardware import Efficiency
from moesim.validate import predictor_for

DEFAULT_CASES = Path(__file__).parent / "data" / "published-calibration.json"

# target profile -> {efficiency section: profile whose fitted section it takes}
TRANSFER: dict[str, dict[str, str]] = {
    "h100-sxm": {"compute": "h800-sxm"},
    "h200-sxm": {"compute": "h800-sxm", "comm": "h100-sxm"},
}


def _table(title: str, cases, errs) -> None:
    print(title)
    for c, e in zip(cases, errs):
        print(f"    {c.id:60s} {math.expm1(e):+7.1%}")
    print(f"    median |err| {median(abs(math.expm1(e)) for e in errs):.1%}")


def fit_joint_kinds(cases, source: str) -> dict[str, float]:
    """Joint fit of the JOINT_KINDS rows, in-sample and leave-one-out tables; returns the values."""
    from moesim.step_cases import JOINT_KINDS

    rows = [c for c in cases if c.kind in JOINT_KINDS]
    if not rows:
        return {}
    params: tuple[str, ...] = ()
    for kind in JOINT_KINDS:
        params += tuple(p for p in predictor_for(kind)[1] if p not in params)
    profiles = {h: load_profile(h) for h in {c.hardware for c in rows}}
    values = joint_fit(rows, profiles, params)
    _table(f"joint fit on {len(rows)} {'/'.join(JOINT_KINDS)} rows: "
           + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()) + " (in-sample)",
           rows, _log_errors(rows, profiles, values))
    loo = []
    for i, c in enumerate(rows):
        held = joint_fit(rows[:i] + rows[i + 1:], profiles, params)
        loo.append(_log_errors([c], profiles, held)[0])
        print(f"    leave out {c.id}: " + ", ".join(f"{k} = {v:.4g}" for k, v in held.items()))
    _table("leave-one-out (each row predicted by a fit on the others)", rows, loo)
    write_software_stack(values, f"fitted {_dt.date.today().isoformat()} jointly on {len(rows)} "
                         f"{'/'.join(JOINT_KINDS)} rows of {source}", {c.hardware for c in rows})
    return values


def _strip_notes(origin: str, params) -> str:
    """``origin`` without the note an earlier run appended about ``params`` (always the last
    note: the joint fit runs last), so that reruns stay idempotent."""
    for p in params:
        origin = origin.split(f"; {p}")[0]
    return origin


def software_stack_profiles() -> dict[str, str]:
    """Profile name -> how it receives the software-stack parameters: ``eager`` (gpu: the fitted
    value) or ``compiled`` (tpu: no per-operator host issue)."""
    out = {}
    for name in list_profiles():
        kind = load_profile(name).kind
        if kind in ("gpu", "tpu"):
            out[name] = "eager" if kind == "gpu" else "compiled"
    return out


def write_software_stack(values: dict[str, float], how: str, fitted_on: set[str]) -> None:
    """Write the jointly fitted software-stack ``values`` into every gpu profile and 0 into every
    tpu profile, with an origin note saying so."""
    for name, stack in software_stack_profiles().items():
        prof = load_profile(name)
        if stack == "eager":
            vals = values
            where = "its own rows" if name in fitted_on else "transferred"
            note = (f"{', '.join(values)} {how} (hardware: {', '.join(sorted(fitted_on))}); "
                    f"a software-stack property of eager PyTorch frameworks, {where}")
        else:
            vals = {k: 0.0 for k in values}
            note = f"{', '.join(values)} = 0: XLA compiles the step, no per-operator host issue"
        origin = _strip_notes(prof.efficiency.origin, values)
        merged = with_params(prof, vals, origin=f"{origin}; {note}").efficiency
        replace_efficiency(_profiles_dir() / f"{name}.toml", merged)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m validation.calibrate_published", description=(
        "Fit the shipped profiles' efficiencies to a published-case file and rewrite the profiles "
        "(of the installed moesim) in place."))
    ap.add_argument("cases", nargs="?", default=str(DEFAULT_CASES), help="moesim-cases/1 file (default: %(default)s)")
    path = Path(ap.parse_args(sys.argv[1:] if argv is None else argv).cases)
    casefile = load_cases(path)
    from moesim.step_cases import JOINT_KINDS

    usable = [c for c in casefile.cases if predictor_for(c.kind)[1] and c.kind not in JOINT_KINDS]
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
            updates[f"{section}_origin"] = "transferred"
            notes.append(f"{section}: transferred from {donor} (same silicon)")
        merged = eff.model_copy(update={**updates, "origin": f"{eff.origin}; " + "; ".join(notes)})
        replace_efficiency(_profiles_dir() / f"{target}.toml", merged)
        print(f"{target}: " + "; ".join(notes))
    fit_joint_kinds(list(casefile.cases), f"validation/data/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
