"""Serving-mode planner speed: both modes on the default scenario, a large heterogeneous
disaggregated search, and its Dask split.

Targets (issue 15): the default scenario searching both modes over five accelerators answers in
<= 10 s including the DES checks; a >= 100,000-configuration heterogeneous search screens in
<= 60 s; the search splits across Dask workers with a measured 2-worker speed-up. Measured in one
run and reported as figures and ratios to the targets; nothing here is a pass/fail unit test.

What is measured (every run in a FRESH process: nothing memoized, routing engine cold; imports
before the clock):
- ``default_cli``: wall time of ``python -m moesim plan --json`` (both modes, DES checks of the
  co-located top 2 and of the disaggregated answer), twice, interpreter start included;
- ``hetero_search``: ``disagg_sweep.search`` over seven GPU profiles for each pool, heterogeneous
  pairs, decode replicas of 8-144 devices x TP/DP attention x 0-2 redundant slots per rank x 8
  batches, prefill replicas of 8-32 devices x 4 token budgets. A "configuration" is one
  (prefill layout, prefill budget, decode layout, decode batch) pair of the screened product;
  the search evaluates the prefill + decode pool configurations once each and screens the
  product by the pools' independence (moesim/planner/disagg_sweep.py);
- ``dask_split``: ``split_search`` on the same space with a local Dask cluster of 1 and 2 worker
  processes (one thread each; cluster start-up and the workers' imports outside the clock),
  alternating twice (the host's load drifts; best of each compared), speed-up = t1 / t2; the
  workers' CPU seconds (``worker_cpu_s``), and ``cpu_speedup_2_workers`` = the one worker's CPU
  over the busier of two workers' CPU: the wall speed-up two FREE cores would give; and once with
  2 worker threads in one process (``processes=False``: one GIL).

Measured (2026-12-03, before this round, load 3.9-4.9):
- default_cli: 12.2 s and 10.1 s wall, 7.1 s and 6.8 s CPU (7.0 s wall at a lower load earlier the
  same morning). Winner: disaggregated, $36.00/h (8 MI300X prefill + 16 MI300X decode,
  DES-verified) vs co-located $48.00/h (32 MI300X, DES-verified);
- hetero_search: 809,856 pair configurations (2,232 pool configurations evaluated) in 5.5 s cold;
- dask_split: 11.3 s with one worker, 10.7 s with two: speed-up 1.05.

Why the split gained 1.05x, and what changed (2026-12-03, this 2-core host shared with five other
sessions; load 2.4-8.0 during these runs, so every wall figure here carries that noise):
- no free core: with the host's two cores busy, a second worker process gets a core only when
  one is idle; the wall speed-up is bounded by the idle capacity, not by the split. The workers'
  CPU says what the split itself allows: one worker 11.5-16.0 CPU s, two workers 5.5 / 6.1 CPU s
  (busier one 6.1): 1.72-1.88 with free cores;
- serialisation is not it: scenario + model + prices pickle to 6.4 KB per task, all results to
  113-133 KB; they are now scattered to the workers once (``broadcast``) anyway;
- GIL: the benchmark already used processes; 2 threads in one process: 11.5 s vs 13.1 s for one
  worker process (1.14, within the noise of a loaded host; the search is pure Python + small numpy);
- chunks: 2 per worker cut by EP group left chunks of 26/26/26/36 prefill layouts (the big one
  1.8 CPU s, the others ~0.95), and the prefill phase waited for the slowest decode chunk. Now 4
  near-equal chunks per worker and phase and no barrier between the phases (prefill priced
  against every decode hardware, filtered after; the same answer, tests/test_disagg_sweep.py).
  Interleaved old/new runs at load 6.5-8.0 gave the same CPU balance (old 1.72-1.88, new
  1.67-1.76): on this host the chunking change could not be separated from the noise;
- a worker-resident PoolCosts shared by a worker's chunks was tried and dropped: a fresh one per
  chunk and a shared one cost the same CPU (the layer model's memo is per layout, and layouts do
  not repeat across chunks).
After (2026-12-03, load 2.4-4.0): hetero_search 11.7 s wall, 9.4 s CPU (0.20 of the 60 s target);
dask_split walls 13.1 / 21.6 s (1 worker), 18.0 / 12.0 s (2 workers): 1.10 best vs best;
cpu_speedup_2_workers 1.88; 2 threads 1.14. default_cli: see benchmarks/bench_planner.py.

Usage: PYTHONPATH=. python benchmarks/bench_disagg.py [--json] [--skip-default] [--skip-dask]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPUS = ["h100-sxm", "h200-sxm", "b200", "mi300x", "h800-sxm", "mi325x", "b300"]

SCENARIO = {
    "kind": "serving", "name": "hetero-100k", "model": "deepseek-v3", "hardware": GPUS, "max_devices": 4096,
    "modes": ["disaggregated"],
    # one stated price basis (moesim/prices.py): RunPod, TensorWave for the AMD parts it does not list
    "prices": {"basis": "runpod", "mix": {"mi300x": "tensorwave", "mi325x": "tensorwave"}},
    "workload": {"prompt_len": 2000, "output_len": 500, "target_output_tokens_per_s": 100000},
    "slo": {"tpot_s": 0.05, "ttft_s": 2.0},
    "search": {"tp": [1, 8], "attention_layouts": ["tp", "dp"]},
    "disaggregated": {"decode_devices_per_replica": [8, 16, 32, 64, 72, 144],
                      "prefill_devices_per_replica": [8, 16, 32],
                      "prefill_token_budget_per_rank": [2048, 4096, 8192, 16384],
                      "redundant_slots_per_rank": [0, 1, 2],
                      "decode_batch_per_device": [4, 8, 16, 32, 64, 128, 192, 256]},
    "verify": {"top_n": 0},
}

HETERO = """
import json, sys, time
from moesim.planner.disagg_sweep import search, split_search
from moesim.planner.plan import _facts, default_evaluator
from moesim.planner.scenario import scenario_from_dict, scenario_model
import moesim.des.serving, moesim.step, moesim.routing.api  # imports before the clock
sc = scenario_from_dict(json.loads(sys.argv[1]))
model = scenario_model(sc)
facts = _facts(sc, default_evaluator())
workers = int(sys.argv[2])
processes = sys.argv[3] == "processes" if len(sys.argv) > 3 else True
if workers == 0:
    t, c = time.perf_counter(), time.process_time()
    r = search(sc, model, facts)
    cpu_inline = time.process_time() - c
