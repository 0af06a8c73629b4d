"""Hostile and careless input through the CLI entry point, in process: every case must end with
exit 2 and one line on stderr, no traceback, no value of a foreign file in the output, and no
file left behind. Plus the faults around it: Ctrl-C, partial outputs, shared mutable results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim import cli
from moesim.catalog import _profiles_dir, load_model, load_profile

EXAMPLES = Path(__file__).parent.parent / "examples"
SECRET = "SECRET-TOKEN-8d1f"  # must never appear in any output
LONG = "x" * 100_000


def _fixtures(root: Path) -> None:
    (root / "secret").mkdir()
    (root / "secret" / "creds.toml").write_text(f'api_token = "{SECRET}"\nuser = "{SECRET}-user"\n')
    scen = root / "scen"
    scen.mkdir()
    target = ('[workload]\nprompt_len = 1000\noutput_len = 200\ntarget_output_tokens_per_s = 20000\n'
              '[slo]\ntpot_s = 0.05\n')
    (scen / "foreign.toml").write_text(f'name = "f"\nmodel = "deepseek-v3"\nhardware = ["../secret/creds.toml"]\n{target}')
    (scen / "foreign_model.toml").write_text(f'name = "f"\nmodel = "{root}/secret/creds.toml"\nhardware = "h100-sxm"\n{target}')
    shutil.copy(root / "secret" / "creds.toml", scen / "creds.toml")
    (scen / "link.toml").symlink_to(root / "secret" / "creds.toml")  # inside by name, outside in fact
    (scen / "via_link.toml").write_text(f'name = "l"\nmodel = "deepseek-v3"\nhardware = ["link.toml"]\n{target}')
    (scen / "own_creds.toml").write_text(f'name = "o"\nmodel = "deepseek-v3"\nhardware = ["creds.toml"]\n{target}')
    (scen / "trace_out.toml").write_text(f'name = "t"\nmodel = "deepseek-v3"\nhardware = "h100-sxm"\n'
                                         f'[routing]\nskew = "trace:../secret/creds.toml"\n{target}')
    (scen / "serve_foreign.toml").write_text('model = "deepseek-v3"\nhardware = "../secret/creds.toml"\n'
                                             '[arrivals]\nrate_per_s = 1.0\n[prompt]\nmean_tokens = 100\n'
                                             '[output]\nmean_tokens = 10\n[replica]\ndevices_per_replica = 16\n')
    (scen / "serve_trace_out.toml").write_text('model = "deepseek-v3"\nhardware = "h100-sxm"\n'
                                               '[arrivals]\nkind = "trace"\ntrace_path = "../secret/creds.toml"\n'
                                               '[prompt]\nmean_tokens = 100\n[output]\nmean_tokens = 10\n'
                                               '[replica]\ndevices_per_replica = 16\n')
    (root / "cases.json").write_text(json.dumps({"schema": "moesim-cases/1", "cases": [
        {"id": "c1", "kind": "gemm", "hardware": "secret/../../secret/creds.toml",
         "inputs": {"m": 1, "n": 1, "k": 1, "dtype": "bf16"}, "measured": {"metric": "time_s", "value": 1.0}}]}))
    (root / "latin1.toml").write_bytes('name = "\xe9t\xe9"\n'.encode("latin-1"))
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "binary.json").write_bytes(b"\x00\x01\xfe\xff" * 64)
    (root / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep_trace.json").write_text('{"num_experts": 8, "top_k": 2, "counts_SE": ' + "[" * 3000 + "]" * 3000 + "}")
    (root / "garbage.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (root / "empty.toml").write_text("")
    (root / "big.toml").write_text((Path(__file__).parent.parent / "moesim" / "presets" / "mixtral-8x7b.toml")
                                   .read_text().replace("num_layers = 32", "num_layers = 1000000000000"))
    (root / "outdir").mkdir()


RUN = ["--model", "deepseek-v3", "--hw", "h100-sxm"]
SERVE = ["serve", *RUN, "--devices", "16", "--rate", "1", "--duration", "5", "--prompt-len", "100",
         "--output-len", "10"]
STEP = ["step", *RUN, "--devices", "16", "--ep", "16", "--phase", "decode"]
ROUTE = ["route", "--experts", "64", "--top-k", "2", "--tokens", "1000"]
MEMORY = ["memory", *RUN, "--devices", "16", "--ep", "16"]

CASES: list[tuple[str, list[str]]] = [
    # ---- files confined to where they belong; values of a foreign file never echoed
    ("plan-foreign-hardware", ["plan", "{d}/scen/foreign.toml", "--small"]),
    ("plan-foreign-model-abs", ["plan", "{d}/scen/foreign_model.toml", "--small"]),
    ("plan-symlink-outside", ["plan", "{d}/scen/via_link.toml", "--small"]),
    ("plan-own-creds-as-profile", ["plan", "{d}/scen/own_creds.toml", "--small"]),
    ("plan-trace-outside", ["plan", "{d}/scen/trace_out.toml", "--small"]),
    ("whatif-foreign", ["whatif", "{d}/scen/foreign.toml", "--set", "slo.tpot_s=0.1"]),
    ("compare-foreign", ["compare", "{d}/scen/foreign.toml", "--dense", "llama-3-70b"]),
    ("pilot-foreign", ["pilot", "{d}/scen/foreign.toml", "--share", "0.1"]),
    ("serve-foreign", ["serve", "{d}/scen/serve_foreign.toml"]),
    ("serve-trace-outside", ["serve", "{d}/scen/serve_trace_out.toml"]),
    ("validate-case-outside", ["validate", "{d}/cases.json"]),
    ("hw-show-creds", ["hw", "show", "{d}/secret/creds.toml"]),
    ("models-show-creds", ["models", "show", "{d}/secret/creds.toml"]),
    ("step-hw-creds", ["step", "--model", "deepseek-v3", "--hw", "{d}/secret/creds.toml", "--devices", "8",
                       "--phase", "decode"]),
    ("memory-model-creds", ["memory", "--model", "{d}/secret/creds.toml", "--hw", "h100-sxm", "--devices", "8"]),
    ("plan-set-creds", ["plan", "--small", "--set", 'hardware=["{d}/secret/creds.toml"]']),
    ("route-trace-creds", [*ROUTE, "--trace", "{d}/secret/creds.toml"]),
    # ---- binary, Latin-1, deeply nested, empty files
    ("memory-latin1", ["memory", "--model", "{d}/latin1.toml", "--hw", "h100-sxm", "--devices", "8"]),
    ("memory-binary", ["memory", "--model", "{d}/binary.toml", "--hw", "h100-sxm", "--devices", "8"]),
    ("memory-deep", ["memory", "--model", "{d}/deep.toml", "--hw", "h100-sxm", "--devices", "8"]),
    ("hw-show-empty", ["hw", "show", "{d}/empty.toml"]),
    ("plan-latin1", ["plan", "{d}/latin1.toml"]),
    ("plan-deep", ["plan", "{d}/deep.toml"]),
    ("plan-binary", ["plan", "{d}/binary.toml"]),
    ("serve-deep", ["serve", "{d}/deep.toml"]),
    ("validate-deep", ["validate", "{d}/deep.json"]),
    ("validate-binary", ["validate", "{d}/binary.json"]),
    ("calibrate-latin1", ["calibrate", "{d}/latin1.toml", "--hw", "h100-sxm"]),
    ("route-trace-deep", ["route", "--trace", "{d}/deep_trace.json", "--tokens", "100"]),
    ("route-trace-binary", ["route", "--trace", "{d}/binary.json", "--tokens", "100"]),
    ("route-trace-garbage-npz", ["route", "--trace", "{d}/garbage.npz", "--tokens", "100"]),
    ("route-trace-dir", ["route", "--trace", "{d}/outdir", "--tokens", "100"]),
    ("plan-dir-as-scenario", ["plan", "{d}/outdir"]),
    # ---- output paths: a directory, a missing folder, a wrong type
    ("serve-csv-dir", [*SERVE, "--csv", "{d}/outdir"]),
    ("serve-csv-missing-folder", [*SERVE, "--csv", "{d}/nope/r.csv"]),
    ("serve-trace-dir", [*SERVE, "--trace", "{d}/outdir"]),
    ("serve-timeseries-missing", [*SERVE, "--timeseries-csv", "{d}/nope/t.csv"]),
    ("step-trace-missing-folder", [*STEP, "--engine", "des", "--steps", "2", "--no-memory-check",
                                   "--trace", "{d}/nope/t.json"]),
    ("step-trace-dir", [*STEP, "--engine", "des", "--steps", "2", "--no-memory-check", "--trace", "{d}/outdir"]),
    ("step-trace-analytic", [*STEP, "--trace", "{d}/t.json"]),
    ("calibrate-output-dir", ["calibrate", "{d}/cases.json", "--hw", "h100-sxm", "-o", "{d}/outdir"]),
    ("plan-results-dir", ["plan", "--small", "--results", "{d}/outdir"]),
    ("plan-results-missing", ["plan", "--small", "--results", "{d}/nope/r.jsonl"]),
    ("plan-csv-dir", ["plan", "--small", "--csv", "{d}/outdir"]),
    ("plan-plot-txt", ["plan", "--small", "--plot", "{d}/p.txt"]),
    ("plan-screen-results", ["plan", "--small", "--screen", "--results", "{d}/r.jsonl"]),
    ("plan-long-output-name", ["plan", "--small", "--csv", "{d}/" + "y" * 300 + ".csv"]),
    # ---- values: nan, inf, negative, absurd
    ("plan-dask-malformed", ["plan", "--small", "--executor", "dask", "--address", "tcp://::::x"]),
    ("plan-dask-no-address", ["plan", "--small", "--executor", "dask"]),
    ("plan-verify-top-training", ["plan", str(EXAMPLES / "train_mixtral_8x22b.toml"), "--verify-top", "3"]),
    ("plan-top-0", ["plan", "--small", "--top", "0"]),
    ("plan-workers-0", ["plan", "--small", "--workers", "0"]),
    ("plan-set-nan", ["plan", "--small", "--set", "slo.tpot_s=nan"]),
    ("plan-set-deep", ["plan", "--small", "--set", "search.tp=" + "[" * 5000 + "]" * 5000]),
    ("plan-set-layers-1e12", ["plan", "--small", "--set", "model.num_layers=1000000000000"]),
    ("route-seed-negative", [*ROUTE, "--seed", "-1"]),
    ("route-cf-huge", [*ROUTE, "--capacity-factor", "1e308"]),
    ("route-cf-nan", [*ROUTE, "--capacity-factor", "nan"]),
    ("route-cf-inf", [*ROUTE, "--capacity-factor", "inf"]),
    ("route-rpn-3-ep-32", [*ROUTE, "--ep", "32", "--ranks-per-node", "3"]),
    ("route-tokens-1e30", ["route", "--experts", "64", "--top-k", "2", "--tokens", "1" + "0" * 30]),
    ("route-samples-absurd", [*ROUTE, "--engine", "montecarlo", "--samples", "1000000000"]),
    ("route-drift-nan", [*ROUTE, "--drift", "nan"]),
    ("route-long-skew", [*ROUTE, "--skew", LONG]),
    ("step-prompts-nan", ["step", *RUN, "--devices", "16", "--ep", "16", "--phase", "prefill",
                          "--prompts-per-device", "nan"]),
    ("step-steps-absurd", [*STEP, "--engine", "des", "--steps", "10000000", "--no-memory-check"]),
    ("step-steps-0", [*STEP, "--engine", "des", "--steps", "0"]),
    ("step-model-long-name", ["step", "--model", LONG, "--hw", "h100-sxm", "--devices", "8", "--phase", "decode"]),
    ("step-hw-long-path", ["step", "--model", "deepseek-v3", "--hw", LONG + ".toml", "--devices", "8",
                           "--phase", "decode"]),
    ("step-layers-1e12", ["step", "--model", "{d}/big.toml", "--hw", "h100-sxm", "--devices", "8", "--ep", "8",
                          "--phase", "decode"]),
    ("memory-reserve-nan", [*MEMORY, "--reserve-gib", "nan"]),
    ("memory-reserve-inf", [*MEMORY, "--reserve-gib", "inf"]),
    ("op-allreduce-bytes-inf", ["op", "all-reduce", "--hw", "h100-sxm", "--ranks", "8", "--bytes", "inf"]),
    ("op-allreduce-bytes-nan", ["op", "all-reduce", "--hw", "h100-sxm", "--ranks", "8", "--bytes", "nan"]),
    ("op-a2a-rpn-3", ["op", "all-to-all", "--hw", "h100-sxm", "--ranks", "32", "--ranks-per-node", "3",
                      "--tokens-per-rank", "128", "--hidden", "7168", "--top-k", "8", "--experts", "256"]),
    ("op-gemm-negative", ["op", "gemm", "--hw", "h100-sxm", "--m", "-1", "--n", "8", "--k", "8"]),
    ("serve-rate-nan", ["serve", *RUN, "--devices", "16", "--rate", "nan", "--duration", "5",
                        "--prompt-len", "100", "--output-len", "10"]),
    ("serve-duration-absurd", ["serve", *RUN, "--devices", "16", "--rate", "20", "--duration", "1e9",
                               "--prompt-len", "100", "--output-len", "10"]),
    ("serve-seed-negative", [*SERVE, "--seed", "-5"]),
    ("pilot-share-nan", ["pilot", "--small", "--share", "nan"]),
    ("schema-long", ["schema", LONG]),
    ("hw-show-long", ["hw", "show", LONG]),
]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    _fixtures(root)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = cli.run(argv)
    except SystemExit as exc:  # argparse usage errors exit here
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name, argv", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2(name, argv, hostile_dir, capsys, monkeypatch):
    monkeypatch.chdir(hostile_dir)
    before = _files(hostile_dir)
    rc, out, err = _run([a.replace("{d}", str(hostile_dir)) for a in argv], capsys)
    assert rc == 2, (name, rc, err[-500:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error:"), err[-500:]
    assert len(lines[0]) <= cli.MAX_MESSAGE + 100
    assert "Traceback" not in err and "internal error" not in err
    assert SECRET not in out + err
    assert _files(hostile_dir) == before, "a failed command left a file behind"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.integers(min_value=-2**70, max_value=2**70).map(str),
                       st.text(max_size=40)))
def test_any_numeric_flag_value_is_an_answer_or_one_line(value, capsys):
    # every value of a numeric flag is either a finite answer (exit 0) or one line with exit 2
    for argv in (["route", "--experts", "16", "--top-k", "2", "--tokens", "64", "--capacity-factor", value],
                 ["op", "all-reduce", "--hw", "h100-sxm", "--ranks", "8", "--bytes", value],
                 ["route", "--experts", "16", "--top-k", "2", "--tokens", "64", "--seed", value]):
        rc, out, err = _run(argv, capsys)
        assert rc in (0, 2), (argv, rc, err)
        if rc == 2:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        else:
            assert not cli._NON_FINITE.search(out)


# ---- faults ---------------------------------------------------------------------------------------
def test_ctrl_c_inside_compiled_code_is_interrupted(monkeypatch, capsys):
    # Numba re-raises Ctrl-C as "SystemError: ... returned a result with an exception set"
    import moesim.routing as routing  # moesim route imports ``route`` from here when it runs (lazy)

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("CPUDispatcher(route_parallel) returned a result with an exception set")

    monkeypatch.setattr(routing, "route", interrupted)
    rc, _, err = _run([*ROUTE, "--engine", "montecarlo"], capsys)
    assert rc == 130 and err.strip() == "moesim: interrupted"


def test_successful_outputs_are_complete_and_leave_no_temporary_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run([*SERVE, "--csv", "r.csv", "--timeseries-csv", "t.csv", "--trace", "t.json"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "t.csv", "t.json"]
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("arrival_s")


def test_failed_command_removes_staged_outputs(tmp_path, capsys, monkeypatch):
    import moesim.commands.serve as serve_cmd

    def fail(*args, **kwargs):
        raise RuntimeError("simulated crash after the first output was written")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve_cmd, "_text", fail)  # runs after both outputs were staged
    rc, _, err = _run([*SERVE, "--csv", "r.csv", "--trace", "t.json"], capsys)
    assert rc == 1 and "internal error" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_replaced_whole_or_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("old contents\n")
    rc, _, _ = _run([*SERVE, "--rate", "nan", "--csv", "r.csv"], capsys)
    assert rc == 2 and (tmp_path / "r.csv").read_text() == "old contents\n"
    rc, _, _ = _run([*SERVE, "--csv", "r.csv"], capsys)
    assert rc == 0 and (tmp_path / "r.csv").read_text().startswith("arrival_s")


def test_overloaded_serve_says_so_and_prints_no_nan(capsys):
    # rate 1000/s: since the software stacks (eager prefill at 5 us/op) 100/s is served half-way
    rc, out, err = _run(["serve", "--model", "deepseek-v3", "--hw", "h200-sxm", "--devices", "16", "--rate", "1000",
                         "--duration", "3", "--prompt-len", "100000", "--output-len", "5000"], capsys)
    assert rc == 0, err
    assert "overloaded" in out and not cli._NON_FINITE.search(out)


# ---- shared results are read-only ----------------------------------------------------------------
def test_route_arrays_are_read_only_and_the_cache_stays_clean():
    from moesim.routing import route

    stats = route(64, 2, 1000, ep=8)
    with pytest.raises(ValueError, match="read-only"):
        stats.expert_tokens_E[0] = 1e9
    with pytest.raises(ValueError, match="read-only"):
        stats.traffic_RR[:] = 0
    again = route(64, 2, 1000, ep=8)
    assert again is stats and float(again.traffic_RR.sum()) > 0


def test_loaded_specs_cannot_be_changed_for_the_process():
    hw = load_profile("h100-sxm")
    bf16 = hw.compute.peak_dense_tflops["bf16"]
    with pytest.raises(TypeError, match="read-only"):
        hw.compute.peak_dense_tflops["bf16"] = 1.0
    with pytest.raises(TypeError):
        hw.compute.sources.update({"x": "y"})
    assert load_profile("h100-sxm").compute.peak_dense_tflops["bf16"] == bf16
    model = load_model("deepseek-v3")
    with pytest.raises(TypeError):
        model.sources["num_layers"] = "changed"
    copy = hw.to_dict()
    copy["compute"]["peak_dense_tflops"]["bf16"] = 1.0  # copies are ordinary dicts
    assert load_profile("h100-sxm").compute.peak_dense_tflops["bf16"] == bf16


def test_edited_profile_file_is_reloaded(tmp_path):
    # loaded specs are cached by file content, never by name: an edit is seen at once
    path = tmp_path / "gpu.toml"
    shutil.copy(_profiles_dir() / "h100-sxm.toml", path)
    assert load_profile(str(path)).memory.hbm_bandwidth_GBps == 3350
    path.write_text(path.read_text().replace("hbm_bandwidth_GBps = 3350\n", "hbm_bandwidth_GBps = 1675\n"))
    assert load_profile(str(path)).memory.hbm_bandwidth_GBps == 1675


def test_names_in_a_file_resolve_against_that_file(tmp_path, monkeypatch):
    from moesim.planner.scenario import load_scenario

    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(_profiles_dir() / "h100-sxm.toml", tmp_path / "a" / "b" / "gpu.toml")
    (tmp_path / "a" / "s.toml").write_text(
        'model = "deepseek-v3"\nhardware = ["b/gpu.toml"]\n[prices_usd_per_device_hour]\n"b/gpu.toml" = 3.0\n'
        '[workload]\nprompt_len = 1000\noutput_len = 200\ntarget_output_tokens_per_s = 20000\n[slo]\ntpot_s = 0.05\n')
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    s = load_scenario("a/s.toml")
    full = str((tmp_path / "a" / "b" / "gpu.toml").resolve())
    assert s.hardware == (full,) and s.prices_usd_per_device_hour == {full: 3.0}
    assert load_profile(s.hardware[0]).name == "h100-sxm"


def test_profile_errors_name_keys_not_values(tmp_path):
    from moesim.errors import MoesimError

    data = (_profiles_dir() / "h100-sxm.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(data.replace("hbm_bandwidth_GBps = 3350\n", f'hbm_bandwidth_GBps = "{SECRET}"\n')
                    + f'\nleaked = "{SECRET}"\n')
    with pytest.raises(MoesimError) as info:
        load_profile(str(path))
    msg = str(info.value)
    assert "hbm_bandwidth_GBps" in msg and "leaked" in msg and SECRET not in msg
    assert np.char.count(msg, "\n") == 0


# ---- flags that silently lost -------------------------------------------------------------------
def _scenario(argv: list[str]):
    from moesim.commands.plan import load

    return load(cli.build_parser().parse_args(argv))


def test_small_never_overrides_explicit_flags():
    s = _scenario(["plan", "--small", "--verify-top", "3", "--set", "search.tp=[1,2]"])
    assert s.verify.top_n == 3 and s.search.tp == (1, 2)
    assert s.search.batch_per_device == (8, 32, 128)  # what --small sets and nobody overrode
    assert _scenario(["plan", "--small"]).verify.top_n == 1


def test_verify_top_zero_is_accepted_for_training():
    s = _scenario(["plan", str(EXAMPLES / "train_mixtral_8x22b.toml"), "--verify-top", "0"])
    assert s.kind == "training"


def test_case_file_names_resolve_against_the_case_file(tmp_path):
    from moesim.cases import _resolve_case_files

    (tmp_path / "profiles").mkdir()
    data = {"schema": "moesim-cases/1", "cases": [
        {"id": "a", "hardware": "profiles/gpu.toml", "inputs": {"model": "m.toml"}},
        {"id": "b", "hardware": "h100-sxm", "inputs": {"model": "deepseek-v3"}}]}
    out = _resolve_case_files(data, tmp_path / "cases.json")
    root = tmp_path.resolve()
    assert out["cases"][0]["hardware"] == str(root / "profiles" / "gpu.toml")
    assert out["cases"][0]["inputs"]["model"] == str(root / "m.toml")
    assert out["cases"][1] == data["cases"][1]  # built-in names untouched


def test_an_error_the_candidates_share_is_the_answer(tmp_path, capsys):
    # the defect: a missing routing trace answered "no deployment meets the target; closest ...
    # does not fit" while most candidates had failed on the missing file
    (tmp_path / "s.toml").write_text(
        'name = "mt"\nmodel = "deepseek-v3"\nhardware = ["h100-sxm", "h200-sxm"]\n'
        '[routing]\nskew = "trace:missing.json"\n'
        "[workload]\nprompt_len = 1000\noutput_len = 200\ntarget_output_tokens_per_s = 20000\n"
        "[slo]\ntpot_s = 0.05\n")
    rc, _, err = _run(["plan", str(tmp_path / "s.toml"), "--small", "--executor", "inline"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no answer" in err and "failed with an error" in err and "missing.json: no such file" in err
    assert "closest" not in err
