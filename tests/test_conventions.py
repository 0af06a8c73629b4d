"""CLI conventions: --version, -v/-q logging, progress bars silent off a terminal or under --json,
JSON Schemas of the files users write, gzip-able Chrome traces with a rank filter."""
from __future__ import annotations

import gzip
import json
from argparse import Namespace
from pathlib import Path

import pytest

from moesim import __version__
from moesim.cases import METRICS, REQUIRED_INPUTS, load_cases
from moesim.cli import run
from moesim.des.trace import Span, select_tracks, write_chrome_trace
from moesim.errors import MoesimError
from moesim.progress import bar, wanted
from moesim.schemas import cases_schema, markdown, scenario_schema

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"moesim {__version__}"


def test_verbose_logs_and_quiet_silences(capsys, tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text('kind = "serving"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm"]\n'
                  "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
                  "[slo]\ntpot_s = 0.15\n[search]\ndevices_per_replica = [8]\nbatch_per_device = [32]\ntp = [1]\n"
                  'attention_layouts = ["dp"]\n[verify]\ntop_n = 0\n')
    assert run(["-v", "plan", str(sc)]) == 0
    err = capsys.readouterr().err
    assert "moesim: INFO: planning scenario: deepseek-v3 on h200-sxm" in err
    assert run(["-q", "plan", str(sc)]) == 0
    assert capsys.readouterr().err == ""


def test_progress_only_for_people_at_a_terminal():
    assert not wanted(Namespace(json=False, verbosity=0))  # pytest's stderr is not a terminal
    items = [1, 2, 3]
    assert bar(items, enabled=False) is items


def test_cases_schema_is_the_readers_tables_and_fits_the_shipped_sets():
    s = cases_schema()
    variants = {v["properties"]["kind"]["const"]: v for v in s["properties"]["cases"]["items"]["oneOf"]}
    assert set(variants) == set(REQUIRED_INPUTS)
    for kind, v in variants.items():
        assert v["properties"]["inputs"]["required"] == list(REQUIRED_INPUTS[kind])
        assert v["properties"]["measured"]["properties"]["metric"]["enum"] == list(METRICS[kind])
    data = json.loads((ROOT / "validation/data/published-eval.json").read_text())
    assert data["schema"] == s["properties"]["schema"]["const"]
    assert not load_cases(ROOT / "validation/data/published-eval.json").problems


@pytest.mark.parametrize("kind", ["scenario", "serve", "cases"])
def test_schema_command(kind, capsys):
    assert run(["schema", kind]) == 0
    assert json.loads(capsys.readouterr().out)


def test_scenario_reference_is_generated_from_the_schema():
    doc = (ROOT / "docs/scenario-reference.md").read_text()
    assert doc == markdown()  # regenerate: python -m moesim.schemas --markdown > docs/scenario-reference.md
    props = scenario_schema()["oneOf"][0]["properties"]
    assert "prices" in props and "`prices.basis`" in doc


def test_trace_gzip_and_rank_filter(tmp_path):
    spans = [Span(f"rank {r}", "compute", "experts", 0.001 * r, 0.002) for r in range(4)]
    p = write_chrome_trace(spans, tmp_path / "t.json.gz", processes=["rank 1", "rank 3"])
    data = json.loads(gzip.open(p, "rt").read())
    names = sorted(e["args"]["name"] for e in data["traceEvents"] if e["name"] == "process_name")
    assert names == ["rank 1", "rank 3"]
    assert sum(e["ph"] == "X" for e in data["traceEvents"]) == 2
    assert {e["args"]["name"] for e in data["traceEvents"] if e["name"] == "thread_name"} == {"compute"}
    with pytest.raises(MoesimError, match="rank 9 not in the simulation"):
        select_tracks(spans, ["rank 9"])


def test_serving_progress_bar_changes_no_number(capsys):
    """The bar is an observer process: the simulation's results are identical with it."""
    from moesim.catalog import build, read_toml
    from moesim.des.serving.scenario import ServeScenario, run_scenario

    data = read_toml(ROOT / "examples/serve_deepseek_v3.toml")
    data["duration_s"] = 300.0
    data["warmup_s"] = 30.0
    scn = build(ServeScenario, data, "serve")
    a, b = run_scenario(scn, ROOT / "examples"), run_scenario(scn, ROOT / "examples", progress=True)
    assert a.to_dict() == b.to_dict()
    assert "serving DES" in capsys.readouterr().err


API_MODULES = ["moesim.catalog", "moesim.prices", "moesim.provenance", "moesim.hf_import", "moesim.report_html",
               "moesim.planner", "moesim.step", "moesim.des", "moesim.routing", "moesim.compute", "moesim.comm",
               "moesim.specs", "moesim.validate", "moesim.calibrate"]


@pytest.mark.slow
def test_api_reference_builds(tmp_path):
    """docs/api.md's pdoc command builds (skipped without the optional [docs] extra)."""
    pdoc = pytest.importorskip("pdoc")
    import subprocess
    import sys

    assert " ".join(API_MODULES[:3]) in (ROOT / "docs/api.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "pdoc", *API_MODULES, "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "moesim" / "prices.html").is_file() and pdoc


@pytest.mark.parametrize("argv", [["route", "--experts", "16", "--top-k", "2", "--tokens", "64", "-v"],
                                  ["op", "gemm", "--hw", "h100-sxm", "--m", "8", "--n", "8", "--k", "8", "-q"],
                                  ["-v", "hw", "show", "h100-sxm", "-v"]])
def test_log_flags_are_accepted_after_the_subcommand(argv, capsys):
    assert run(argv) == 0
    assert capsys.readouterr().out


def test_log_flags_after_the_subcommand_add_to_those_before():
    from moesim.cli import build_parser

    args = build_parser().parse_args(["-v", "hw", "show", "h100-sxm", "-v"])
    assert args.verbosity + args.sub_verbosity == 2
    args = build_parser().parse_args(["hw", "show", "h100-sxm", "-q"])
    assert args.sub_quiet and not args.quiet


def test_monte_carlo_route_progress_changes_no_number_and_leaves_the_cache(capsys):
    """The bar only observes the sample loop; a call with it neither reads nor fills the cache."""
    import numpy as np

    from moesim.routing import route
    from moesim.routing.api import _route_cached

    kw = dict(ep=4, skew="zipf:1.1", capacity_factor=1.25, engine="montecarlo", samples=40, seed=3)
    cached = route(64, 4, 2048, **kw)
    info = _route_cached.cache_info()
    shown = route(64, 4, 2048, progress=True, **kw)
    assert "Monte Carlo routing samples" in capsys.readouterr().err
    assert _route_cached.cache_info().hits == info.hits and _route_cached.cache_info().misses == info.misses
    assert shown is not cached and shown.summary() == cached.summary()
    np.testing.assert_array_equal(shown.traffic_RR, cached.traffic_RR)  # same seed, same draws: exact
    assert not shown.traffic_RR.flags.writeable
    assert route(64, 4, 2048, **kw) is cached


def test_layer_des_progress_changes_no_number(capsys):
    import numpy as np

    from moesim.catalog import load_model, load_profile
    from moesim.des.layer import simulate_layers
    from moesim.specs import Deployment
    from moesim.step.layer import make_setup

    model = load_model("deepseek-v3")
    dep = Deployment(hardware=load_profile("h200-sxm"), devices=16, ep=16, dp=16)
    setup = make_setup(model, dep, "decode", "zipf:1.1")
    kw = dict(layers=[3, 4], tokens=32, context=2048, steps=6, seed=1)
    a = simulate_layers(setup, **kw)
    b = simulate_layers(setup, progress=True, **kw)
    assert "layer DES steps" in capsys.readouterr().err
    np.testing.assert_array_equal(a.step_times_s, b.step_times_s)  # same seed, same events: exact


def test_step_des_and_route_draw_no_bar_off_a_terminal(capsys):
    assert run(["route", "--experts", "16", "--top-k", "2", "--tokens", "64", "--engine", "montecarlo",
                "--samples", "8"]) == 0
    assert run(["step", "--model", "deepseek-v3", "--hw", "h200-sxm", "--devices", "16", "--ep", "16",
                "--phase", "decode", "--engine", "des", "--steps", "2"]) == 0
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
