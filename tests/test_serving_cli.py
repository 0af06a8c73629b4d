"""``moesim serve`` and the step-model-backed replica cost (GridCost via from_deployment)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from numpy.testing import assert_allclose

from moesim import cli
from moesim.catalog import load_model, load_profile
from moesim.des.serving.deployment import from_deployment, kv_capacity_tokens
from moesim.specs import Deployment
from moesim.step import Decode, Prefill, estimate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "serve_deepseek_v3.toml"
QUICK = ["serve", "--model", "qwen3-30b-a3b", "--hw", "h100-sxm", "--devices", "8", "--rate", "5",
         "--duration", "20", "--prompt-len", "512", "--output-len", "32", "--slo-ttft", "1", "--slo-tpot", "0.1"]


def _json(capsys, argv):
    assert cli.run(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_quick_flags_json(capsys):
    d = _json(capsys, QUICK + ["--json"])
    for k in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(d[k]) >= {"p50", "p90", "p99"}
        assert d[k]["p50"] <= d[k]["p90"] <= d[k]["p99"]
    assert d["output_tokens_per_s"] > 0 and d["goodput"]["goodput_requests_per_s"] > 0
    assert d["completed"] == d["requests"]


def test_example_scenario_runs_with_trace_and_csv(capsys, tmp_path):
    trace, csv = tmp_path / "t.json", tmp_path / "r.csv"
    d = _json(capsys, ["serve", str(EXAMPLE), "--duration", "15", "--warmup", "1", "--json",
                       "--trace", str(trace), "--csv", str(csv)])
    assert d["mode"] == "disaggregated" and d["devices"] == 48
    assert d["ttft_s"]["p99"] > 0 and d["goodput"]["slo_met"] in (True, False)
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    by_track: dict = {}
    for e in events:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():  # one replica runs one iteration at a time
        spans.sort()
        assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:]))
    assert csv.read_text().startswith("arrival_s,prompt_tokens,output_tokens,ttft_s")


@pytest.mark.parametrize("toml, field", [
    ('[arrivals]\nrate_per_s = -1\n', "arrivals.rate_per_s"),
    ('[arrivals]\nrate_per_s = 1\n[replica]\ndevices_per_replica = 8\nbogus = 1\n', "replica.bogus"),
    ('[arrivals]\nrate_per_s = 1\n[replica]\ndevices_per_replica = 8\nep = 7\n', "ep"),
    # a deployment check names the pool's table and the field once (no "replica: deployment:")
    ('[arrivals]\nrate_per_s = 1\n[replica]\ndevices_per_replica = 8\netp = 3\n', "replica: etp = 3: allowed"),
])
def test_bad_scenario_names_the_field(tmp_path, capsys, toml, field):
    base = 'model = "deepseek-v3"\nhardware = "h100-sxm"\n[prompt]\nmean_tokens = 10\n[output]\nmean_tokens = 2\n'
    p = tmp_path / "s.toml"
    p.write_text(base + toml if "[replica]" in toml else base + toml + "[replica]\ndevices_per_replica = 8\n")
    assert cli.run(["serve", str(p)]) == 2
    assert field in capsys.readouterr().err


def test_quick_flags_missing():
    assert cli.run(["serve", "--model", "deepseek-v3"]) == 2


def test_grid_cost_matches_step_model():
    # Second engine: the interpolated cost at off-grid points vs a direct step-model call.
    m, hw = load_model("qwen3-30b-a3b"), load_profile("h100-sxm")
    dep = Deployment(hardware=hw, devices=8, dp=8, ep=8, attention_layout="dp", dtype="fp8")
    cost = from_deployment(m, dep, prompt_len_hint=1024)
    direct = estimate(m, dep, Decode(48 / 8, 3000), check_memory=False).step_time_s[0]
    assert_allclose(cost.decode_time_s(48, 3000), direct, rtol=0.03)  # batch 48 between nodes 32, 64
    direct = estimate(m, dep, Prefill(1024, 3 / 8), check_memory=False).step_time_s[0]
    assert_allclose(cost.prefill_time_s(3072, 3), direct, rtol=0.05)  # 3072 between nodes 2048, 4096
    # KV capacity: memory model's tokens per device x 8 DP-attention groups
    assert cost.kv_capacity_tokens == kv_capacity_tokens(m, dep)
    assert cost.kv_capacity_tokens % 8 == 0
