"""``moesim step``: one training step or inference iteration, analytic or simulated (DES)."""
from __future__ import annotations

import argparse

from moesim.catalog import build, load_model, load_profile
from moesim.cli import Result, add_json_flag, add_limit_flag, check_work
from moesim.errors import SpecError
from moesim.safeio import Outputs
from moesim.specs import Cluster, Parallelism, RoutingSpec
from moesim.textfmt import kv

ORDER = 30


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("step", help="time of one training step or prefill/decode iteration")
    p.add_argument("--model", required=True, help="model preset name or TOML path")
    p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--devices-per-node", type=int, help="devices per scale-up domain (default: the profile's)")
    for name, helptext in (("tp", "tensor parallel"), ("pp", "pipeline stages"), ("vpp", "virtual stages"),
                           ("ep", "expert parallel"), ("cp", "context parallel"), ("etp", "expert TP")):
        p.add_argument(f"--{name}", type=int, default=1, help=helptext)
    p.add_argument("--redundant-experts", type=int, default=0, help="extra expert slots (EPLB)")
    p.add_argument("--attention", choices=["tp", "dp"], default="tp", help="attention layout (serving)")
    p.add_argument("--phase", choices=["decode", "prefill", "train"], required=True)
    p.add_argument("--batch-per-device", type=int, default=64, help="decode: sequences per device")
    p.add_argument("--context", type=int, default=4096, help="decode: KV tokens per sequence")
    p.add_argument("--prompt-len", type=int, default=4096, help="prefill: tokens per prompt")
    p.add_argument("--prompts-per-device", type=float, default=4.0, help="prefill: prompts per device")
    p.add_argument("--global-batch", type=int, default=1024, help="train: sequences per step")
    p.add_argument("--seq-len", type=int, default=4096, help="train: tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    p.add_argument("--dtype", default="bf16", help="GEMM dtype")
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--overlap", choices=["none", "two_microbatch"], default="none")
    p.add_argument("--a2a-mode", choices=["auto", "normal", "low_latency"], default="auto")
    p.add_argument("--skew", default="uniform", help="uniform | balanced | zipf:S | dirichlet:A | explicit:p,...")
    p.add_argument("--engine", choices=["analytic", "des"], default="analytic")
    p.add_argument("--steps", type=int, default=20, help="des: iterations to simulate")
    p.add_argument("--seed", type=int, default=0, help="des: routing seed")
    p.add_argument("--trace", help="des: write a Chrome trace (Perfetto) JSON here (.json.gz: gzip-compressed)")
    p.add_argument("--trace-ranks", metavar="R,R,...", help="des: keep only these ranks' tracks in the trace")
    p.add_argument("--no-memory-check", action="store_true", help="time it even if it does not fit")
    add_limit_flag(p)
    add_json_flag(p)
    p.set_defaults(handler=step_cmd)


def _specs(args):
    if args.devices <= 0:
        raise SpecError("--devices", args.devices, "must be positive")
    inner = args.tp * args.cp * args.pp
    if inner <= 0 or args.devices % inner:
        raise SpecError("--devices", args.devices, f"must be a multiple of tp x cp x pp = {inner}")
    cluster = build(Cluster, {"hardware": load_profile(args.hw).name, "devices": args.devices,
                              "devices_per_domain": args.devices_per_node}, "cluster")
    par = build(Parallelism, {"tp": args.tp, "pp": args.pp, "vpp": args.vpp, "cp": args.cp, "ep": args.ep,
                              "etp": args.etp, "dp": args.devices // inner,
                              "redundant_experts": args.redundant_experts,
                              "attention_layout": args.attention}, "parallelism")
    routing = build(RoutingSpec, {"skew": args.skew}, "routing")
    return cluster, par, routing


def _analytic(args, model, hw, cluster, par, routing):
    from moesim.step import decode_iteration, prefill_iteration, training_step

    common = dict(dtype=args.dtype, routing=routing, overlap=args.overlap,
                  check_memory=not args.no_memory_check)
    if args.phase == "train":
        return training_step(model, hw, cluster, par, global_batch=args.global_batch, seq_len=args.seq_len,
                             micro_batch=args.micro_batch, recompute=args.recompute, **common)
    serve = dict(common, kv_dtype=args.kv_dtype, a2a_mode=args.a2a_mode)
    if args.phase == "decode":
        return decode_iteration(model, hw, cluster, par, batch_per_device=args.batch_per_device,
                                context=args.context, **serve)
    return prefill_iteration(model, hw, cluster, par, prompt_len=args.prompt_len,
                             prompts_per_device=args.prompts_per_device, **serve)


def _des(args, model, hw, cluster, par, routing, analytic, outputs: Outputs) -> dict:
    from moesim.des.layer import simulate_layers
    from moesim.des.trace import write_chrome_trace
    from moesim.step.common import stage_layers
    from moesim.step.layer import make_setup

    if args.phase == "train":
        raise SpecError("--engine", "des", "the layer DES simulates prefill and decode iterations")
    setup = make_setup(model, hw, dtype=args.dtype, phase=args.phase, attention_tp=par.tp, cp=par.cp,
                       ep=par.ep, redundant_experts=par.redundant_experts,
                       ranks_per_node=cluster.domain_size(hw), skew=routing.skew, a2a_mode=args.a2a_mode,
                       kv_dtype=args.kv_dtype)
    decode = args.phase == "decode"
    tokens = args.batch_per_device if decode else args.prompt_len * args.prompts_per_device
    context = args.context if decode else (args.prompt_len + 1) / 2
    layers = list(stage_layers(model, par.pp)[-1])
    check_work(args, "step --engine des", float(args.steps) * len(layers) * par.ep, MAX_DES_WORK,
               "rank-layer steps (steps x layers x EP ranks)")
    res = simulate_layers(setup, layers=layers, tokens=tokens, context=context, overlap=args.overlap,
                          steps=args.steps, seed=args.seed, head_s=analytic.embedding_head_s,
                          record=bool(args.trace))
    out = res.to_dict()
    out["tokens_per_s_per_device"] = tokens / (res.mean_step_s * par.pp)
    out["analytic_step_time_s"] = analytic.step_time_s
    if args.trace:
        ranks = None
        if args.trace_ranks:
            try:
                ranks = [f"rank {int(r)}" for r in args.trace_ranks.split(",") if r.strip()]
            except ValueError:
                raise SpecError("--trace-ranks", args.trace_ranks, "a comma list of rank numbers, e.g. 0,3") from None
        write_chrome_trace(res.spans, outputs.path(args.trace, "--trace"),
                           {"model": model.name, "hw": hw.name, "phase": args.phase}, processes=ranks)
        out["trace"] = args.trace
    return out


MAX_DES_WORK = 1e6  # rank-layer steps: about 40 s (measured: 200 steps x 61 layers x EP 16 in 8 s)


def step_cmd(args) -> Result:
    for flag in ("steps", "batch_per_device", "context", "prompt_len", "global_batch", "seq_len", "micro_batch"):
        if getattr(args, flag) <= 0:
            raise SpecError(f"--{flag.replace('_', '-')}", getattr(args, flag), "must be positive")
    if not args.prompts_per_device > 0:
        raise SpecError("--prompts-per-device", args.prompts_per_device, "must be > 0")
    with Outputs() as outputs:
        if args.trace:
            if args.engine != "des":
                raise SpecError("--trace", args.trace, "needs --engine des (the analytic step has no timeline)")
            outputs.check(args.trace, "--trace")
        return _step(args, outputs)


def _step(args, outputs: Outputs) -> Result:
    model = load_model(args.model)
    hw = load_profile(args.hw)
    cluster, par, routing = _specs(args)
    b = _analytic(args, model, hw, cluster, par, routing)
    data = {"model": model.name, "hw": hw.name, "devices": args.devices, "engine": args.engine,
            "parallelism": par.to_dict(), **b.to_dict()}
    pairs = [("step time", f"{b.step_time_s * 1e3:.3f} ms"),
             ("tokens/s/device", f"{b.tokens_per_s_per_device:,.1f}"),
             ("model TFLOPS/device", f"{b.model_tflops_per_device:.1f} (MFU {b.mfu:.1%})"),
             ("bottleneck", b.bottleneck),
             ("exposed comm", f"{b.exposed_comm_s * 1e3:.3f} ms"),
             ("memory", f"{b.memory_GiB:.1f} / {b.memory_capacity_GiB:.1f} GiB")]
    pairs += [(k.removesuffix("_s"), f"{v * 1e3:.3f} ms") for k, v in b.components().items() if v > 0]
    files: tuple[str, ...] = ()
    if args.engine == "des":
        des = _des(args, model, hw, cluster, par, routing, b, outputs)
        data["des"] = des
        data["step_time_s"] = des["mean_step_s"] * par.pp
        data["tokens_per_s_per_device"] = des["tokens_per_s_per_device"]
        pairs.insert(0, ("DES mean step", f"{des['mean_step_s'] * par.pp * 1e3:.3f} ms over {des['steps']} steps "
                                          f"(p99 {des['p99_step_s'] * par.pp * 1e3:.3f} ms)"))
        if args.trace:
            files = (args.trace,)
            pairs.append(("trace", args.trace))
    title = f"{model.name} on {args.devices} x {hw.name}, {args.phase}, {args.engine}"
    return Result(data, title + "\n\n" + kv(pairs), files=files)
