"""Calibrate the built-in profiles on the published calibration set and write their [efficiency].

``python -m validation.calibrate_published [CASES.json]`` starts every profile that has
calibratable cases (gemm, grouped_gemm, all_to_all) in the file or in ``PROFILE_FIT_FILES``
(XLA's B200 matmul table) from the generic prior, fits
the parameters those cases can identify with ``moesim.calibrate`` and rewrites the profile's
``[efficiency]`` tables in hwprofiles/ (keeping every other line). The errors it prints are
in-sample; ``moesim validate validation/data/published-eval.json`` is the out-of-sample check.

Training and serving rows (``moesim.step_cases.JOINT_KINDS``) depend on parameters of the
software stack they ran, not of the GPU: after the per-profile fits, each stack's fitted entries
(moesim/data/stacks.toml ``fit = true``: host time per eagerly issued operator; ``fit_fraction =
true``: the achievable device fraction of its full step) are fitted jointly on the rows that run
the stack, over every hardware (``moesim.calibrate.fit_stacks``: soft-L1 on log errors, scale
0.1, host within [0, fit_max], fraction within [0.3, 1]; not identified: the prior), and written
into the stacks table with the date and the rows (``write_stack_fits``). The rows: the training /
serving rows of the calibration file, plus the rows of ``STACK_FIT_FILES`` marked ``"role":
"calibration"`` (one whole source per stack without calibration rows: the TensorRT-LLM v0.17
table for trtllm-engine, the v1.0-era PyTorch-backend table for trtllm; each row fits the stack
``case_stack`` maps it to). ``moesim validate ... --logo`` refits them per left-out source and hardware
(moesim/accuracy.py).

Fitted efficiencies then transfer, by section, to profiles of the same silicon that have no
data of their own (``TRANSFER``): H100 and H200 are the same GH100 die, SMs and kernels as the
H800 (hardware-specs.md s1-s2), so the GEMM efficiencies fitted on H800 DeepGEMM apply to them;
H200 has the same NVLink 4 / 400G NIC fabric as H100. The H100 DeepGEMM rows of the evaluation
set then test that transfer out of sample.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import tomllib
from pathlib import Path
from statistics import median

from moesim.calibrate import calibrate
from moesim.cases import load_cases
from moesim.catalog import _profiles_dir, list_profiles, load_profile, replace_efficiency
from moesim.specs.hardware import Efficiency
from moesim.validate import predictor_for

DEFAULT_CASES = Path(__file__).parent / "data" / "published-calibration.json"
# evaluation files with a whole source marked "role": "calibration" for a stack fit: TensorRT-LLM
# has no calibration row, so trtllm-engine is fitted on the v0.17 perf-overview table (TensorRT
# engines) alone and trtllm on the v1.0-era one (PyTorch backend) alone; the later perf-overview
# revision (published-e2e-serving-maxload.json) stays out of every fit
STACK_FIT_FILES: tuple[Path, ...] = (Path(__file__).parent / "data" / "published-e2e-serving-2.json",
                                     # AMD's ROCm vLLM 0.7.3 table: the vllm-rocm stack (docs/evidence.md)
                                     Path(__file__).parent / "data" / "published-calibration-serving.json")

# further whole sources the per-profile fits read (every row, whatever its file's role): XLA's
# sm_100 matmul table is the only B200 GEMM measurement, so b200's GEMM compute fraction (bf16 /
# fp8, the dtypes it measured) cannot be identified without it (docs/accuracy.md session 24)
PROFILE_FIT_FILES: tuple[Path, ...] = (Path(__file__).parent / "data" / "published-calibration-xla-gemm.json",)

# profile -> profiles of the same silicon whose GEMM rows join its compute fit (each row predicted on
# its own profile with the parameters being fitted): XLA's sm_90 BF16 matmuls ran on an H100 (the
# table's H100 80GB HBM3 label), the H800's DeepGEMM rows are FP8; one GH100 fit over both dtypes
# (hardware-specs.md s1-s2: same SMs, kernels and dense peaks), which TRANSFER then gives to H100 / H200
SAME_SILICON: dict[str, tuple[str, ...]] = {"h800-sxm": ("h100-sxm",)}
COMPUTE_KINDS = ("gemm", "grouped_gemm")

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


def fit_software_stacks(cases, source: str, write: bool = True) -> dict:
    """Fit every software-stack parameter (moesim.calibrate.fit_stacks) on the training / serving
    rows of ``cases``, print the in-sample errors of its rows, and write the values, with the
    date and the rows, into moesim/data/stacks.toml (``write_stack_fits``)."""
    from moesim.calibrate import fit_stacks, stack_log_errors
    from moesim.step.stacks import stack_table

    rows = [c for c in cases if c.kind in ("training", "serving") and c.role == "calibration"]
    profiles = {h: load_profile(h) for h in {c.hardware for c in rows}}
    fits = fit_stacks(rows, profiles)
    table = stack_table().with_values({p: f.value for p, f in fits.items()})
    by_rows: dict[tuple, list[str]] = {}
    for param, fit in fits.items():  # one table per stack (its parameters share their rows)
        if fit.pooled:  # set from the others' fits: its rows are theirs
            print(f"{param} = {fit.value:.4g} ({fit.note})")
            continue
        by_rows.setdefault(fit.rows, []).append(param)
    for ids, params in by_rows.items():
        title = "; ".join(f"{p} = {fits[p].value:.4g} ({fits[p].note})" for p in params)
        fitted = [c for c in rows if c.id in ids]
        if fitted:
            _table(f"{title}; in-sample", fitted, stack_log_errors(fitted, profiles, table))
        else:
            print(title)
    if write:
        write_stack_fits(fits, _dt.date.today().isoformat(), source)
    return fits


def write_stack_fits(fits: dict, date: str, source: str, path: Path | None = None) -> None:
    """Rewrite the fitted ``host_op_us`` / ``device_fraction`` numbers and each stack's
    ``fitted`` line of the stacks table in place (comments and every other line kept); the result
    must load."""
    import re

    from moesim.step.stacks import param_field, parse_table, split_param

    path = path or Path(__file__).resolve().parents[1] / "moesim" / "data" / "stacks.toml"
    lines = path.read_text(encoding="utf-8").splitlines()
    notes: dict[str, list[str]] = {}
    for param, fit in fits.items():
        name, phase = split_param(param)
        fld = param_field(param)
        how = (f"{phase} {fld} {fit.note} ({date}, from the fits on {source})" if fit.pooled else
               f"{phase} {fld} fitted {date} on {len(fit.rows)} rows of {source} ({', '.join(fit.rows)})"
               if fit.identified else f"{phase} {fld}: {fit.note} ({date}, {source}; rows: "
               f"{', '.join(fit.rows) or 'none'})")
        notes.setdefault(name, []).append(how)
    section = None
    for i, line in enumerate(lines):
        head = re.match(r"^\[([^\]]+)\]\s*$", line)
        if head:
            section = head.group(1)
            continue
        for param, fit in fits.items():
            name, phase = split_param(param)
            fld = param_field(param)
            if section == name and line.startswith(f"{phase} = {{"):
                lines[i] = line = re.sub(rf"\b{fld} = [0-9.eE+-]+", f"{fld} = {float(f'{fit.value:.4g}')!r}", line,
                                         count=1)
        if section in notes and line.startswith("fitted = "):
            lines[i] = "fitted = " + json.dumps("; ".join(notes.pop(section)))
    text = "\n".join(lines) + "\n"
    if notes:
        raise ValueError(f"stacks table lacks a fitted line for {', '.join(notes)}")
    parse_table(tomllib.loads(text))  # never write an unloadable table
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m validation.calibrate_published", description=(
        "Fit the shipped profiles' efficiencies to a published-case file and rewrite the profiles "
        "(of the installed moesim) in place."))
    ap.add_argument("cases", nargs="?", default=str(DEFAULT_CASES), help="moesim-cases/1 file (default: %(default)s)")
    path = Path(ap.parse_args(sys.argv[1:] if argv is None else argv).cases)
    casefile = load_cases(path)
    from moesim.step_cases import JOINT_KINDS

    by_file = {path: casefile.cases, **{f: load_cases(f).cases for f in PROFILE_FIT_FILES}}
    usable = {f: [c for c in cases if predictor_for(c.kind)[1] and c.kind not in JOINT_KINDS]
              for f, cases in by_file.items()}
    pooled = {s: d for d, sibs in SAME_SILICON.items() for s in sibs}  # sibling -> the profile it joins
    for name in sorted({c.hardware for cases in usable.values() for c in cases}):
        prior = load_profile(name).with_efficiency(Efficiency())
        sibs = tuple(load_profile(s).with_efficiency(Efficiency()) for s in SAME_SILICON.get(name, ()))

        def mine(c):  # this profile's rows, its siblings' GEMM rows, not its GEMM rows another fit takes
            if c.hardware == name:
                return not (name in pooled and c.kind in COMPUTE_KINDS)
            return c.hardware in SAME_SILICON.get(name, ()) and c.kind in COMPUTE_KINDS

        files = [f for f, cases in usable.items() if any(mine(c) for c in cases)]
        rows = [c for f in files for c in usable[f] if mine(c)]
        if not rows:
            continue
        result = calibrate(rows, prior, source=", ".join(f"validation/data/{f.name}" for f in files),
                           siblings=sibs)
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
    extra = [c for f in STACK_FIT_FILES for c in load_cases(f).cases if c.role == "calibration"]
    names = ", ".join([f"validation/data/{path.name}"] + [f"validation/data/{f.name} (rows marked calibration)"
                                                           for f in STACK_FIT_FILES])
    fit_software_stacks(list(casefile.cases) + extra, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
