"""HTML report (moesim/report_html.py): one self-contained file with the answer, provenance, a
cost-latency chart labelling every hardware, step breakdowns and rejections; rendered in headless
Chromium (a screenshot with content, no console errors) where Chromium is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomli_w

from moesim.catalog import read_toml
from moesim.cli import run

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    prof = read_toml(ROOT / "hwprofiles/h200-sxm.toml")
    prof["name"] = "planted-gpu"
    prof.pop("efficiency")  # a prior-only profile
    (d / "planted-gpu.toml").write_text(tomli_w.dumps(prof))
    scenario = {
        "kind": "serving", "name": "report", "model": "deepseek-v3",
        "hardware": ["h200-sxm", str(d / "planted-gpu.toml")],
        "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
        "slo": {"tpot_s": 0.1, "ttft_s": 3.0},
        "search": {"devices_per_replica": [8], "batch_per_device": [8, 32, 128], "tp": [1, 8],
                   "attention_layouts": ["dp", "tp"]},
        "verify": {"top_n": 0},
    }
    (d / "s.toml").write_text(tomli_w.dumps(scenario))
    out = d / "plan.html"
    assert run(["plan", str(d / "s.toml"), "--report", str(out)]) == 0
    return out, str(d / "planted-gpu.toml"), d


def test_self_contained_with_every_section(report, capsys):
    path, planted, _ = report
    capsys.readouterr()
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert not re.search(r'(src|href)\s*=', text)  # nothing fetched
    assert text.count("<svg") >= 2 and "Pareto frontier" in text
    labels = re.findall(r'class="hw-label">([^<]+)<', text)
    assert sorted(labels) == sorted(["h200-sxm", planted])  # every hardware labelled on the chart
    assert "prior-only" in text and "price basis: runpod list prices" in text
    assert "Rejected configurations by reason" in text and ("does_not_fit" in text or "misses_slo" in text)


def test_breakdown_is_the_step_the_plan_priced(report):
    """The breakdown column (moesim.step.estimate on the candidate's Deployment) equals the plan's own decode step."""
    text = report[0].read_text()
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr><td.*?</tr>", text)]
    rows = [cells for cells in rows if len(cells) == 14]  # the candidates table (drops and loss +nats columns)
    assert len(rows) >= 2
    for cells in rows:
        assert cells[7] == cells[8], cells  # plan's vs breakdown's decode step ms (same 3 decimals)


def test_whatif_and_pilot_reports(report, capsys):
    _, _, d = report
    assert run(["whatif", str(d / "s.toml"), "--set", "slo.tpot_s=0.13", "--report", str(d / "w.html")]) == 0
    assert run(["pilot", str(d / "s.toml"), "--stages", "0.01,1", "--report", str(d / "p.html")]) == 0
    capsys.readouterr()
    w, p = (d / "w.html").read_text(), (d / "p.html").read_text()
    assert w.count("Cost against latency") == 2 and "delta %" in w
    assert "roll back if" in p and "1% of traffic" in p


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(report, tmp_path):
    path = report[0]
    png = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--window-size=1280,2000",
         f"--screenshot={png}", "--enable-logging=stderr", "--v=0", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 20_000, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    mpimg = pytest.importorskip("matplotlib.image")
    img = mpimg.imread(png)
    assert img.shape[0] >= 1000 and (img[..., :3] < 0.5).mean() > 0.005  # dark ink: text and chart drawn
