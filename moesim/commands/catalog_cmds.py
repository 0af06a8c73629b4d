"""``moesim hw``, ``moesim models`` and ``moesim schema``: what the catalog holds."""
from __future__ import annotations

import argparse
import json

from moesim import units
from moesim.catalog import SCHEMAS, json_schema, list_models, list_profiles, load_model, load_profile
from moesim.cli import Result, add_json_flag
from moesim.compute.counts import forward_flops_per_token, param_counts
from moesim.specs import DTYPES, HardwareProfile, ModelSpec
from moesim.textfmt import kv, si, table

ORDER = 90  # catalog commands come last in --help


def register(sub: argparse._SubParsersAction) -> None:
    hw = sub.add_parser("hw", help="hardware profiles").add_subparsers(dest="action", metavar="ACTION")
    hw.required = True
    p = hw.add_parser("list", help="list the built-in hardware profiles")
    add_json_flag(p)
    p.set_defaults(handler=hw_list)
    p = hw.add_parser("show", help="show one profile (a name or a TOML path)")
    p.add_argument("name")
    add_json_flag(p)
    p.set_defaults(handler=hw_show)

    models = sub.add_parser("models", help="model presets").add_subparsers(dest="action", metavar="ACTION")
    models.required = True
    p = models.add_parser("list", help="list the built-in model presets")
    add_json_flag(p)
    p.set_defaults(handler=models_list)
    p = models.add_parser("show", help="show one model (a name or a TOML path) with its counts")
    p.add_argument("name")
    p.add_argument("--context", type=int, default=4096, help="context for the FLOPs-with-attention figure")
    add_json_flag(p)
    p.set_defaults(handler=models_show)

    p = models.add_parser("import", help="a model spec from a local Hugging Face config.json (no download)")
    p.add_argument("config", help="path to a config.json")
    p.add_argument("-o", "--output", metavar="MODEL.toml", help="write the model spec TOML here")
    p.add_argument("--name", help="model name (default: the config's _name_or_path, else its folder)")
    add_json_flag(p)
    p.set_defaults(handler=models_import)

    p = sub.add_parser("schema", help="print the JSON Schema of a spec kind")
    p.add_argument("kind", choices=[*SCHEMAS, "workload", "scenario", "serve", "cases"])
    add_json_flag(p)
    p.set_defaults(handler=schema)


def _hw_summary(p: HardwareProfile) -> dict:
    return {
        "name": p.name,
        "display_name": p.display_name,
        "kind": p.kind,
        "peak_dense_tflops": dict(p.compute.peak_dense_tflops),
        "hbm_GB": p.memory.hbm_GB,
        "runtime_MiB": p.memory.runtime_MiB,
        "memory_GiB": p.hbm_bytes / units.GiB,
        "hbm_bandwidth_GBps": p.memory.hbm_bandwidth_GBps,
        "scale_up_per_direction_GBps": p.scale_up.bandwidth_per_direction_GBps,
        "scale_up_domain": p.scale_up.domain_size,
        "nic_Gbps": p.scale_out.nic_Gbps_per_device if p.scale_out else None,
        "usd_per_device_hour": p.price.usd_per_device_hour,
        "price_provider": p.price.provider,
        "price_quality": p.price.quality,
        "price_as_of": p.price.as_of,
        "efficiency_origin": p.efficiency.origin,
        "compute_origin": p.efficiency.compute_origin,
        "comm_origin": p.efficiency.comm_origin,
    }


def hw_list(args) -> Result:
    profiles = [load_profile(n) for n in list_profiles()]
    data = [_hw_summary(p) for p in profiles]
    rows = [
        (
            d["name"],
            d["peak_dense_tflops"].get("bf16"),
            d["peak_dense_tflops"].get("fp8"),
            f"{d['memory_GiB']:.1f}" + ("" if d["runtime_MiB"] else "*"),
            d["hbm_bandwidth_GBps"],
            d["scale_up_per_direction_GBps"],
            d["scale_up_domain"],
            d["nic_Gbps"],
            f"{d['usd_per_device_hour']:.2f}",
            f"{d['price_provider']}" + ("" if d["price_quality"] in ("list", d["price_provider"])
                                        else f" ({d['price_quality']})"),
            _origin(d),
        )
        for d in data
    ]
    headers = ["name", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GiB", "HBM GB/s", "scale-up GB/s/dir", "domain devices",
               "NIC Gb/s", "$/device-h", "price from", "efficiencies"]
    return Result(data, table(rows, headers) + "\n(dense peaks; prior-only = efficiencies fitted to no "
                  "measurement; memory GiB = the total the driver reports; * = the printed capacity, no driver total sourced; "
                  "`moesim hw show NAME` for sources)")


def _origin(d: dict) -> str:
    c, m = d["compute_origin"], d["comm_origin"]
    if c == m == "prior":
        return "prior-only"
    return c if c == m else f"compute {c}, comm {m}"


