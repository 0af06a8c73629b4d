"""The XLA matmul-table calibration set (validation/data/published-calibration-xla-gemm.json): well formed,
each time the source's own arithmetic, the selection complete by its stated rule."""
from __future__ import annotations

import json
import re
from pathlib import Path

from moesim.cases import load_cases

FILE = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-calibration-xla-gemm.json"


def test_rows_are_well_formed_and_calibration():
    data = json.loads(FILE.read_text())
    assert data["role"] == "calibration"
    report = load_cases(FILE)
    assert not report.problems
    ids = [c.id for c in report.cases]
    assert len(ids) == len(set(ids)) == 30
    # sm_100 (B200) from the current file, sm_90 (H100) from its older revision
    revision = {"b200": ("sm_100", "a305421c"), "h100-sxm": ("sm_90", "9bebee8e")}
    for c in data["cases"]:
        cc, commit = revision[c["hardware"]]
        assert c["kind"] == "gemm" and "ASSUMED" in c["notes"] and f"'{cc}'" in c["published"]["unit"]
        assert c["source"].startswith(f"https://github.com/tensorflow/tensorflow/blob/{commit}")


def test_time_is_two_mnk_over_the_printed_flops():
    """measured time_s = 2 m n k / flops, stored to 6 significant digits (rel 1e-5)."""
    for c in json.loads(FILE.read_text())["cases"]:
        i = c["inputs"]
        t = 2.0 * i["m"] * i["n"] * i["k"] / c["published"]["value"]
        assert abs(c["measured"]["value"] / t - 1.0) < 1e-5, c["id"]
        assert f"b: 1, m: {i['m']}, n: {i['n']}, k: {i['k']}" in c["published"]["unit"]


def test_selection_is_every_large_shape_of_the_grid():
    """The table's grid is m, n, k in {256, ..., 4096} (powers of two); the rule keeps b = 1 and
    m n k >= 2^34: exactly these 10 shapes, under sm_100 in bf16 and fp8, under sm_90 in bf16
    (the older revision has BF16 and F32 keys only)."""
    grid = [256, 512, 1024, 2048, 4096]
    want = {(m, n, k) for m in grid for n in grid for k in grid if m * n * k >= 2 ** 34}
    rows = json.loads(FILE.read_text())["cases"]
    got: dict[str, dict] = {"sm100": {}, "sm90": {}}
    for c in rows:
        i = c["inputs"]
        cc = re.fullmatch(r"xla-perf-table-(sm100|sm90)-(bf16|fp8)-m\d+-n\d+-k\d+", c["id"]).group(1)
        got[cc].setdefault((i["m"], i["n"], i["k"]), set()).add(i["dtype"])
    assert set(got["sm100"]) == want and all(v == {"bf16", "fp8"} for v in got["sm100"].values())
    assert set(got["sm90"]) == want and all(v == {"bf16"} for v in got["sm90"].values())
