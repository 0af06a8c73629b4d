"""Units audit: every column header of every text table and CSV states its unit, one style across
commands (GiB for memory, ms for latencies in tables, s in keys named *_s), or is a name / count /
dimensionless column on the explicit allow-lists below.

Each command runs once on a small input, text output (no --json); its tables are found by their
header rule (moesim.textfmt.table: a header line over a line of dash runs), its key-value lines
(``key  value``) are checked for a unit on every number, and the --csv files of plan, whatif,
compare and pilot are checked by their header row.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from moesim.cli import run

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["--small", "--set", "hardware=h200-sxm,mi300x"]
COMMANDS = {
    "plan": ["plan", *SMALL, "--verify-top", "1", "--csv", "{tmp}/plan.csv"],
    "whatif": ["whatif", "default", *SMALL, "--verify-top", "0", "--set", "slo.tpot_s=0.04",
               "--csv", "{tmp}/whatif.csv"],
    "compare": ["compare", "default", *SMALL, "--verify-top", "0", "--dense", "llama3.1-70b",
                "--csv", "{tmp}/compare.csv"],
    "pilot": ["pilot", "default", *SMALL, "--stages", "0.1,1", "--csv", "{tmp}/pilot.csv"],
    "tradeoff": ["tradeoff", "default", *SMALL],
    "serve": ["serve", str(ROOT / "examples" / "serve_deepseek_v3.toml"), "--duration", "120"],
    "step": ["step", "--model", "deepseek-v3", "--hw", "h800-sxm", "--devices", "32", "--devices-per-node", "8",
             "--ep", "32", "--attention", "dp", "--phase", "decode", "--batch-per-device", "128",
             "--context", "4096", "--dtype", "fp8"],
    "validate": ["validate", str(ROOT / "validation" / "data" / "published-eval.json"), "--logo"],
    "op gemm": ["op", "gemm", "--hw", "h800-sxm", "--m", "4096", "--n", "7168", "--k", "16384", "--dtype", "fp8"],
    "op grouped-gemm": ["op", "grouped-gemm", "--hw", "h800-sxm", "--groups", "8", "--m-per-group", "4096",
                        "--n", "4096", "--k", "7168", "--dtype", "fp8"],
    "op all-to-all": ["op", "all-to-all", "--hw", "h800-sxm", "--op", "dispatch", "--ranks", "64",
                      "--ranks-per-node", "8", "--tokens-per-rank", "4096", "--hidden", "7168", "--top-k", "8",
                      "--experts", "256", "--bytes-per-token", "7392", "--mode", "normal", "--dedup", "node"],
    "memory": ["memory", "--model", "deepseek-v3", "--hw", "h200-sxm", "--devices", "8", "--ep", "8", "--dtype", "fp8"],
    "hw list": ["hw", "list"],
    "models list": ["models", "list"],
}
# a header carries its unit when it contains one of these (the style: ms for table latencies,
# GiB for memory, tok/s, $/h, %, and the rate and count units the tables use)
UNITS = ("ms", "GiB", "GB/s", "Gb/s", "TFLOP/s", "tok/s", "req/s", "$", "%", "nats", "hours", "days",
         "tok/rank", "seq/dev", "max/mean")
NAMES = {  # names, labels and categories: no unit
    "#", "name", "id", "kind", "metric", "hardware", "parallelism", "layout", "bottleneck", "decode bottleneck",
    "prefill pool", "decode pool", "reason", "closest example", "overflow", "price from", "efficiencies",
    "ignored inputs", "latency", "stage", "base", "changed", "delta",
}
COUNTS = {  # counts of things: the thing is the unit
    "devices", "nodes", "batch", "replicas", "count", "n", "layers", "experts", "top-k", "domain devices",
    "P:D devices", "unsupported", "errors", "total params", "active params", "published total params",
    "published active params",
}
DIMENSIONLESS = {  # ratios, factors, and columns whose unit each row states
    "capacity",  # the capacity factor (x the balanced load)
    "imbalance",  # expert load max/mean
    "drops",  # "cf 1.25: 0.3%": the capacity factor and the dropped share, both stated in the cell
    "measured", "predicted",  # in the unit of the row's metric column (time_s, tokens_per_s_per_device)
}
# CSV keys: the unit is the key's suffix (or an infix such as usd_per_hour, tokens_per_s)
CSV_UNIT = re.compile(r"(_s|_GiB|_pct|_per_s|_nats)(_|$)|usd|tokens_per_s|_per_s_|_tok_per_s")
CSV_PLAIN = {  # names, counts, flags, dimensionless ratios and dates
    "side", "stage", "rank_key", "hardware", "devices_per_replica", "replicas", "devices", "nodes", "tp", "ep", "etp",
    "pp", "dp", "attention_layout", "batch", "capacity_factor", "redundant_experts", "bottleneck",
    "drop_fraction", "reroute_fraction", "backup_fraction", "loss_increase", "loss_increase_low",
    "loss_increase_high", "imbalance", "mfu", "decode_steps_per_prefill", "days", "efficiency_origin",
    "prior_only", "price_provider", "price_quality", "price_as_of", "price_basis", "error_band_kind",
    "error_band_sample", "error_band_widened_by",
}
CSV_PLAIN_PREFIX = ("drop_fraction_", "expert_imbalance_")  # pilot watches: dimensionless metrics
KV_PLAIN = {"groups", "bound", "bottleneck", "fits", "deployment", "shape", "all-to-all", "completed"}
KV_UNIT = re.compile(r"\b(ms|us|s|GiB|KiB|MiB|GB|TFLOP/s|TFLOPS|tok/s|tokens|req/s|%|k|M|G)\b|/s\b|/device")

RULE = re.compile(r"^-+(  -+)*$")


def tables(text: str) -> list[list[str]]:
    """Column headers of every ``textfmt.table`` in ``text``."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines[1:], 1):
        if RULE.match(line):
            starts = [m.start() for m in re.finditer(r"-+", line)]
            head = lines[i - 1]
            out.append([head[a:b].strip() for a, b in zip(starts, starts[1:] + [None])])
    return out


