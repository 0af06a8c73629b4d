"""The wheel ships the validation tools: ``validation`` modules, their measurement files and the
``moesim-validate-*`` entry points, runnable from an installed location (not a clone)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("calibrate_published", "reproduce_disagg", "calibrate_comm", "calibrate_cpu_host", "bench",
         "measure_host", "count_ops", "fit_traces", "train_router", "quality_sweep", "quality_report")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(ROOT), "-w", str(out)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "setuptools" in build.stderr:
        pytest.skip(f"no setuptools in this environment to build with: {build.stderr[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    (whl,) = out.glob("moesim-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_lists_validation_modules_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for tool in TOOLS:
        assert f"validation/{tool}.py" in names, tool
    for lib in ("__init__", "torch_moe", "torch_router", "benchlib", "bench_suites"):
        assert f"validation/{lib}.py" in names, lib
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "validation" / "data").glob("*.json")}
    assert shipped and shipped <= names, sorted(shipped - names)
    traces = {p.relative_to(ROOT).as_posix() for p in (ROOT / "validation" / "data" / "traces").glob("*.npz")}
    assert traces and traces <= names, sorted(traces - names)
    assert not any(n.startswith("validation/data/traces/plots/") for n in names)  # figures stay in the repo
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    for tool in TOOLS:
        assert f"moesim-validate-{tool.replace('_', '-')} = validation.{tool}:main" in text, tool


@pytest.mark.slow
def test_installed_validation_tools_run_elsewhere(wheel, tmp_path):
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-m", "validation.calibrate_published", "--help"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: python -m validation.calibrate_published" in run.stdout, run.stdout
    code = ("import validation, validation.reproduce_disagg as r, validation.quality_report as q\n"
            "import validation.calibrate_published as c\n"
            "assert 'site' in validation.__file__, validation.__file__\n"
            "assert 'site' in str(c.DEFAULT_CASES) and c.DEFAULT_CASES.is_file()  # its data, installed\n"
            "assert r.DEFAULT.is_file() and q.PUBLISHED.is_file() and q.MEASURED.is_file()\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    script = site / "bin" / "moesim-validate-reproduce-disagg"
    run = subprocess.run([sys.executable, str(script), "--help"], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "figures" in run.stdout, run.stderr[-2000:]
