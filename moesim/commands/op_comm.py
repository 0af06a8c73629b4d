"""``moesim op all-to-all`` and ``moesim op all-reduce`` / ``all-gather`` / ``reduce-scatter``."""
from __future__ import annotations

import argparse

from moesim.comm.collectives import ALGORITHMS
from moesim.catalog import load_profile
from moesim.cli import Result, add_json_flag
from moesim.commands._op import op_group
from moesim.errors import SpecError
from moesim.specs.workload import parse_skew
from moesim.textfmt import kv, seconds, si

ORDER = 41


def register(sub: argparse._SubParsersAction) -> None:
    ops = op_group(sub)
    p = ops.add_parser("all-to-all", help="time of one MoE dispatch or combine all-to-all")
    p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
    p.add_argument("--op", dest="a2a_op", default="dispatch", help="dispatch or combine")
    p.add_argument("--ranks", type=int, required=True, help="EP ranks")
    p.add_argument("--ranks-per-node", type=int, help="ranks per scale-up domain (default: the profile's)")
    p.add_argument("--tokens-per-rank", type=int, required=True)
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--top-k", type=int, required=True)
    p.add_argument("--experts", type=int, required=True)
    p.add_argument("--bytes-per-token", type=float, help="payload of one token copy (default 2 x hidden, bf16)")
    # NOTE: the comm modules (numpy) load only when a command runs: names checked there
    p.add_argument("--mode", default="normal", help="all-to-all kernel mode (moesim.comm.alltoall.MODES)")
    p.add_argument("--dedup", default="node", help="copy deduplication (moesim.comm.traffic.DEDUPS)")
    p.add_argument("--skew", default="uniform", help="uniform | balanced | zipf:S | dirichlet:A | explicit:p,...")
    p.add_argument("--groups", type=int, default=1, help="expert groups (group-limited routing)")
    p.add_argument("--topk-groups", type=int, default=1, help="groups each token may use")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled traffic for skewed routing")
    add_json_flag(p)
    p.set_defaults(handler=op_all_to_all)

    for name, kind in (("all-reduce", "all_reduce"), ("all-gather", "all_gather"),
                       ("reduce-scatter", "reduce_scatter")):
        p = ops.add_parser(name, help=f"alpha-beta time of one {name.replace('-', ' ')}")
        p.add_argument("--hw", required=True, help="hardware profile name or TOML path")
        p.add_argument("--ranks", type=int, required=True)
        p.add_argument("--ranks-per-node", type=int, help="ranks per scale-up domain (default: the profile's)")
        p.add_argument("--bytes", type=float, required=True, help="full buffer size in bytes")
        p.add_argument("--algorithm", default="auto", choices=ALGORITHMS,
                       help="ring, tree, direct (one switched domain) or auto (the fastest of ring and "
                            "direct, as the step model prices collectives)")
        add_json_flag(p)
        p.set_defaults(handler=op_collective, collective=kind)


def _traffic(args, rpn: int):
    import numpy as np

    from moesim.comm.skewed import popularity_from_skew, sampled_traffic
    from moesim.comm.traffic import uniform_traffic

    kind, param = _skew(args.skew)
    bpt = args.bytes_per_token if args.bytes_per_token is not None else 2.0 * args.hidden
    if args.hidden <= 0:
        raise SpecError("--hidden", args.hidden, "must be > 0")
    if kind in ("uniform", "balanced"):
        return uniform_traffic(args.ranks, rpn, args.tokens_per_rank, args.experts, args.top_k, bpt,
                               dedup=args.dedup, routing=kind, groups=args.groups,
                               topk_groups=args.topk_groups)
    if args.groups != 1:
        raise SpecError("--groups", args.groups, "group-limited routing is supported with uniform skew only")
    if args.experts <= 0:
        raise SpecError("--experts", args.experts, "must be a positive integer")
    rng = np.random.default_rng(args.seed)
    popularity = popularity_from_skew(kind, param, args.experts, rng)
    return sampled_traffic(popularity, args.ranks, rpn, args.tokens_per_rank, args.top_k, bpt,
                           dedup=args.dedup, rng=rng)


def _skew(text: str):
    try:
        return parse_skew(text)
    except ValueError as err:
        raise SpecError("--skew", text, str(err)) from None


def op_all_to_all(args) -> Result:
    from moesim.comm.alltoall import OPS, all_to_all_time
    from moesim.comm.topology import build_topology

    hw = load_profile(args.hw)
    if args.a2a_op not in OPS:
        raise SpecError("--op", args.a2a_op, f"one of {', '.join(OPS)}")
    topo = build_topology(hw, args.ranks, args.ranks_per_node)
    traffic = _traffic(args, topo.ranks_per_domain)
    res = all_to_all_time(topo, traffic, args.mode, args.a2a_op)
    data = {"hw": hw.name, "ranks": args.ranks, "ranks_per_node": topo.ranks_per_domain,
            "skew": args.skew, "dedup": args.dedup, **res.to_dict()}
    text = kv([
        ("all-to-all", f"{args.a2a_op}, {args.ranks} ranks ({topo.ranks_per_domain} per node) on {hw.name}, "
                       f"mode {args.mode}, dedup {args.dedup}, skew {args.skew}"),
        ("time", seconds(res.time_s)),
        ("bottleneck", res.bottleneck),
        ("bandwidth / latency", f"{seconds(res.bandwidth_time_s)} / {seconds(res.latency_time_s)}"),
        ("inter-node bytes", si(res.internode_bytes, "B")),
        ("intra-node bytes", si(res.intranode_bytes, "B")),
    ])
    return Result(data, text)


def op_collective(args) -> Result:
    from moesim.comm.collectives import collective_time
    from moesim.comm.topology import build_topology

    hw = load_profile(args.hw)
    topo = build_topology(hw, args.ranks, args.ranks_per_node)
    res = collective_time(topo, args.collective, args.bytes, algorithm=args.algorithm)
    data = {"hw": hw.name, "ranks_per_node": topo.ranks_per_domain, **res.to_dict()}
    text = kv([
        (args.collective.replace("_", "-"), f"{si(args.bytes, 'B')} over {args.ranks} ranks on {hw.name} "
                                            f"({args.algorithm}{', hierarchical' if res.hierarchical else ''})"),
        ("time", seconds(res.time_s)),
        ("bandwidth / latency", f"{seconds(res.bandwidth_time_s)} / {seconds(res.latency_time_s)}"),
        ("bottleneck", res.bottleneck),
    ])
    return Result(data, text)