def hw_show(args) -> Result:
    p = load_profile(args.name)
    data = p.to_dict()
    lines = [f"{p.display_name} ({p.name})", ""]
    peaks = ", ".join(f"{d} {p.compute.peak_dense_tflops[d]:g}" for d in DTYPES if d in p.compute.peak_dense_tflops)
    lines.append(kv([
        ("dense peak TFLOP/s", peaks),
        ("compute units", f"{p.compute.compute_units} {p.compute.compute_unit_kind}" if p.compute.compute_units else "unconfirmed"),
        ("HBM", f"{p.memory.hbm_GB:g} GB at {p.memory.hbm_bandwidth_GBps:g} GB/s"),
        ("usable memory", f"{p.memory.runtime_MiB:g} MiB, the driver total ({p.hbm_bytes / units.GiB:.1f} GiB; its source says whether measured or transferred)"
                          if p.memory.runtime_MiB else f"{p.hbm_bytes / units.GiB:.1f} GiB (the printed capacity; no driver-reported total sourced)"),
        ("scale-up", f"{p.scale_up.fabric} {p.scale_up.topology}, {p.scale_up.bandwidth_per_direction_GBps:g} GB/s per direction, domain {p.scale_up.domain_size} (max {p.scale_up.max_domain_size})"),
        ("scale-out", f"{p.scale_out.nic_Gbps_per_device:g} Gb/s per device" if p.scale_out else "not stated"),
        ("price", f"${p.price.usd_per_device_hour:.2f}/device-hour, {p.price.provider} "
                  f"{p.price.quality} price ({p.price.as_of})"),
        ("efficiency", f"compute {p.efficiency.compute_origin}, comm {p.efficiency.comm_origin}: "
                       f"{p.efficiency.origin}"),
    ]))
    lines += ["", "sources:"]
    for section in ("compute", "memory", "scale_up", "scale_out", "ici", "price"):
        sec = getattr(p, section)
        if sec is None:
            continue
        for key, src in sec.sources.items():
            lines.append(f"  {section}.{key}: {src}")
    return Result(data, "\n".join(lines))


def _model_summary(m: ModelSpec, context: int) -> dict:
    pc = param_counts(m)
    d = {
        "name": m.name,
        "display_name": m.display_name,
        "layers": m.num_layers,
        "hidden": m.hidden,
        "attention": m.attention.kind,
        "moe_layers": m.moe_layers,
        "dense_layers": m.dense_layers,
        "num_experts": m.moe.num_experts if m.moe else 0,
        "top_k": m.moe.top_k if m.moe else 0,
        "total_params": pc.total,
        "active_params": pc.active,
        "active_params_without_input_embedding": pc.active_without_input_embedding,
        "published_total_params": m.published.total_params_B * 1e9 if m.published else None,
        "published_active_params": m.published.active_params_B * 1e9 if m.published else None,
        "forward_flops_per_token": forward_flops_per_token(m),
        "forward_flops_per_token_with_context": forward_flops_per_token(m, context),
        "context_for_flops": context,
        "kv_elements_per_token_per_layer": m.kv_elements_per_token(),
    }
    return d


def models_list(args) -> Result:
    data = [_model_summary(load_model(n), 4096) for n in list_models()]
    rows = [
        (d["name"], d["layers"], d["num_experts"] or "dense", d["top_k"] or "-",
         si(d["total_params"]), si(d["active_params"]),
         si(d["published_total_params"]), si(d["published_active_params"]))
        for d in data
    ]
    headers = ["name", "layers", "experts", "top-k", "total params", "active params", "published total params",
               "published active params"]
    return Result(data, table(rows, headers))


def models_show(args) -> Result:
    if args.context < 0:
        from moesim.errors import SpecError

        raise SpecError("--context", args.context, "must be >= 0")
    m = load_model(args.name)
    summary = _model_summary(m, args.context)
    data = {**summary, "param_counts": param_counts(m).to_dict(), "spec": m.to_dict()}
    pairs = [
        ("layers", f"{m.num_layers} ({m.moe_layers} MoE, {m.dense_layers} dense)"),
        ("hidden", m.hidden),
        ("attention", f"{m.attention.kind}, {m.attention.num_heads} heads"),
    ]
    if m.moe:
        pairs.append(("experts", f"{m.moe.num_experts} routed x {m.moe.expert_ffn}, top-{m.moe.top_k}, "
                                 f"{m.moe.num_shared_experts} shared, groups {m.moe.topk_groups}/{m.moe.n_groups}"))
    pairs += [
        ("total params", f"{si(summary['total_params'])} (published {si(summary['published_total_params'])})"),
        ("active params", f"{si(summary['active_params'])} (published {si(summary['published_active_params'])})"),
        ("fwd FLOPs/token", f"{si(summary['forward_flops_per_token'])} (weights), "
                            f"{si(summary['forward_flops_per_token_with_context'])} at {args.context} keys"),
        ("KV elements/token/layer", summary["kv_elements_per_token_per_layer"]),
    ]
    if m.published:
        pairs.append(("counting", m.published.convention or "-"))
    return Result(data, f"{m.display_name} ({m.name})\n\n" + kv(pairs))


def schema(args) -> Result:
    from moesim import schemas

    s = schemas.SCHEMAS[args.kind]() if args.kind in schemas.SCHEMAS else json_schema(args.kind)
    return Result(s, json.dumps(s, indent=2))



def models_import(args) -> Result:
    """``moesim models import config.json [-o model.toml]``: map, validate, count, optionally write."""
    from moesim.catalog import load_hf_model, write_toml

    m = load_hf_model(args.config, name=args.name)
    pc = param_counts(m)
    data = {**_model_summary(m, 4096), "spec": m.to_dict()}
    lines = [f"imported {m.display_name} as {m.name}: {m.num_layers} layers ({m.moe_layers} MoE), "
             f"total {si(pc.total)} / active {si(pc.active)} parameters"]
    files: tuple[str, ...] = ()
    if args.output:
        write_toml(m.to_dict(), args.output)
        files = (args.output,)
        lines.append(f"wrote {args.output}; use it as --model {args.output} (or --model hf:{args.config})")
    return Result(data, "\n".join(lines), files=files)
