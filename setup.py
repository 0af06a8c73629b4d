"""Package layout only; metadata lives in pyproject.toml.

The top-level ``hwprofiles/`` folder ships inside the installed package as
``moesim.hwprofiles`` so that every profile loads after a non-editable install; ``validation/``
ships as the top-level ``validation`` package with its measurement files and routing traces
(not the trace plots), so ``python -m validation.calibrate_published`` and the
``moesim-validate-*`` entry points work from a wheel (torch: ``pip install "moesim[validation]"``).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["moesim", "moesim.*"]) + ["moesim.hwprofiles", "validation"],
    package_dir={"moesim.hwprofiles": "hwprofiles"},
    package_data={"moesim": ["presets/*.toml", "py.typed", "data/*.json", "data/*.toml", "quality/data/*.json"],
                  "moesim.hwprofiles": ["*.toml"],
                  "validation": ["README.md", "run_gpu.sh", "data/*.json", "data/traces/*.npz",
                                 "data/traces/*.json", "data/traces/*.md"]},
)
