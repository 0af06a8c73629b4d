"""``moesim memory``: bytes per device of a deployment, and whether it fits."""
from __future__ import annotations

import argparse

from moesim import units
from moesim.catalog import build, load_model, load_profile
from moesim.cli import Result, add_json_flag, add_training_recipe_flags
from moesim.compute.memory import RECOMPUTE, memory_footprint
from moesim.errors import SpecError
from moesim.specs import Parallelism
from moesim.specs.deployment import canonical_recompute_modules, check_modules_need_selective
from moesim.textfmt import kv

ORDER = 45


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="memory per device of a deployment (weights, KV, training states)")
    p.add_argument("--model", required=True, help="model preset name or TOML path")
    p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--etp", type=int, default=1)
    p.add_argument("--redundant-experts", type=int, default=0)
    p.add_argument("--dtype", help="weight dtype (default: the model's)")
    p.add_argument("--kv-dtype", help="KV-cache dtype (default bf16 for fp8/fp4 weights)")
    p.add_argument("--mode", choices=["serve", "train"], default="serve")
    p.add_argument("--kv-tokens", type=int, default=0, help="serve: KV tokens to hold per device")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--recompute", choices=list(RECOMPUTE), default="none")
    add_training_recipe_flags(p)
    p.add_argument("--sharding", choices=["ddp", "zero1", "zero2", "zero3", "fsdp"], default=None,
                   help="train: what is sharded over data parallel (default zero1 = distributed optimizer; "
                        "zero3/fsdp also weights and gradients, as MaxText on TPU)")
    p.add_argument("--reserve-gib", type=float, default=0.0, help="runtime reserve per device (GiB)")
    add_json_flag(p)
    p.set_defaults(handler=memory)


def memory(args) -> Result:
    model = load_model(args.model)
    hw = load_profile(args.hw)
    if args.devices <= 0:
        raise SpecError("--devices", args.devices, "must be positive")
    for name in ("tp", "pp"):
        value = getattr(args, name)
        if value <= 0 or args.devices % value:
            raise SpecError(f"--{name}", value, f"must be positive and divide --devices {args.devices}")
    if args.devices % (args.tp * args.pp):
        raise SpecError("--devices", args.devices, f"must be a multiple of tp x pp = {args.tp * args.pp}")
    dp = args.devices // (args.tp * args.pp)
    modules = canonical_recompute_modules(args.recompute_modules)
    check_modules_need_selective(args.recompute, modules, "--recompute-modules")
    if args.mtp_layers is not None and (args.mtp_layers < 0 or args.mode != "train"):
        raise SpecError("--mtp-layers", args.mtp_layers, "an integer >= 0, with --mode train")
    mtp = model.mtp_layers if args.mtp_layers is None else args.mtp_layers
    par = build(Parallelism, {"tp": args.tp, "pp": args.pp, "dp": dp, "ep": args.ep, "etp": args.etp,
                              "redundant_experts": args.redundant_experts,
                              "attention_layout": "dp" if args.tp == 1 else "tp"}, "parallelism")
    fp = memory_footprint(model, hw, par, mode=args.mode, weight_dtype=args.dtype, kv_dtype=args.kv_dtype,
                          kv_tokens=args.kv_tokens, micro_batch=args.micro_batch, seq_len=args.seq_len,
                          recompute=args.recompute, recompute_modules=modules, reserve_GiB=args.reserve_gib,
                          sharding=args.sharding, mtp_layers=mtp if args.mode == "train" else 0)
    data = {"model": model.name, "hw": hw.name, "devices": args.devices, "parallelism": par.to_dict(),
            **fp.to_dict()}
    gib = units.GiB
    pairs = [
        ("deployment", f"{model.name} on {args.devices} x {hw.name}, tp {args.tp} ep {args.ep} pp {args.pp} dp {dp}"),
        ("weights", f"{fp.weight_bytes / gib:.1f} GiB per device ({fp.expert_weight_bytes / gib:.1f} GiB experts)"),
        ("KV cache", f"{fp.kv_bytes_per_token / 1024:.1f} KiB per token; {fp.kv_tokens_fit:,} tokens fit"),
    ]
    if args.mode == "train":
        pairs += [("MTP modules", f"{mtp} on the last stage")] if mtp else []
        pairs += [("gradients", f"{fp.gradient_bytes / gib:.1f} GiB"), ("optimizer", f"{fp.optimizer_bytes / gib:.1f} GiB"),
                  ("activations", f"{fp.activation_bytes / gib:.1f} GiB")]
    pairs += [("total", f"{fp.total_bytes / gib:.1f} of {fp.capacity_bytes / gib:.1f} GiB"),
              ("fits", "yes" if fp.fits else f"no: {fp.reason}")]
    return Result(data, kv(pairs))