def kv_lines(text: str) -> list[tuple[str, str]]:
    """``key  value`` lines outside tables (two or more spaces between); a table's body is the run
    of lines after its rule with as many cells as it has columns."""
    lines = text.splitlines()
    skip: set[int] = set()
    for i, line in enumerate(lines):
        if i and RULE.match(line):
            width = len(line.split())
            skip |= {i - 1, i}
            j = i + 1
            while j < len(lines) and len(re.split(r"\s{2,}", lines[j].strip())) == width:
                skip.add(j)
                j += 1
    out = []
    for i, line in enumerate(lines):
        if i in skip or line.startswith(" "):
            continue
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
    return out


def header_ok(h: str, sides: tuple[str, ...] = ()) -> bool:
    return any(u in h for u in UNITS) or h in NAMES | COUNTS | DIMENSIONLESS or h in sides


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("units")
    got = {}
    for name, argv in COMMANDS.items():
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = run([a.format(tmp=tmp) for a in argv])
        assert code == 0, (name, buf.getvalue()[-500:])
        got[name] = buf.getvalue()
    return tmp, got


@pytest.mark.slow
def test_every_table_header_states_its_unit(outputs):
    _, got = outputs
    bad, seen = [], 0
    for name, text in got.items():
        sides = ("deepseek-v3", "llama3.1-70b") if name == "compare" else ()
        for headers in tables(text):
            seen += len(headers)
            bad += [f"{name}: {h!r}" for h in headers if not header_ok(h, sides)]
    assert not bad, bad
    assert seen > 100  # every command with a table printed one (counted: plan 4 tables, validate 3, ...)
    for name in ("plan", "whatif", "compare", "pilot", "tradeoff", "serve", "validate", "hw list"):
        assert tables(got[name]), f"{name} printed no table"


@pytest.mark.slow
def test_side_by_side_metric_labels_state_units(outputs):
    """whatif/compare rows are metrics: each label carries the unit of its values."""
    from moesim.commands.whatif import LABELS

    labelled = {label for label, _ in LABELS.values()}
    for name in ("whatif", "compare"):
        text = outputs[1][name]
        lines = text.splitlines()
        i = next(i for i, line in enumerate(lines) if RULE.match(line))
        for line in lines[i + 1:]:
            if not line.strip():
                break
            label = re.split(r"\s{2,}", line)[0]
            assert label in labelled or label in NAMES | COUNTS | {"days"} or any(u in label for u in UNITS), \
                (name, label)
    assert "TPOT ms" in outputs[1]["whatif"] and "$/h" in outputs[1]["whatif"]


@pytest.mark.slow
def test_key_value_numbers_carry_a_unit(outputs):
    """memory, op, step, serve print ``key  value`` lines: a number there states its unit."""
    bad = []
    for name in ("memory", "op gemm", "op grouped-gemm", "op all-to-all", "step", "serve"):
        pairs = kv_lines(outputs[1][name])
        assert pairs, name
        for key, value in pairs:
            if key in KV_PLAIN or not re.match(r"[-+]?[\d.,]+", value):
                continue
            if not (KV_UNIT.search(value) or KV_UNIT.search(key)):
                bad.append(f"{name}: {key!r} = {value!r}")
    assert not bad, bad


@pytest.mark.slow
def test_csv_headers_state_units(outputs):
    tmp, _ = outputs
    bad = []
    for name in ("plan", "whatif", "compare", "pilot"):
        with open(tmp / f"{name}.csv", newline="") as fh:
            header = next(csv.reader(fh))
        for h in header:
            if h in CSV_PLAIN or h.startswith(CSV_PLAIN_PREFIX) or CSV_UNIT.search(h):
                continue
            bad.append(f"{name}.csv: {h!r}")
    assert not bad, bad


@pytest.mark.slow
def test_csv_rows_carry_provenance(outputs):
    """Every CSV row names its profile origin, price provider/quality/date, basis and error band."""
    tmp, _ = outputs
    need = {"efficiency_origin", "price_provider", "price_quality", "price_as_of", "price_basis",
            "error_band_kind", "error_band_typical_pct", "error_band_worst_pct", "error_band_sample"}
    for name in ("plan", "whatif", "compare", "pilot"):
        with open(tmp / f"{name}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows, name
        assert need <= set(rows[0]), (name, sorted(need - set(rows[0])))
        assert all(r["price_basis"] == "runpod" and r["price_provider"] and r["error_band_typical_pct"]
                   for r in rows), name
    with open(tmp / "whatif.csv", newline="") as fh:
        assert {r["side"] for r in csv.DictReader(fh)} == {"base", "changed"}
    with open(tmp / "compare.csv", newline="") as fh:
        assert {r["side"] for r in csv.DictReader(fh)} == {"moe", "dense"}
