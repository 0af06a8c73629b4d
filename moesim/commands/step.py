"""``moesim step``: one training step or inference iteration, analytic or simulated (DES)."""
from __future__ import annotations

import argparse
from typing import get_args

from moesim.catalog import build, load_model, load_profile
from moesim.cli import Result, add_json_flag, add_limit_flag, add_training_recipe_flags, check_work
from moesim.errors import SpecError
from moesim.safeio import Outputs
from moesim.specs import Deployment, RoutingSpec
from moesim.specs.deployment import Sharding
from moesim.specs.software_stack import STACK_NAMES
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
    add_training_recipe_flags(p)
    p.add_argument("--pipeline-layout", default=None, metavar="LAYOUT",
                   help="train: Megatron --pipeline-model-parallel-layout placing layers on the pp x vpp virtual "
                        "stages (E t m L, '|' between stages, '*n' repeats), e.g. 'Et|(tt|)*30L'; default: ceil split")
    p.add_argument("--sharding", choices=list(get_args(Sharding)), default=None,
                   help="train: what the data-parallel group shards (ddp, zero1 = distributed optimizer, fsdp = "
                        "weights and gradients too); default: zero1 (Deployment.sharding)")
    p.add_argument("--dtype", default="bf16", help="GEMM dtype")
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--attention-dtype", default=None,
                   help="attention projections and core precision when it differs from --dtype (e.g. bf16 "
                        "attention with fp8 MoE); default: --dtype for the projections, bf16 for the core")
    p.add_argument("--overlap", choices=["none", "two_microbatch"], default="none")
    p.add_argument("--a2a-mode", choices=["auto", "normal", "low_latency"], default="auto")
    p.add_argument("--comm-sms", type=int, help="SMs of the normal all-to-all kernels (default: DeepEP's)")
    p.add_argument("--capacity-factor", type=float, help="expert capacity over the mean load (default: dropless)")
    p.add_argument("--overflow", choices=["drop", "reroute", "shared"], default="drop",
                   help="what happens to a token copy whose expert is full")
    p.add_argument("--stack", choices=list(STACK_NAMES), default="auto",
                   help="software stack issuing the operators (moesim/data/stacks.toml; auto: train -> megatron, "
                        "prefill/decode -> sglang)")
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


def _specs(args, hw):
    """(Deployment, workload) of the command line; MoesimError naming the field."""
    from moesim.step import Decode, Prefill, Training

    if args.devices <= 0:
        raise SpecError("--devices", args.devices, "must be positive")
    if args.sharding is not None and args.phase != "train":
        raise SpecError("--sharding", args.sharding, "applies to --phase train only (data-parallel sharding of "
                        f"training state; allowed: {', '.join(get_args(Sharding))})")
    for flag, value in (("--pipeline-layout", args.pipeline_layout), ("--mtp-layers", args.mtp_layers)):
        if value is not None and args.phase != "train":
            raise SpecError(flag, value, "applies to --phase train only")
    if args.attention_dtype is not None:
        from moesim.specs.common import canonical_dtype

        canonical_dtype(args.attention_dtype, "--attention-dtype")
    inner = args.tp * args.cp * args.pp
    if inner <= 0 or args.devices % inner:
        raise SpecError("--devices", args.devices, f"must be a multiple of tp x cp x pp = {inner}")
    dep = build(Deployment, dict(
        hardware=hw, devices=args.devices, devices_per_domain=args.devices_per_node, tp=args.tp, pp=args.pp,
        vpp=args.vpp, cp=args.cp, ep=args.ep, etp=args.etp, dp=args.devices // inner,
        redundant_experts=args.redundant_experts, attention_layout=args.attention, overlap=args.overlap,
        a2a_mode=args.a2a_mode, comm_sms=args.comm_sms, dtype=args.dtype, kv_dtype=args.kv_dtype,
        capacity_factor=args.capacity_factor, overflow=args.overflow, recompute=args.recompute,
        recompute_modules=args.recompute_modules, mtp_layers=args.mtp_layers, pipeline_layout=args.pipeline_layout,
        stack=args.stack, sharding=args.sharding, attention_dtype=args.attention_dtype), "deployment")
    skew = build(RoutingSpec, {"skew": args.skew}, "routing").skew
    if args.phase == "train":
        work = Training(args.global_batch, args.seq_len, args.micro_batch, skew)
    elif args.phase == "decode":
        work = Decode(args.batch_per_device, args.context, skew)
    else:
        work = Prefill(args.prompt_len, args.prompts_per_device, skew)
    return dep, work


def _des(args, model, dep, skew: str, analytic, outputs: Outputs) -> dict:
    from moesim.des.layer import simulate_layers
    from moesim.des.trace import write_chrome_trace
    from moesim.progress import wanted
    from moesim.step.estimate import stage_layers
    from moesim.step.layer import make_setup

    if args.phase == "train":
        raise SpecError("--engine", "des", "the layer DES simulates prefill and decode iterations")
    setup = make_setup(model, dep, args.phase, skew)
    decode = args.phase == "decode"
    tokens = args.batch_per_device if decode else args.prompt_len * args.prompts_per_device
    context = args.context if decode else (args.prompt_len + 1) / 2
    layers = list(stage_layers(model, dep.pp)[-1])
    check_work(args, "step --engine des", float(args.steps) * len(layers) * dep.ep, MAX_DES_WORK,
               "rank-layer steps (steps x layers x EP ranks)")
    res = simulate_layers(setup, layers=layers, tokens=tokens, context=context, overlap=args.overlap,
                          steps=args.steps, seed=args.seed, head_s=analytic.embedding_head_s,
                          record=bool(args.trace), progress=wanted(args))
    out = res.to_dict()
    out["tokens_per_s_per_device"] = tokens / (res.mean_step_s * dep.pp)
    out["analytic_step_time_s"] = analytic.step_time_s
    if args.trace:
        ranks = None
        if args.trace_ranks:
            try:
                ranks = [f"rank {int(r)}" for r in args.trace_ranks.split(",") if r.strip()]
            except ValueError:
                raise SpecError("--trace-ranks", args.trace_ranks, "a comma list of rank numbers, e.g. 0,3") from None
        write_chrome_trace(res.spans, outputs.path(args.trace, "--trace"),
                           {"model": model.name, "hw": dep.hardware.name, "phase": args.phase}, processes=ranks)
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


