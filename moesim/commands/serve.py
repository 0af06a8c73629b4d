"""``moesim serve``: request-level serving simulation (TTFT/TPOT/end-to-end percentiles, goodput).

``moesim serve SCENARIO.toml --json`` runs a scenario file (schema: moesim.des.serving.scenario);
without a file, quick flags describe one (``--model --hw --devices --rate --duration
--prompt-len --output-len --slo-ttft --slo-tpot``; ``--mode disaggregated`` with
``--prefill-devices`` and ``--decode-devices``). Flags given with a file override its values.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from moesim.catalog import build, read_toml, resolve_file_names
from moesim.cli import Result, add_json_flag, add_limit_flag, check_work
from moesim.errors import MoesimError
from moesim.safeio import Outputs
from moesim.textfmt import kv, si, table

ORDER = 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="simulate online serving: latency percentiles, throughput, goodput")
    p.add_argument("scenario", nargs="?", help="scenario TOML (see examples/serve_deepseek_v3.toml)")
    p.add_argument("--model", help="model preset name or TOML path")
    p.add_argument("--hw", help="hardware profile name or TOML path")
    p.add_argument("--mode", choices=["colocated", "disaggregated"])
    p.add_argument("--devices", type=int, help="colocated: devices per replica")
    p.add_argument("--replicas", type=int, help="colocated: replicas behind the balancer")
    p.add_argument("--prefill-devices", type=int, help="disaggregated: devices of the prefill replica")
    p.add_argument("--decode-devices", type=int, help="disaggregated: devices of the decode replica")
    p.add_argument("--devices-per-node", type=int, help="devices per scale-up domain (default: the profile's)")
    p.add_argument("--ep", type=int, help="expert parallel size (default: devices per replica)")
    p.add_argument("--tp", type=int, help="tensor parallel attention (with --attention tp)")
    p.add_argument("--attention", choices=["dp", "tp"], help="attention layout (default dp)")
    p.add_argument("--rate", type=float, help="requests per second (Poisson unless --cv)")
    p.add_argument("--cv", type=float, help="gamma arrivals with this inter-arrival CV (bursty > 1)")
    p.add_argument("--duration", type=float, help="seconds of arrivals")
    p.add_argument("--warmup", type=float, help="seconds excluded from the metrics")
    p.add_argument("--prompt-len", type=float, help="prompt tokens (mean with --length-sigma)")
    p.add_argument("--output-len", type=float, help="output tokens (mean with --length-sigma)")
    p.add_argument("--length-sigma", type=float, help="lognormal lengths with this sigma")
    p.add_argument("--token-budget", type=int, help="tokens per iteration")
    p.add_argument("--max-seqs", type=int, help="sequences in flight per replica")
    p.add_argument("--balancer", choices=["round_robin", "least_loaded"])
    p.add_argument("--slo-ttft", type=float, help="SLO on TTFT, seconds")
    p.add_argument("--slo-tpot", type=float, help="SLO on TPOT, seconds")
    p.add_argument("--slo-percentile", type=float, help="percentile the SLO applies to (default 99)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-rate", action="store_true", help="also search the largest rate meeting the SLO")
    p.add_argument("--trace", help="write a Chrome trace (Perfetto) JSON of the iterations here")
    p.add_argument("--csv", help="write one CSV row per request here")
    p.add_argument("--timeseries-csv", help="write KV utilization and queue length over time here")
    add_limit_flag(p)
    add_json_flag(p)
    p.set_defaults(handler=serve_cmd)


def _set(d: dict, path: str, value) -> None:
    if value is None:
        return
    *heads, last = path.split(".")
    for h in heads:
        d = d.setdefault(h, {})
    d[last] = value


def _scenario_data(args) -> tuple[dict, Path, str]:
    if args.scenario:
        data = resolve_file_names(read_toml(args.scenario), args.scenario)
        base, source = Path(args.scenario).resolve().parent, args.scenario
    else:
        missing = [f for f, v in (("--model", args.model), ("--hw", args.hw), ("--rate", args.rate),
                                  ("--prompt-len", args.prompt_len), ("--output-len", args.output_len)) if v is None]
        if missing:
            raise MoesimError(f"serve: give a scenario file or {', '.join(missing)}")
        data, base, source = {"arrivals": {}, "prompt": {}, "output": {}}, Path.cwd(), "flags"
        if (args.mode or "colocated") == "colocated" and args.devices is None:
            raise MoesimError("serve: --devices is needed (devices per replica)")
    mode = args.mode or data.get("mode", "colocated")
    for key, value in (("model", args.model), ("hardware", args.hw), ("mode", args.mode), ("seed", args.seed),
                       ("duration_s", args.duration), ("warmup_s", args.warmup), ("balancer", args.balancer),
                       ("arrivals.rate_per_s", args.rate), ("arrivals.cv", args.cv),
                       ("prompt.mean_tokens", args.prompt_len), ("output.mean_tokens", args.output_len),
                       ("slo.ttft_s", args.slo_ttft), ("slo.tpot_s", args.slo_tpot),
                       ("slo.percentile", args.slo_percentile)):
        _set(data, key, value)
    if args.cv is not None:
        _set(data, "arrivals.kind", "gamma")
    if args.length_sigma is not None:
        for t in ("prompt", "output"):
            _set(data, f"{t}.kind", "lognormal")
            _set(data, f"{t}.sigma", args.length_sigma)
    pools = {"colocated": [("replica", args.devices)],
             "disaggregated": [("prefill", args.prefill_devices), ("decode", args.decode_devices)]}.get(mode, [])
    for name, devices in pools:
        for key, value in (("devices_per_replica", devices), ("devices_per_node", args.devices_per_node),
                           ("ep", args.ep), ("tp", args.tp), ("attention", args.attention),
                           ("token_budget_tokens", args.token_budget), ("max_seqs", args.max_seqs)):
            _set(data, f"{name}.{key}", value)
        if name == "replica":
            _set(data, "replica.replicas", args.replicas)
    return data, base, source


def serve_cmd(args) -> Result:
    from moesim.des.serving.scenario import ServeScenario, build_system, run_scenario

    with Outputs() as outputs:
        for flag, path in (("--trace", args.trace), ("--csv", args.csv), ("--timeseries-csv", args.timeseries_csv)):
            if path:
                outputs.check(path, flag)  # before minutes of simulation, not after
        data, base, source = _scenario_data(args)
        scn = build(ServeScenario, data, source)
        _check_size(args, scn)
        system = build_system(scn)
        from moesim.progress import wanted

        res = run_scenario(scn, base, keep_spans=bool(args.trace), system=system, progress=wanted(args))
        out = res.to_dict(timeseries=bool(args.timeseries_csv))
        out["scenario"] = scn.to_dict()
        files = []
        if args.max_rate:
            from moesim.des.serving.capacity import max_sustainable_rate

            if scn.slo is None:
                raise MoesimError("serve --max-rate: the scenario needs an SLO ([slo] or --slo-ttft/--slo-tpot)")
            search = max_sustainable_rate(system, scn.prompt.dist(), scn.output.dist(), scn.slo,
                                          duration_s=min(scn.duration_s, 600.0), seed=scn.seed,
                                          start_rate_per_s=scn.arrivals.rate_per_s or 1.0)
            out["max_sustainable_rate"] = search.to_dict()
        if args.trace:
            from moesim.des.trace import write_chrome_trace

            write_chrome_trace(res.spans, outputs.path(args.trace, "--trace"), {"moesim": "serve", "mode": res.mode})
            files.append(args.trace)
        if args.csv:
            outputs.path(args.csv, "--csv").write_text(res.requests_csv())
            files.append(args.csv)
        if args.timeseries_csv:
            outputs.path(args.timeseries_csv, "--timeseries-csv").write_text(res.timeseries_csv())
            files.append(args.timeseries_csv)
        return Result(out, _text(res, out), files=tuple(files))  # rendered before the outputs are committed


MAX_REQUESTS = 5e5  # simulated requests: about two minutes (measured: 12,193 overloaded requests in 3 s)


def _check_size(args, scn) -> None:
    """Estimate the simulated requests first and refuse absurd runs (``--allow-long`` overrides)."""
    a = scn.arrivals
    if a.kind != "trace" and a.rate_per_s is not None:
        check_work(args, "serve", a.rate_per_s * scn.duration_s, MAX_REQUESTS, "simulated requests")


def _ms(x: float) -> str:
    """Milliseconds with one decimal; nan/inf (no finished request to measure) -> '-'."""
    return f"{x * 1e3:.1f}" if math.isfinite(x) else "-"


def _text(res, out: dict) -> str:
    from moesim.des.serving.metrics import backlog_grows

    rows = []
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        s = getattr(res, name)
        ci = s.p99_ci95
        rows.append((name.removesuffix("_s"), *(_ms(x) for x in (s.mean, s.p50, s.p90, s.p99)),
                     "-" if not math.isfinite(ci) else f"+-{ci * 1e3:.1f}"))
    lines = [f"serving simulation ({res.mode}, {res.devices} devices, {res.requests} requests)", "",
             table(rows, ["latency", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99 95% CI ms"]), ""]
    pairs = [("output tokens/s", f"{si(res.output_tokens_per_s)} ({si(res.output_tokens_per_s_per_device)} per device)"),
             ("input tokens/s", f"{si(res.input_tokens_per_s)} ({si(res.input_tokens_per_s_per_device)} per device)"),
             ("completed", f"{res.completed} (unfinished {res.unfinished}, rejected {res.rejected}, "
                           f"preemptions {res.preemptions})")]
    if res.unfinished and res.unfinished >= res.completed:
        pairs.append(("overloaded", f"{res.unfinished} of {res.requests} requests had not finished when the "
                                    "simulation ended (the load is more than the deployment serves); '-' = no "
                                    "finished request to measure"))
    b = res.backlog
    grows = backlog_grows(b["growth"], b["arrivals_between"])
    pairs.append(("waiting to decode", f"mean {b['early']:.3g} -> {b['late']:.3g} requests (second -> last "
                  "quarter of the window)" + ("; growing: the deployment does not keep up with the load" if grows
                                              else "")))
    if res.goodput is not None:
        g = res.goodput
        pairs.append(("goodput", f"{g.goodput_requests_per_s:.3g} req/s meeting the SLO "
                                 f"(attainment {g.attainment:.1%}, SLO {'met' if g.slo_met else 'missed'})"))
    if "max_sustainable_rate" in out:
        m = out["max_sustainable_rate"]
        pairs.append(("max sustainable rate", f"{m['max_sustainable_rate_per_s']:.3g} req/s (within {m['rel_tol']:.0%})"))
    for pool, u in res.kv_utilization.items():
        pairs.append((f"KV utilization {pool}", f"mean {u['mean']:.1%}, max {u['max']:.1%}"))
    return "\n".join(lines) + kv(pairs)
