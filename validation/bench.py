"""Micro-benchmarks that write ``moesim-cases/1`` files: GEMM, grouped GEMM, MoE layer, all-to-all.

``python -m validation.bench --device cpu --suite calib|eval|all --out DIR [--quick]``

Two disjoint shape sets per device profile: ``calib`` (fit a hardware profile on it) and
``eval`` (judge the fitted profile on it); they differ in m/n/k and in MoE dimensions, not
just in seeds (tests assert the disjointness). Kinds and inputs follow docs/cases.md:
- ``gemm``: ``y = a @ b`` with a (m x k), b (k x n); fp8 via ``torch._scaled_mm`` (GPU).
- ``grouped_gemm``: one ``torch._grouped_mm`` (``bmm`` over zero-padded groups where it does not
  run: ``inputs.impl`` says which) of sorted rows ``m_per_group`` with E weights k x n; the
  per-expert counts come from a random router on random activations (seeded).
- ``moe_layer``: the MoE block of validation/torch_moe.py (router + routed SwiGLU experts +
  shared experts; no attention, no norms: ``inputs.scope = "moe_block"``), one rank, dropless,
  grouped execution; ``inputs.model`` gives the dims inline and ``m_per_expert`` the counts.
- ``all_to_all``: gloo ``all_to_all_single`` of the dispatch (or combine) payload between R
  processes on this host; one copy per (token, expert) pair (``dedup = "none"``); the measured
  time of a repetition is the slowest rank's; ``inputs.traffic_RR`` is the copies matrix.
Every suite runs in try/except: a failure is recorded in the file's description and the run goes
on; ``--budget-s`` skips the remaining suites once spent. On CPU each entry is measured in 3
rounds that alternate calib and eval entries (samples pooled, median taken), so drifting
background load on the shared host does not separate the two sets. No moesim import (runs on a bare GPU box).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
import traceback
from pathlib import Path

import torch

from validation import bench_suites as S
from validation.benchlib import DTYPES, make_case, median_time, merge_case, metadata, write_cases
from validation.torch_moe import MoEBlock, MoEConfig, _ok_grouped
from validation.torch_router import Router


def _rand(shape, dtype, device, seed):
    """Seeded standard normals made on ``device`` (big GPU weights never pass through the CPU)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)