def _stack_line(stack, phase: str, data: dict) -> str:
    """The software stack the step ran and where its device fraction comes from
    (moesim/step/stacks.py ``fraction_origin``) and its routed experts' further fraction when not 1
    (``expert_fraction``), also set on ``data`` (``stack``, ``device_fraction``,
    ``device_fraction_origin``, ``expert_fraction``)."""
    from moesim.step.stacks import fraction_origin

    from moesim.step.stacks import expert_fraction

    fo = fraction_origin(stack, phase)
    ef = expert_fraction(stack, phase)
    data.update(stack=fo.stack, device_fraction=fo.fraction, device_fraction_origin=fo.origin, expert_fraction=ef)
    return fo.text() + (f", expert fraction {ef:.4g}" if ef != 1.0 else "")


def _step(args, outputs: Outputs) -> Result:
    from moesim.step import estimate

    model = load_model(args.model)
    hw = load_profile(args.hw)
    dep, work = _specs(args, hw)
    b = estimate(model, dep, work, check_memory=not args.no_memory_check).breakdown(0)
    data = {"model": model.name, "hw": hw.name, "devices": args.devices, "engine": args.engine,
            "parallelism": dep.parallelism.to_dict(), **b.to_dict()}
    pairs = [("step time", f"{b.step_time_s * 1e3:.3f} ms"),
             ("tokens/s/device", f"{b.tokens_per_s_per_device:,.1f}"),
             ("model TFLOPS/device", f"{b.model_tflops_per_device:.1f} (MFU {b.mfu:.1%})"),
             ("bottleneck", b.bottleneck),
             ("exposed comm", f"{b.exposed_comm_s * 1e3:.3f} ms"),
             ("memory", f"{b.memory_GiB:.1f} / {b.memory_capacity_GiB:.1f} GiB")]
    pairs.append(("stack", _stack_line(dep.stack, b.phase, data)))
    if dep.partial_domain is not None:  # moesim/specs/cluster.py rack_aligned_domain
        data["partial_domain"] = dep.partial_domain
        pairs.append(("scale-up", dep.partial_domain))
    if b.phase == "train" and dep.trained_mtp(model):  # moesim/step/training.py: MTP on the last stage
        data["mtp_layers"] = dep.trained_mtp(model)
        pairs.append(("MTP", f"{dep.trained_mtp(model)} module(s) trained on the last pipeline stage "
                             "(--mtp-layers 0: off)"))
    if b.phase != "train" and not dep.attention_dtype:  # moesim/step/setup.py LayerSetup.core_dtype
        from moesim.step.layer import make_setup

        core = make_setup(model, dep, b.phase).core_dtype
        if core is not None:
            kernels = "context" if b.phase == "prefill" else "generation"
            data["attention_core_dtype"] = core
            pairs.append(("attention core", f"{core}: the stack's {kernels} attention kernels under the "
                                            f"{dep.kv_dtype} KV cache (--attention-dtype to state it)"))
    if b.phase != "train":
        from moesim.step.stacks import resolve

        ph = resolve(dep.stack, b.phase)
        if float(ph.host_seq_us) > 0 or ph.loop == "overlapped":  # a stack with an executor loop (step/host.py eq. 4)
            pairs.append(("host", f"operator issue {b.host_issue_s * 1e3:.3f} ms; executor loop {b.host_loop_s * 1e3:.3f} "
                                  f"ms ({float(ph.host_seq_us):g} us/sequence, {ph.loop}); exposed "
                                  f"{b.host_s * 1e3:.3f} ms"))
    if b.capacity_factor is not None:
        pairs.append(("capacity", f"factor {b.capacity_factor:g}, overflow {b.overflow}: dropped {b.drop_fraction:.2%}, "
                                  f"rerouted {b.reroute_fraction:.2%}, backup {b.backup_fraction:.2%}"))
    pairs += [(k.removesuffix("_s"), f"{v * 1e3:.3f} ms") for k, v in b.components().items() if v > 0]
    files: tuple[str, ...] = ()
    if args.engine == "des":
        des = _des(args, model, dep, work.skew, b, outputs)
        data["des"] = des
        data["step_time_s"] = des["mean_step_s"] * dep.pp
        data["tokens_per_s_per_device"] = des["tokens_per_s_per_device"]
        pairs.insert(0, ("DES mean step", f"{des['mean_step_s'] * dep.pp * 1e3:.3f} ms over {des['steps']} steps "
                                          f"(p99 {des['p99_step_s'] * dep.pp * 1e3:.3f} ms)"))
        if args.trace:
            files = (args.trace,)
            pairs.append(("trace", args.trace))
    title = f"{model.name} on {args.devices} x {hw.name}, {args.phase}, {args.engine}"
    return Result(data, title + "\n\n" + kv(pairs), files=files)
