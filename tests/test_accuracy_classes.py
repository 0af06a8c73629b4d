"""Sample classes of `moesim validate --logo`: in-sample, leave-one-group-out, out-of-sample."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from numpy.testing import assert_allclose

from moesim.accuracy import accuracy_table, leave_one_group_out
from moesim.calibrate import calibrate, default_params, with_params
from moesim.cases import load_cases, source_group
from moesim.catalog import load_profile
from moesim.cli import run
from moesim.specs.hardware import Efficiency
from moesim.validate import predict_case, validate

DATA = Path(__file__).resolve().parents[1] / "validation" / "data"
CALIB = load_cases(DATA / "published-calibration.json")
EVAL = load_cases(DATA / "published-eval.json")
GEMM_CAL = tuple(c for c in CALIB.of_kind("gemm") if c.hardware == "h800-sxm")  # the DeepGEMM rows
GEMM_EVAL = EVAL.of_kind("gemm")


def test_roles_and_groups_come_from_the_files():
    assert CALIB.role == "calibration" and EVAL.role == "evaluation"
    assert {c.group for c in GEMM_CAL} == {"deepseek-ai/DeepGEMM"}
    # AMD's max-achievable-FLOPs rows (MI300X, MI325X) are a source of their own
    assert {c.group for c in CALIB.of_kind("gemm") if c not in GEMM_CAL} == {"ROCm/rocm-blogs"}
    assert source_group("https://lmsys.org/blog/2025-05-05-large-scale-ep/") == "lmsys.org"
    assert source_group("https://github.com/NVIDIA/nccl/issues/2169") == "NVIDIA/nccl"


def test_in_sample_and_out_of_sample_are_the_shipped_predictions():
    tab = accuracy_table(GEMM_CAL + GEMM_EVAL, logo=False)
    ins = validate(dataclasses.replace(CALIB, cases=GEMM_CAL)).summary["gemm"]
    oos = validate(dataclasses.replace(EVAL, cases=GEMM_EVAL)).summary["gemm"]
    assert tab.summary["gemm"]["in_sample"].median_abs_rel_error == ins.median_abs_rel_error
    assert tab.summary["gemm"]["out_of_sample"].max_abs_rel_error == oos.max_abs_rel_error


def test_leaving_the_only_source_out_predicts_with_the_prior():
    # Every gemm case is DeepGEMM's: without it nothing is left to fit, so each case is
    # predicted with the generic prior's gemm parameters (second computation, exact).
    errs = leave_one_group_out(GEMM_CAL, GEMM_CAL + GEMM_EVAL, "source")
    for c in GEMM_CAL + GEMM_EVAL:
        shipped = load_profile(c.hardware)
        # the parameters the held-out rows of this hardware identify (all five: some are memory-bound)
        params = default_params([x for x in GEMM_CAL + GEMM_EVAL if x.hardware == c.hardware], shipped)
        prior = with_params(shipped, {p: getattr(Efficiency().compute, p.split(".")[1]) for p in params})
        assert errs[c.id] == predict_case(c, prior).rel_error, c.id


def test_leave_one_group_out_refits_on_the_other_groups():
    # Two artificial groups of the H800 gemm rows: group A is predicted by a fit on B only.
    a = [dataclasses.replace(c, group="A") for c in GEMM_CAL[:9]]
    b = [dataclasses.replace(c, group="B") for c in GEMM_CAL[9:]]
    errs = leave_one_group_out(a + b, a, "source")
    fitted = calibrate(b, load_profile("h800-sxm").with_efficiency(Efficiency()),
                       default_params(a, load_profile("h800-sxm")))
    prof = with_params(load_profile("h800-sxm"), fitted.params)
    for c in a:
        assert_allclose(errs[c.id], predict_case(c, prof).rel_error, rtol=1e-9)


def test_cli_logo_table_and_exit_code(tmp_path, capsys):
    assert run(["validate", str(DATA / "published-eval.json"), "--logo"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-source-out" in out and "out-of-sample" in out
    # a predictor error makes the command fail (exit 1) with the case id on stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "moesim-cases/1", "cases": [{"id": "x1", "kind": "training", "hardware": "b200", '
                   '"inputs": {"model": "qwen3-30b-a3b", "devices": 8, "tp": 1, "pp": 1, "ep": 8, '
                   '"global_batch": 64, "seq_len": 4096, "dtype": "bf16", "recompute": "sometimes"}, '
                   '"measured": {"metric": "tokens_per_s_per_device", "value": 1000}}]}')
    assert run(["validate", str(bad)]) == 1
    assert "x1" in capsys.readouterr().err


def test_a_refused_fold_leaves_its_cases_unpriced_with_the_reason(monkeypatch):
    """A fold whose refit is refused drops no case silently: each of its cases is listed as not
    priced with the reason, the other fold is priced as before, and the class summary counts them."""
    import moesim.accuracy as acc
    from moesim.validate import UnsupportedCase

    a = [dataclasses.replace(c, group="A") for c in GEMM_CAL[:9]]
    b = [dataclasses.replace(c, group="B") for c in GEMM_CAL[9:]]
    real = acc._refit_profiles

    def refit(fit_set, held):
        if held[0].group == "A":
            raise UnsupportedCase("planted refusal")
        return real(fit_set, held)

    monkeypatch.setattr(acc, "_refit_profiles", refit)
    folds = acc.group_folds(a + b, a + b, "source")
    assert set(folds.unpriced) == {c.id for c in a} and set(folds.errors) == {c.id for c in b}
    assert all("without source 'A'" in r and "planted refusal" in r for r in folds.unpriced.values())
    assert folds.errors == leave_one_group_out(a + b, b, "source")
    tab = acc.accuracy_table(a + b)  # one hardware fold, holding all 18 rows: A's first, so refused
    gemm = tab.summary["gemm"]
    assert (gemm["leave_one_source_out"].n, gemm["leave_one_source_out"].unpriced) == (len(b), len(a))
    assert (gemm["leave_one_hardware_out"].n, gemm["leave_one_hardware_out"].unpriced) == (0, len(a + b))
    assert gemm["in_sample"].unpriced == 0 and set(tab.to_dict()["unpriced"]["leave_one_source_out"]) == set(folds.unpriced)


def test_logo_cell_shows_the_cases_not_priced():
    from moesim.accuracy import ClassSummary
    from moesim.commands.validation_cmds import _cls

    assert _cls(ClassSummary.of([0.1, -0.3])) == "20.0 / 30.0 (2)"
    assert _cls(ClassSummary.of([0.1, -0.3], unpriced=3)) == "20.0 / 30.0 (2, 3 not priced)"
    assert _cls(ClassSummary.of([], unpriced=4)) == "- (0, 4 not priced)" and _cls(None) == "-"
