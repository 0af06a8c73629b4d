"""CLI: --json shapes, one-line errors with exit code 2, no tracebacks."""
from __future__ import annotations

import json

import pytest

from moesim.cli import run


def _run(capsys, *argv):
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_show_json_has_counts(capsys):
    code, out, _ = _run(capsys, "models", "show", "deepseek-v3", "--json")
    assert code == 0
    data = json.loads(out)
    # 671.0B / 37.55B from moesim's counting convention (README); published 671B / 37B
    assert data["total_params"] == pytest.approx(671e9, rel=0.03)
    assert data["active_params"] == pytest.approx(37e9, rel=0.06)


def test_hw_list_json_objects_with_name(capsys):
    code, out, _ = _run(capsys, "hw", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert isinstance(data, list) and all("name" in d for d in data)
    assert "h100-sxm" in {d["name"] for d in data}


def test_schema_prints_json(capsys):
    for kind in ("hardware", "model", "cluster", "parallelism", "workload"):
        code, out, _ = _run(capsys, "schema", kind, "--json")
        assert code == 0 and json.loads(out)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["models", "show", "deepseek-v33"], "did you mean deepseek-v3"),
        (["hw", "show", "h100"], "unknown hardware profile 'h100'"),
        (["hw", "show", "/nonexistent/x.toml"], "no such file"),
        (["models", "show", "deepseek-v3", "--context", "-1"], "--context"),
        # a typo in the probe span is refused before the search (it would simulate ~1e15 requests)
        (["plan", "--set", "verify.duration_s=1e12"], "serving DES verification (verify.duration_s)"),
        # raised inside a simpy process: simpy rebuilds it as type(e)(*e.args) (it was an internal error)
        (["serve", "--model", "qwen3-30b-a3b", "--hw", "a100-sxm-80gb", "--devices", "1", "--rate", "1",
          "--duration", "5", "--prompt-len", "100", "--output-len", "10"], "dtype: 'fp8' is invalid; profile a100-sxm-80gb has peaks for"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_argparse_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        run(["models", "frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_invalid_user_profile_names_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndisplay_name = "x"\nvendor = "nvidia"\nkind = "gpu"\n[compute]\n'
                   'peak_dense_tflops = { bf16 = -5 }\n')
    code, _, err = _run(capsys, "hw", "show", str(bad))
    assert code == 2
    assert "peak_dense_tflops" in err and "Traceback" not in err


def test_json_writes_non_finite_numbers_as_null(capsys):
    import argparse
    import math

    from moesim.cli import Result, emit

    emit(argparse.Namespace(json=True), Result({"ttft_s": math.inf, "ratio": math.nan, "ok": [1.5, -math.inf]}))
    assert json.loads(capsys.readouterr().out) == {"ttft_s": None, "ratio": None, "ok": [1.5, None]}


def test_step_on_a_partial_rack_runs_and_names_the_layout(capsys):
    """256 GPUs on 72-GPU NVL72 racks: priced as 4 domains of 64 (EP 32 inside one), the same
    answer as stating --devices-per-node 64, and the assumption printed and in the JSON."""
    args = ("step", "--model", "qwen3-30b-a3b", "--hw", "gb200", "--devices", "256", "--ep", "32",
            "--phase", "train", "--global-batch", "1024", "--seq-len", "4096", "--micro-batch", "1", "--json")
    code, out, _ = _run(capsys, *args)
    assert code == 0
    partial = json.loads(out)
    assert partial["partial_domain"].endswith("modelled as 4 domains of 64")
    code, out, _ = _run(capsys, *args, "--devices-per-node", "64")
    even = json.loads(out)
    assert code == 0 and "partial_domain" not in even
    assert partial["step_time_s"] == pytest.approx(even["step_time_s"], rel=1e-12)  # same layout, same arithmetic
    code, out, _ = _run(capsys, *args[:-1])
    assert code == 0 and "scale-up" in out and "4 domains of 64" in out


def test_errors_rebuild_from_their_args_as_simpy_and_pickle_do():
    import pickle

    from moesim.errors import SpecError, UnknownNameError

    for e in (SpecError("slo.ttft_s", -1, "must be > 0"), SpecError("devices", None, "must divide experts"),
              UnknownNameError("hardware profile", "h10", ["h100-sxm", "h200-sxm"])):
        for again in (type(e)(*e.args), pickle.loads(pickle.dumps(e))):
            assert type(again) is type(e) and str(again) == str(e)
    assert SpecError("a", 3, "must be >= 4").field == "a" and str(SpecError("a", 3, "b")) == "a: 3 is invalid; b"