else:
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None)
    client = Client(cluster)
    client.run(lambda: __import__("moesim.planner.disagg_sweep") and __import__("moesim.des.serving"))  # imports
    cpu0 = client.run(time.process_time)
    t = time.perf_counter()
    r = split_search(sc, model, facts, client)
dt = time.perf_counter() - t
cpu = {} if workers else {"cpu_s": round(cpu_inline, 2)}
if workers:
    cpu1 = client.run(time.process_time)
    cpu = {"worker_cpu_s": sorted(round(cpu1[w] - cpu0[w], 2) for w in cpu1)} if processes else {}
print(json.dumps({"seconds": round(dt, 2), **cpu, "configurations": r.configurations,
                  "pool_configurations": r.pool_configurations, "configs_per_s": round(r.configurations / dt),
                  "best": r.best.key() if r.best else None, "usd_per_hour": r.best.usd_per_hour if r.best else None,
                  "heterogeneous": r.best.heterogeneous if r.best else None}))
if workers:
    client.close(); cluster.close()
"""


def _py(args: list[str], timeout: int = 900) -> tuple[float, str, float]:
    """(wall seconds, stdout, CPU seconds of the child: on a shared host wall time includes waiting
    for the cores; CPU time is what the run itself used)."""
    import resource

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, out.stdout, cpu


def default_cli() -> dict:
    runs = []
    for _ in range(2):
        dt, out, cpu = _py(["-m", "moesim", "plan", "--json"])
        data = json.loads(out)
        runs.append({"wall_s": round(dt, 2), "cpu_s": round(cpu, 2), "load_1min": round(os.getloadavg()[0], 2),
                     "winner": data["modes"]["winner"],
                     "colocated_usd_h": data["modes"]["colocated_usd_per_hour"],
                     "disaggregated_usd_h": data["modes"]["disaggregated_usd_per_hour"],
                     "disaggregated_verified": data["modes"]["disaggregated_verified"]})
    return {"runs": runs, "target_s": 10.0, "ratio_to_target": round(min(r["wall_s"] for r in runs) / 10.0, 2)}


def hetero(workers: int, processes: bool = True) -> dict:
    _, out, _ = _py(["-c", HETERO, json.dumps(SCENARIO), str(workers), "processes" if processes else "threads"])
    return {**json.loads(out.strip().splitlines()[-1]), "load_1min": round(os.getloadavg()[0], 2)}


def dask_split(inline_best: str, rounds: int = 2) -> dict:
    """1 and 2 worker processes, alternating ``rounds`` times (the host's load drifts between runs;
    the best of each is compared), and 2 worker threads in one process once (the GIL's share)."""
    runs = {1: [], 2: []}
    for _ in range(rounds):
        for w in (1, 2):
            runs[w].append(hetero(w))
    threads = hetero(2, processes=False)
    one, two = (min(runs[w], key=lambda r: r["seconds"]) for w in (1, 2))
    return {"one_worker": one, "two_workers": two, "two_threads": threads,
            "walls_s": {w: [r["seconds"] for r in runs[w]] for w in runs},
            "speedup_2_workers": round(one["seconds"] / two["seconds"], 2),
            # what two free cores would give: the one worker's CPU over the busier worker's
            "cpu_speedup_2_workers": round(one["worker_cpu_s"][-1] / two["worker_cpu_s"][-1], 2),
            "speedup_2_threads": round(one["seconds"] / threads["seconds"], 2),
            "same_answer": all(r["best"] == inline_best for rs in runs.values() for r in rs) and
            threads["best"] == inline_best}


def main(argv: list[str]) -> int:
    report: dict = {}
    if "--skip-default" not in argv:
        report["default_cli"] = default_cli()
    h = hetero(0)
    h["target_s"], h["ratio_to_target"] = 60.0, round(h["seconds"] / 60.0, 3)
    report["hetero_search"] = h
    if "--skip-dask" not in argv:
        report["dask_split"] = dask_split(h["best"])
    if "--json" in argv:
        print(json.dumps(report, indent=1))
    else:
        for k, v in report.items():
            print(f"{k}: {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
