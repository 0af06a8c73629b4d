"""``moesim op all-to-all`` / ``op all-reduce``: JSON fields, and one-line errors with exit code 2."""
from __future__ import annotations

import json

import pytest

from moesim.cli import run

A2A = ["op", "all-to-all", "--hw", "h100-sxm", "--op", "dispatch", "--ranks", "64", "--ranks-per-node", "8",
       "--tokens-per-rank", "4096", "--hidden", "7168", "--top-k", "8", "--experts", "256",
       "--bytes-per-token", "7392", "--mode", "normal", "--dedup", "node"]


def test_all_to_all_json(capsys):
    assert run(A2A + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("time_s", "bottleneck", "internode_bytes", "intranode_bytes"):
        assert key in data
    assert data["time_s"] > 0 and data["internode_bytes"] > 0


def test_skew_is_slower(capsys):
    assert run(A2A + ["--json"]) == 0
    uniform = json.loads(capsys.readouterr().out)["time_s"]
    assert run(A2A + ["--dedup", "none", "--skew", "zipf:1.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["time_s"] > uniform


def test_all_reduce_json(capsys):
    assert run(["op", "all-reduce", "--hw", "h100-sxm", "--ranks", "16", "--bytes", "1e9", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["time_s"] > 0 and data["hierarchical"] is True


@pytest.mark.parametrize("change", [
    ["--ranks", "60"],                  # not a multiple of ranks per node
    ["--ranks-per-node", "512"],        # larger than the profile's largest domain (256)
    ["--tokens-per-rank", "0"],
    ["--bytes-per-token", "-5"],
    ["--mode", "fast"],
    ["--skew", "zipf:-1"],
    ["--op", "gather"],
])
def test_bad_input_one_line_exit_2(capsys, change):
    assert run(A2A + change) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error:") and "\n" not in err


def test_all_reduce_bad_bytes(capsys):
    assert run(["op", "all-reduce", "--hw", "h100-sxm", "--ranks", "16", "--bytes", "0"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
