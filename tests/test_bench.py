"""validation/bench.py: the case files it writes parse as moesim-cases/1, the calibration and
evaluation shape sets are disjoint, the GPU entry point's code path runs (on CPU, tiny shapes),
and a failing suite is recorded instead of stopping the run.

Timings themselves are not asserted (a shared 2-core host); only that they are positive and
that each case carries its spread and metadata.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from moesim.cases import parse_cases
from validation import bench, bench_suites
from validation.benchlib import median_time

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path):
    data = json.loads(path.read_text())
    parsed = parse_cases(data, str(path))
    assert parsed.problems == (), parsed.problems
    return data, parsed


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_calibration_and_evaluation_shapes_are_disjoint(profile):
    calib, evals = bench_suites.TABLES[(profile, "calib")], bench_suites.TABLES[(profile, "eval")]
    for key in set(calib) & set(evals):
        if key[0] == "moe_layer":
            dims = lambda specs: {tuple(sorted(d.items())) + (T,) for _, d, T in specs}  # noqa: E731
            assert not dims(calib[key]) & dims(evals[key]), key
        else:
            assert not set(calib[key]) & set(evals[key]), key


def test_cpu_quick_run_writes_valid_case_files(tmp_path):
    assert bench.main(["--device", "cpu", "--suite", "calib", "--quick", "--out", str(tmp_path)]) == 0
    data, parsed = _load(tmp_path / "cpu-host-calib.json")
    kinds = {c.kind for c in parsed.cases}
    assert kinds == {"gemm", "grouped_gemm", "moe_layer", "all_to_all"}
    assert all(c.hardware == "cpu-host" and c.measured > 0 for c in parsed.cases)
    assert "torch_threads=1" in data["description"] and "QUICK MODE" in data["description"]
    assert all(c.inputs["cpu_threads"] == 1 for c in parsed.cases if c.kind != "all_to_all")
    moe = [c for c in parsed.cases if c.kind == "moe_layer"]
    assert {c.inputs["phase"] for c in moe} == {"forward", "forward_backward"}
    for c in moe:  # routed copies recorded per expert sum to T x K (dropless)
        assert sum(c.inputs["m_per_expert"]) == c.inputs["tokens_per_rank"] * c.inputs["model"]["top_k"]
    a2a = [c for c in parsed.cases if c.kind == "all_to_all"]
    for c in a2a:
        traffic = c.inputs["traffic_RR"]
        assert len(traffic) == c.inputs["ranks"]
        assert sum(map(sum, traffic)) == c.inputs["ranks"] * c.inputs["tokens_per_rank"] * c.inputs["top_k"]


def test_gpu_entry_point_cpu_path_runs(tmp_path):
    """The tables run_gpu.sh uses (bf16, fp8 via _scaled_mm), shrunk, on this CPU."""
    argv = ["--device", "cpu", "--profile", "gpu", "--suite", "eval", "--quick", "--out", str(tmp_path),
            "--hardware", "h200-sxm", "--kinds", "gemm,grouped_gemm,moe_layer"]
    assert bench.main(argv) == 0
    data, parsed = _load(tmp_path / "h200-sxm-eval.json")
    assert {c.kind for c in parsed.cases} >= {"gemm", "grouped_gemm", "moe_layer"}
    assert {c.inputs["dtype"] for c in parsed.cases} >= {"bf16"}


def test_failing_suite_is_recorded_and_run_continues(tmp_path, monkeypatch):
    def boom(ctx, specs, dtype):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(bench, "bench_grouped", boom)
    argv = ["--device", "cpu", "--suite", "eval", "--quick", "--out", str(tmp_path), "--kinds", "gemm,grouped_gemm"]
    assert bench.main(argv) == 0
    data, parsed = _load(tmp_path / "cpu-host-eval.json")
    assert {c.kind for c in parsed.cases} == {"gemm"}
    assert "grouped_gemm/fp32: RuntimeError: simulated kernel failure" in data["description"]


def test_time_budget_skips_remaining_suites(tmp_path):
    argv = ["--device", "cpu", "--suite", "eval", "--quick", "--out", str(tmp_path), "--budget-s", "0",
            "--kinds", "gemm"]
    assert bench.main(argv) == 0
    data, parsed = _load(tmp_path / "cpu-host-eval.json")
    assert parsed.cases == () and "skipped: time budget spent" in data["description"]


def test_median_time_counts_calls():
    calls = []
    t, samples = median_time(lambda: calls.append(1), "cpu", warmup=2, reps=5, min_sample_s=0.0)
    assert len(calls) == 2 + 1 + 5 and len(samples) == 5 and t >= 0  # warm-up, sizing call, samples


def test_run_gpu_script_is_valid_bash_and_refuses_without_outdir():
    script = REPO / "validation" / "run_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert subprocess.run(["bash", str(script)], capture_output=True).returncode != 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_quick_run(tmp_path):
    assert bench.main(["--device", "cuda", "--suite", "calib", "--quick", "--out", str(tmp_path),
                       "--hardware", "h200-sxm"]) == 0
    _load(tmp_path / "h200-sxm-calib.json")


def test_rounds_pool_samples_and_take_the_median():
    from validation.benchlib import make_case, merge_case

    into: dict = {}
    meta = {"device": "cpu"}
    merge_case(into, make_case("a", "gemm", "cpu-host", {}, 1.0, [1.0, 9.0, 1.0], meta))
    merge_case(into, make_case("a", "gemm", "cpu-host", {}, 5.0, [5.0, 6.0], meta))
    case = into["a"]
    assert case["measured"]["value"] == 5.0  # median of [1, 9, 1, 5, 6]
    assert case["notes"].startswith("median of 5 samples, min 1 s, max 9 s")


def test_bench_runs_without_moesim_or_its_dependencies(tmp_path):
    """run_gpu.sh's box has only torch and numpy: importing moesim, pydantic, simpy, numba or
    scipy from the bench must fail loudly, and a quick run must still succeed."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('moesim', 'pydantic', 'simpy', 'numba', 'scipy'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from validation import bench\n"
        f"sys.exit(bench.main(['--device', 'cpu', '--suite', 'calib', '--quick', '--kinds', 'gemm', '--out', {str(tmp_path)!r}]))\n"
    )
    import sys

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cpu-host-calib.json").is_file()
