"""``moesim route``: expected routing of one step (drops, imbalance, traffic) for E experts, top-k."""
from __future__ import annotations

import argparse

from moesim.catalog import load_model
from moesim.cli import Result, add_json_flag, add_limit_flag, check_work
from moesim.errors import SpecError
from moesim.textfmt import kv

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="routing of one step: drops, imbalance, traffic (analytic or Monte Carlo)")
    p.add_argument("--model", help="a model preset (name or TOML path): takes E, top-k and groups from it")
    p.add_argument("--experts", type=int, help="routed experts E")
    p.add_argument("--top-k", type=int, help="experts per token k")
    p.add_argument("--n-groups", type=int, default=None, help="expert groups (group-limited routing)")
    p.add_argument("--topk-groups", type=int, default=None, help="groups a token may use")
    p.add_argument("--tokens", type=int, required=True, help="tokens in the step over the EP group")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel ranks")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--skew", default="uniform", help="uniform | balanced | zipf:S | dirichlet:A | trace:FILE | explicit:p,...")
    p.add_argument("--trace", help="a recorded routing trace (.npz/.json): same as --skew trace:FILE; "
                   "E and top-k default to the trace's")
    p.add_argument("--drift", type=float, default=0.0, help="per-step log-normal popularity drift (sigma)")
    p.add_argument("--capacity-factor", type=float, default=None, help="omit for dropless")
    p.add_argument("--overflow", default="drop", choices=["drop", "reroute", "shared"])
    p.add_argument("--placement", default="contiguous", choices=["contiguous", "round_robin", "load_aware"])
    p.add_argument("--redundant-experts", type=int, default=0, help="extra slots for replicas of hot experts")
    p.add_argument("--routing", default="token_choice", choices=["token_choice", "expert_choice"])
    p.add_argument("--engine", default="analytic", choices=["analytic", "montecarlo"])
    p.add_argument("--samples", type=int, default=64, help="Monte Carlo steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="with --json: include vectors and the traffic matrix")
    add_limit_flag(p)
    add_json_flag(p)
    p.set_defaults(handler=route_cmd)


def _experts(args) -> tuple[int, int, int, int]:
    """E, k, n_groups, topk_groups from --model and/or the explicit flags (flags win)."""
    E = k = None
    groups, topk_groups = 1, 1
    if args.model:
        m = load_model(args.model)
        if m.moe is None:
            raise SpecError("--model", args.model, "is a dense model: it has no routed experts")
        E, k, groups, topk_groups = m.moe.num_experts, m.moe.top_k, m.moe.n_groups, m.moe.topk_groups
    if args.trace and (args.experts is None or args.top_k is None) and (E is None or k is None):
        from moesim.routing import load_trace  # NOTE: lazy: numba and scipy load only when routing runs

        trace = load_trace(args.trace)
        E, k = trace.num_experts, trace.top_k
    E = args.experts if args.experts is not None else E
    k = args.top_k if args.top_k is not None else k
    if E is None or k is None:
        raise SpecError("--experts/--top-k", None, "give both, or --model")
    groups = args.n_groups if args.n_groups is not None else groups
    topk_groups = args.topk_groups if args.topk_groups is not None else topk_groups
    return E, k, groups, topk_groups


MAX_COPIES = 1e9  # sampled copies: about a minute (measured: 5.1e8 copies in 29 s on 2 shared cores)


def route_cmd(args) -> Result:
    if args.trace:
        if args.skew != "uniform":
            raise SpecError("--trace", args.trace, f"give either --trace or --skew (got --skew {args.skew})")
        args.skew = f"trace:{args.trace}"
    E, k, groups, topk_groups = _experts(args)
    from moesim.routing import route  # NOTE: lazy (numba, scipy): moesim --help stays fast
    from moesim.routing.problem import MAX_CAPACITY_FACTOR
    from moesim.progress import wanted

    if args.capacity_factor is not None and not 0 < args.capacity_factor <= MAX_CAPACITY_FACTOR:
        raise SpecError("--capacity-factor", args.capacity_factor,
                        f"must lie in (0, {MAX_CAPACITY_FACTOR:g}] (omit it for dropless)")
    if args.engine == "montecarlo":
        check_work(args, "route --engine montecarlo", float(args.samples) * args.tokens * k, MAX_COPIES,
                   "sampled token copies (samples x tokens x top-k)")
    stats = route(E, k, args.tokens, ep=args.ep, ranks_per_node=args.ranks_per_node, skew=args.skew,
                  capacity_factor=args.capacity_factor, overflow=args.overflow, placement=args.placement,
                  redundant_experts=args.redundant_experts, n_groups=groups, topk_groups=topk_groups,
                  routing=args.routing, drift=args.drift, engine=args.engine, samples=args.samples,
                  seed=args.seed, progress=wanted(args))
    data = stats.to_dict() if args.full else stats.summary()
    data["n_groups"], data["topk_groups"] = groups, topk_groups
    s = stats.summary()
    text = kv([
        ("routing", f"{E} experts, top-{k}, groups {topk_groups}/{groups}, {args.tokens} tokens, "
                    f"EP {args.ep} on {s['num_nodes']} node(s), {stats.routing}"),
        ("skew / placement", f"{args.skew} / {stats.placement}"),
        ("capacity", "dropless" if stats.capacity is None else
         f"{stats.capacity} copies per expert slot (cf {args.capacity_factor}), overflow {stats.overflow}"),
        ("engine", stats.engine + (f", {stats.samples} samples" if stats.samples else "")),
        ("drop / reroute / shared", f"{s['drop_fraction']:.4f} / {s['reroute_fraction']:.4f} / {s['shared_fraction']:.4f}"),
        ("rank load mean / E[max]", f"{s['rank_tokens_mean']:.1f} / {s['rank_tokens_max']:.1f} copies "
                                    f"(p99 {s['rank_tokens_p99']:.1f})"),
        ("rank imbalance", f"{s['rank_imbalance']:.4f}"),
        ("expert imbalance", f"{s['expert_imbalance']:.4f}"),
        ("active experts per rank", f"{s['active_experts_per_rank']:.2f}"),
        ("internode fraction", f"{s['internode_fraction']:.4f}"),
    ])
    return Result(data, text)
