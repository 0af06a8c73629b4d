"""``moesim op gemm`` and ``moesim op grouped-gemm``: predicted time of one (grouped) GEMM."""
from __future__ import annotations

import argparse

from moesim.catalog import load_profile
from moesim.cli import Result, add_json_flag
from moesim.commands._op import op_group
from moesim.errors import SpecError
from moesim.textfmt import kv, seconds

ORDER = 40


def register(sub: argparse._SubParsersAction) -> None:
    ops = op_group(sub)
    p = ops.add_parser("gemm", help="time of C[m,n] = A[m,k] B[k,n] on one device")
    p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
    p.add_argument("--m", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--dtype", default="bf16", help="fp32, tf32, bf16, fp16, fp8, fp4 (default bf16)")
    add_json_flag(p)
    p.set_defaults(handler=op_gemm)

    p = ops.add_parser("grouped-gemm", help="time of one grouped GEMM (MoE experts)")
    p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
    p.add_argument("--groups", type=int, help="number of groups when --m-per-group is one number")
    p.add_argument("--m-per-group", required=True, help="rows per group: one number or a comma list")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--layout", default="contiguous",
                   help="grouped-GEMM layout (moesim.compute.grouped.LAYOUTS; an unknown one is refused with the list)")
    p.add_argument("--capacity", type=int, help="masked layout: rows per group buffer")
    add_json_flag(p)
    p.set_defaults(handler=op_grouped_gemm)


def op_gemm(args) -> Result:
    from moesim.compute.gemm import gemm_time  # NOTE: lazy: numba loads only when a GEMM is priced

    hw = load_profile(args.hw)
    est = gemm_time(hw, args.m, args.n, args.k, args.dtype)
    data = {"hw": hw.name, "m": args.m, "n": args.n, "k": args.k, **est.to_dict()}
    text = kv([
        ("shape", f"m={args.m} n={args.n} k={args.k} {est.dtype} on {hw.name}"),
        ("time", seconds(est.time_s)),
        ("throughput", f"{est.tflops:.1f} TFLOP/s ({100 * est.efficiency:.1f}% of peak)"),
        ("bound", est.bound),
    ])
    return Result(data, text)


def parse_m_per_group(text: str, groups: int | None) -> list[int]:
    """``"4096"`` with ``groups`` -> groups copies; ``"1,2,3"`` -> that list."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise SpecError("--m-per-group", text, "integers separated by commas") from None
    if not values:
        raise SpecError("--m-per-group", text, "at least one group")
    if groups is not None:
        if groups <= 0:
            raise SpecError("--groups", groups, "must be positive")
        if len(values) == 1:
            values = values * groups
        elif len(values) != groups:
            raise SpecError("--groups", groups, f"must equal the {len(values)} values of --m-per-group")
    return values


def op_grouped_gemm(args) -> Result:
    from moesim.compute.grouped import grouped_gemm_time

    hw = load_profile(args.hw)
    m_per_group = parse_m_per_group(args.m_per_group, args.groups)
    est = grouped_gemm_time(hw, m_per_group, args.n, args.k, args.dtype, layout=args.layout,
                            capacity=args.capacity)
    data = {"hw": hw.name, "n": args.n, "k": args.k, "dtype": args.dtype, **est.to_dict()}
    text = kv([
        ("groups", f"{est.groups} ({est.nonempty_groups} non-empty), {est.rows} rows "
                   f"({est.padded_rows} with padding), {est.layout}"),
        ("time", seconds(est.time_s)),
        ("throughput", f"{est.tflops:.1f} TFLOP/s ({100 * est.efficiency:.1f}% of peak)"),
        ("bound", est.bound),
    ])
    return Result(data, text)