def _gemm_fn(m, n, k, dtype, device):
    if dtype == "fp8":
        a = _rand((m, k), torch.float32, device, 1).to(torch.float8_e4m3fn)
        b = _rand((n, k), torch.float32, device, 2).to(torch.float8_e4m3fn).t()  # column-major k x n
        one = torch.ones((), device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    a, b = _rand((m, k), DTYPES[dtype], device, 1), _rand((k, n), DTYPES[dtype], device, 2)
    return lambda: a @ b


def bench_gemm(ctx, shapes, dtype):
    cases = []
    for m, n, k in shapes:
        t, samples = median_time(_gemm_fn(m, n, k, dtype, ctx.device), ctx.device, ctx.warmup, ctx.reps)
        flops = 2 * m * n * k
        cases.append(make_case(f"{ctx.prefix}-gemm-{dtype}-{m}x{n}x{k}", "gemm", ctx.hardware,
                               {"m": m, "n": n, "k": k, "dtype": dtype}, t, samples, ctx.meta,
                               f"{flops / t / 1e12:.3g} TFLOP/s achieved."))
    return cases


def routed_counts(T, E, K, D, seed, device="cpu") -> torch.Tensor:
    """Per-expert copies from a random softmax top-K router on random activations (seeded)."""
    cfg = MoEConfig(hidden=D, expert_ffn=1, num_experts=E, top_k=K, seed=seed)
    torch.manual_seed(seed)
    router = Router(cfg)
    with torch.no_grad():
        return router(_rand((T, D), torch.float32, "cpu", seed)).counts_E.to(device)


def bench_grouped(ctx, specs, dtype):
    cases = []
    for T, E, K, k_dim, n_dim in specs:
        counts_E = routed_counts(T, E, K, k_dim, seed=T + E)
        x = _rand((int(counts_E.sum()), k_dim), DTYPES[dtype], ctx.device, 3)
        w = _rand((E, k_dim, n_dim), DTYPES[dtype], ctx.device, 4)
        counts_dev = counts_E.to(ctx.device)
        offs = torch.cumsum(counts_dev, 0).to(torch.int32)
        impl = "grouped_mm"
        try:
            torch._grouped_mm(x, w, offs=offs)
            fn = lambda: torch._grouped_mm(x, w, offs=offs)  # noqa: E731
        except (RuntimeError, AttributeError, NotImplementedError):
            impl = "bmm"
            C = int(counts_E.max())
            xp = torch.zeros(E, C, k_dim, dtype=x.dtype, device=ctx.device)
            fn = lambda: torch.bmm(xp, w)  # noqa: E731
        t, samples = median_time(fn, ctx.device, ctx.warmup, ctx.reps)
        m = counts_E.tolist()
        inputs = {"m_per_group": m, "groups": E, "n": n_dim, "k": k_dim, "dtype": dtype, "layout": "contiguous",
                  "impl": impl, "routing": f"random softmax top-{K} router, {T} tokens, seed {T + E}"}
        cases.append(make_case(f"{ctx.prefix}-grouped-{dtype}-T{T}E{E}K{K}-{k_dim}x{n_dim}", "grouped_gemm",
                               ctx.hardware, inputs, t, samples, ctx.meta,
                               f"one projection (k -> n) over {sum(m)} rows; impl {impl}."))
    return cases


def _moe_inputs(cfg: MoEConfig, T, dtype, phase, counts_E, impl):
    model = {"hidden": cfg.hidden, "expert_ffn": cfg.expert_ffn, "num_experts": cfg.num_experts,
             "top_k": cfg.top_k, "num_shared_experts": cfg.num_shared_experts,
             "shared_expert_ffn": cfg.shared_expert_ffn, "router_scoring": cfg.router_scoring,
             "n_groups": cfg.n_groups, "topk_groups": cfg.topk_groups}
    return {"model": model, "ranks": 1, "ranks_per_node": 1, "tokens_per_rank": T, "dtype": dtype,
            "phase": phase, "scope": "moe_block", "m_per_expert": counts_E, "impl": impl,
            "capacity_factor": None, "not_applicable": ["capacity_factor"]}


def bench_moe_layer(ctx, specs, dtype):
    cases = []
    for name, dims, T in specs:
        cfg = MoEConfig(**dims, seed=7)
        with torch.device(ctx.device):
            block = MoEBlock(cfg, impl="grouped", dtype=DTYPES[dtype])
        block.record = False
        x = _rand((T, cfg.hidden), DTYPES[dtype], ctx.device, 5).requires_grad_(True)
        with torch.no_grad():
            counts = block.router(x).counts_E.tolist()
        impl = "grouped_mm" if _grouped_runs(ctx.device, DTYPES[dtype]) else "bmm"
        grad = _rand((T, cfg.hidden), DTYPES[dtype], ctx.device, 6)
        phases = {"forward": lambda: block(x), "forward_backward": lambda: block(x).backward(grad)}
        for phase, fn in phases.items():
            if phase == "forward":
                with torch.no_grad():
                    t, samples = median_time(fn, ctx.device, ctx.warmup, ctx.reps)
            else:
                t, samples = median_time(fn, ctx.device, ctx.warmup, ctx.reps)
            cases.append(make_case(f"{ctx.prefix}-moe-{name}-{dtype}-T{T}-{phase}", "moe_layer", ctx.hardware,
                                   _moe_inputs(cfg, T, dtype, phase, counts, impl), t, samples, ctx.meta,
                                   "MoE block only (router, routed experts, shared experts); forward under no_grad."))
        del block, x
    return cases


def _grouped_runs(device, dtype) -> bool:
    return _ok_grouped(torch.device(device), dtype)


def bench_all_to_all(ctx, specs):
    from validation.bench_a2a import run_a2a
    cases = []
    for R, T, D, K, E in specs:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_a2a(R, T, D, K, E, ctx.warmup, ctx.reps, Path(tmp))
        for op in ("dispatch", "combine"):
            inputs = {"op": op, "ranks": R, "ranks_per_node": R, "tokens_per_rank": T, "hidden": D, "top_k": K,
                      "num_experts": E, "bytes_per_token": D * 4, "mode": "normal", "dedup": "none",
                      "routing": "uniform", "dtype": "fp32", "backend": "gloo", "traffic_RR": res["traffic_RR"]}
            cases.append(make_case(f"{ctx.prefix}-a2a-{op}-R{R}-T{T}-D{D}-K{K}-E{E}", "all_to_all", ctx.hardware,
                                   inputs, res[op], res[op + "_samples"], ctx.meta,
                                   f"gloo, {R} processes on one host, 1 torch thread each; routing from a random "
                                   "softmax router on random data (near uniform); traffic_RR[i][j] = copies i -> j."))
    return cases


class Ctx:
    """Where and how one suite runs (device, profile name, case-id prefix, repetitions, metadata)."""

    def __init__(self, device, hardware, prefix, warmup, reps, meta):
        self.device, self.hardware, self.prefix = device, hardware, prefix
        self.warmup, self.reps, self.meta = warmup, reps, meta
        self.threads: int | None = None


def run_entry(ctx, key, specs, log=print):
    """Run one (kind, dtype) entry of a suite table; returns (cases, failure or None).

    A failure (any exception) is returned as {"suite", "error"} for the file's description and
    the caller goes on with the next entry.
    """
    runners = {"gemm": bench_gemm, "grouped_gemm": bench_grouped, "moe_layer": bench_moe_layer}
    kind, dtype = key
    label, t0 = f"{kind}/{dtype}", time.monotonic()
    try:
        got = bench_all_to_all(ctx, specs) if kind == "all_to_all" else runners[kind](ctx, specs, dtype)
        if ctx.threads is not None and kind != "all_to_all":  # gloo ranks run 1 thread each
            for case in got:
                case["inputs"]["cpu_threads"] = ctx.threads
        log(f"{ctx.prefix} {label}: {len(got)} cases in {time.monotonic() - t0:.1f}s")
        return got, None
    except Exception as err:  # noqa: BLE001 - a failing suite is recorded, the rest still run
        log(f"{ctx.prefix} {label}: FAILED {err}\n{traceback.format_exc(limit=3)}")
        return [], {"suite": label, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    finally:
        if ctx.device == "cuda":
            torch.cuda.empty_cache()


def run_interleaved(ctxs: dict, tables: dict, rounds: int, deadline: float, save) -> tuple[dict, dict]:
    """Measure every entry ``rounds`` times, alternating the suites entry by entry.

    NOTE: on a shared host the background load drifts over minutes; interleaving calib and eval
    (and pooling the samples of all rounds) keeps that drift from becoming a systematic
    difference between the two sets. ``save(cases, failures)`` runs after every entry.
    """
    keys = list(dict.fromkeys(k for table in tables.values() for k in table))
    cases = {suite: {} for suite in tables}
    failures = {suite: {} for suite in tables}
    for key in keys:
        for _ in range(rounds):
            for suite, table in tables.items():
                if key not in table:
                    continue
                if time.monotonic() > deadline:
                    failures[suite].setdefault(key, {"suite": f"{key[0]}/{key[1]}", "error": "skipped: time budget spent"})
                    continue
                got, failure = run_entry(ctxs[suite], key, table[key])
                if failure:
                    failures[suite].setdefault(key, failure)
                for case in got:
                    merge_case(cases[suite], case)
        save({s: list(c.values()) for s, c in cases.items()}, {s: list(f.values()) for s, f in failures.items()})
    return cases, failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--suite", choices=["calib", "eval", "all"], default="all")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1 warm-up, 2 reps, 1 round (tests)")
    p.add_argument("--profile", choices=["cpu", "gpu"], default=None, help="shape tables (default: by device)")
    p.add_argument("--hardware", default=None, help="profile name written into cases (cpu-host, h200-sxm, ...)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (recorded in every case as inputs.cpu_threads)")
    p.add_argument("--budget-s", type=float, default=math.inf, help="skip remaining suites after this")
    p.add_argument("--reps", type=int, default=None, help="timed samples per round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (samples pooled)")
    p.add_argument("--kinds", default=None, help="comma-separated kinds to run (default: all)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    profile = args.profile or ("gpu" if args.device == "cuda" else "cpu")
    hardware = args.hardware or S.default_hardware(args.device)
    deadline = time.monotonic() + args.budget_s
    meta = metadata(args.device)
    cpu = args.device == "cpu"
    warmup, reps = (1, 2) if args.quick else (2, args.reps or (5 if cpu else 20))
    rounds = 1 if args.quick else args.rounds or (3 if cpu else 1)
    suites = ["calib", "eval"] if args.suite == "all" else [args.suite]
    tables, ctxs, paths = {}, {}, {}
    for suite in suites:
        table = S.table(profile, suite, quick=args.quick)
        tables[suite] = {k: v for k, v in table.items() if not args.kinds or k[0] in args.kinds.split(",")}
        ctxs[suite] = Ctx(args.device, hardware, f"{hardware}-{suite}", warmup, reps, meta)
        ctxs[suite].threads = args.threads if cpu else None
        paths[suite] = (args.out / f"{hardware}-{suite}.json", S.description(profile, suite, args.quick, hardware, rounds, reps))

    def save(cases, failures):
        for suite, (path, text) in paths.items():
            write_cases(path, text, cases[suite], meta, failures[suite])

    cases, failures = run_interleaved(ctxs, tables, rounds, deadline, save)
    save({s: list(c.values()) for s, c in cases.items()}, {s: list(f.values()) for s, f in failures.items()})
    for suite, (path, _) in paths.items():
        print(f"wrote {len(cases[suite])} cases ({len(failures[suite])} entries failed/skipped) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
