"""Package layout only; metadata lives in pyproject.toml.

The top-level ``hwprofiles/`` folder ships inside the installed package as
``moesim.hwprofiles`` so that every profile loads after a non-editable install.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["moesim", "moesim.*"]) + ["moesim.hwprofiles"],
    package_dir={"moesim.hwprofiles": "hwprofiles"},
    package_data={"moesim": ["presets/*.toml", "py.typed", "data/*.json", "data/*.toml", "quality/data/*.json"],
                  "moesim.hwprofiles": ["*.toml"]},
)
