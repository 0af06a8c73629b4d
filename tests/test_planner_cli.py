"""`moesim plan / whatif / compare / pilot`: JSON shape, CSV, plot, one-line errors with exit code 2.

These run the real evaluator (step + memory models) on small searches, so they stay quick.
"""
from __future__ import annotations

import json

import pytest

from moesim.cli import run

SMALL = ["--small", "--verify-top", "0"]


def _run(capsys, *argv):
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sc") / "s.toml"
    p.write_text(
        'kind = "serving"\nname = "cli"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm"]\n'
        "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
        "[slo]\ntpot_s = 0.08\nttft_s = 3.0\n"
        "[search]\ndevices_per_replica = [8]\nbatch_per_device = [8, 32]\ntp = [1]\nattention_layouts = [\"dp\"]\n"
        "[verify]\ntop_n = 0\n"
    )
    return p


def test_plan_json_has_ranked_candidates_and_rejected(capsys, scenario_file, tmp_path):
    csv_path, png = tmp_path / "c.csv", tmp_path / "p.png"
    code, out, _ = _run(capsys, "plan", str(scenario_file), "--json", "--csv", str(csv_path), "--plot", str(png))
    assert code == 0
    data = json.loads(out)
    assert data["candidates"] and isinstance(data["rejected"], list)
    first = data["candidates"][0]
    for key in ("hardware", "devices", "nodes", "tp", "ep", "batch", "tpot_s", "ttft_s", "memory_headroom_GiB",
                "usd_per_hour", "usd_per_million_tokens", "bottleneck"):
        assert key in first
    costs = [c["usd_per_hour"] for c in data["candidates"]]
    assert costs == sorted(costs)
    assert csv_path.read_text().startswith("rank_key,hardware") and png.stat().st_size > 1000


def test_plan_text_table(capsys, scenario_file):
    code, out, _ = _run(capsys, "plan", str(scenario_file))
    assert code == 0 and "$/M tok" in out and "answer:" in out


def test_whatif_no_changes_zero_deltas(capsys, scenario_file):
    code, out, _ = _run(capsys, "whatif", str(scenario_file), "--json")
    assert code == 0
    deltas = [d for d in json.loads(out)["deltas"] if d["delta"] is not None]
    assert deltas and all(d["delta"] == 0 for d in deltas)


def test_whatif_top_k_side_by_side(capsys, scenario_file):
    code, out, _ = _run(capsys, "whatif", str(scenario_file), "--set", "model.top_k=4")
    assert code == 0 and "delta" in out and "devices" in out


@pytest.mark.parametrize("argv, needle", [
    (["plan", "nonexistent.toml"], "no such file"),
    (["whatif", "{s}", "--set", "model.top_k=999"], "top_k"),
    (["whatif", "{s}", "--set", "hardware=h999"], "unknown hardware profile 'h999'"),
    (["plan", "{s}", "--set", "workload.prompt_len=-1"], "workload.prompt_len"),
    (["plan", "{s}", "--set", "slo.tpot_s=0.0001"], "closest is"),
    (["plan", "{s}", "--set", "max_devices=4", "--set", "search.devices_per_replica=[4]"], "closest is"),
    (["compare", "{s}", "--dense", "nope-405b"], "unknown model"),
])
def test_bad_input_one_line_exit_2(capsys, scenario_file, argv, needle):
    code, out, err = _run(capsys, *[a.replace("{s}", str(scenario_file)) for a in argv])
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_invalid_scenario_field(capsys, tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('model = "deepseek-v3"\nhardware = ["h200-sxm"]\nbogus = 1\n[workload]\nprompt_len = 10\n'
                 'output_len = 10\nrequest_rate = 1\n[slo]\ntpot_s = 0.1\n')
    code, _, err = _run(capsys, "plan", str(p))
    assert code == 2 and "bogus" in err


def test_plan_screen_flag_gives_the_same_answer(capsys):
    # The default scenario, small space: screening prunes by lower bounds and must return the
    # same answer as the exhaustive exact sweep (tests/test_planner_screen.py checks the top 10).
    code, plain, _ = _run(capsys, "plan", *SMALL, "--json", "--executor", "inline")
    assert code == 0
    code, screened, _ = _run(capsys, "plan", *SMALL, "--json", "--screen")
    assert code == 0
    a, b = json.loads(plain)["answer"], json.loads(screened)["answer"]
    assert a["ranked"]["evaluation"]["candidate"] == b["ranked"]["evaluation"]["candidate"]
    assert a["usd_per_hour"] == b["usd_per_hour"]
