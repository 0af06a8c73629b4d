"""A non-editable install ships hwprofiles/ and the presets inside the package."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_loads_every_profile(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "setuptools" in build.stderr:
        pytest.skip(f"no setuptools in this environment to build with: {build.stderr[-200:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import moesim, moesim.catalog as c\n"
        "assert 'site' in moesim.__file__, moesim.__file__\n"
        "names = c.list_profiles(); assert len(names) >= 14, names\n"
        "[c.load_profile(n) for n in names]\n"
        "models = c.list_models(); [c.load_model(m) for m in models]\n"
        "from moesim.quality.table import load_table; assert load_table().points\n"
        "print(len(names), len(models))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
