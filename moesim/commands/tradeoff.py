"""``moesim tradeoff SCENARIO``: the cost-latency-quality curve over capacity factor x overflow policy
at the plan's answer (moesim/quality/tradeoff.py), as a table, JSON or a plot."""
from __future__ import annotations

import argparse

from moesim.cli import Result
from moesim.commands.plan import add_scenario_args, load
from moesim.errors import SpecError
from moesim.textfmt import table

ORDER = 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tradeoff", help="cost-latency-quality curve over capacity factor x overflow policy")
    add_scenario_args(p, optional=False)
    p.add_argument("--capacity-factors", default="0.5,0.75,1.0,1.25,1.5,2.0,dropless", metavar="LIST",
                   help="comma-separated capacity factors ('dropless' for none)")
    p.add_argument("--policies", default="drop,reroute,shared", metavar="LIST",
                   help="overflow policies (measured: drop, reroute, shared)")
    p.add_argument("--max-loss-increase", type=float, default=None, metavar="NATS",
                   help="quality limit: the largest predicted loss increase accepted")
    p.add_argument("--plot", metavar="FILE.png", help="draw cost and TPOT against the quality cost")
    p.set_defaults(handler=tradeoff_cmd)


def parse_capacity_factors(text: str) -> tuple[float | None, ...]:
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "dropless":
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise SpecError("--capacity-factors", item, "must be positive numbers or 'dropless'") from None
        if not value > 0:
            raise SpecError("--capacity-factors", item, "must be positive numbers or 'dropless'")
        out.append(value)
    if not out:
        raise SpecError("--capacity-factors", text, "needs at least one value")
    return tuple(dict.fromkeys(out))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(curve, answer) -> str:
    c = answer.candidate
    head = (f"{curve.scenario}: cost-latency-quality trade-off at the answer {c.hardware} x{c.devices} "
            f"{c.layout()} batch {c.batch} ({curve.routed_tokens:,} tokens routed per decode step, "
            f"skew {curve.skew})")
    rows = []
    for p in curve.points:
        q = p.quality
        mark = "" if p.within_quality_limit is not False else " over limit"
        rows.append(("dropless" if p.capacity_factor is None else f"{p.capacity_factor:g}",
                     "-" if p.capacity_factor is None else p.overflow, _pct(p.drop_fraction),
                     _pct(p.reroute_fraction), _pct(p.backup_fraction), f"{p.rank_imbalance:.2f}",
                     f"{1e3 * p.step_time_s:.2f}", f"{1e3 * p.tpot_s:.1f}", f"{p.usd_per_million_tokens:.4g}",
                     f"{q.loss_increase:.4f} ({q.low:.4f}-{q.high:.4f}){'*' if q.extrapolated else ''}{mark}"))
    text = head + "\n\n" + table(rows, ["capacity", "overflow", "drop %", "reroute %", "backup %", "imbalance",
                                         "step ms", "TPOT ms", "$/M tok", "loss increase, nats (band)"])
    best = curve.cheapest_within()
    if curve.max_loss_increase is not None:
        text += (f"\n\ncheapest within max_loss_increase {curve.max_loss_increase:g}: "
                 + (f"{best.label} (${best.usd_per_million_tokens:.4g}/M tokens, TPOT {1e3 * best.tpot_s:.1f} ms, "
                    f"+{best.quality.loss_increase:.4f} nats)" if best else "none"))
    if any(p.quality.extrapolated for p in curve.points):
        text += "\n* outside the measured range of the quality model (extrapolated)"
    text += f"\n\nquality: {curve.points[0].quality.basis}\nlimits: {curve.quality_limits}\nstep: {curve.step_basis}"
    for note in curve.notes:
        text += f"\nnote: {note}"
    return text


def plot(curve, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cost, ax_tpot) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"drop": "o", "reroute": "s", "shared": "^"}
    for policy in dict.fromkeys(p.overflow for p in curve.points if p.capacity_factor is not None):
        pts = [p for p in curve.points if p.overflow == policy and p.capacity_factor is not None]
        for ax, attr, scale in ((ax_cost, "usd_per_million_tokens", 1.0), (ax_tpot, "tpot_s", 1e3)):
            xs = [p.quality.loss_increase for p in pts]
            ys = [getattr(p, attr) * scale for p in pts]
            ax.plot(xs, ys, marker=markers.get(policy, "x"), label=policy)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"{p.capacity_factor:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    for p in curve.points:
        if p.capacity_factor is None:
            ax_cost.scatter([0.0], [p.usd_per_million_tokens], color="k", zorder=3, label="dropless")
            ax_tpot.scatter([0.0], [1e3 * p.tpot_s], color="k", zorder=3, label="dropless")
    for ax, ylabel in ((ax_cost, "$ per million output tokens"), (ax_tpot, "TPOT (ms)")):
        ax.set_xlabel("predicted loss increase (nats/byte, proxy model)")
        ax.set_ylabel(ylabel)
        if curve.max_loss_increase is not None:
            ax.axvline(curve.max_loss_increase, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{curve.scenario}: {curve.layout} (numbers by capacity factor)", fontsize=9)
    fig.text(0.01, 0.01, "quality: a small byte-level model is a proxy (docs/quality.md)", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tradeoff_cmd(args) -> Result:
    from moesim.planner.plan import plan
    from moesim.quality.predict import default_predictor
    from moesim.quality.tradeoff import tradeoff_curve

    if args.max_loss_increase is not None and not args.max_loss_increase >= 0:
        raise SpecError("--max-loss-increase", args.max_loss_increase, "must be >= 0 (nats)")
    factors = parse_capacity_factors(args.capacity_factors)
    policies = tuple(dict.fromkeys(s.strip() for s in args.policies.split(",") if s.strip()))
    predictor = default_predictor()
    for policy in policies:
        predictor.check_policy(policy)
    scenario = load(args)
    if scenario.kind != "serving":
        raise SpecError("scenario kind", scenario.kind, "tradeoff needs a serving scenario")
    result = plan(scenario, executor="inline").require_feasible()
    answer = result.answer.ranked if result.answer else result.ranked[0]
    curve = tradeoff_curve(scenario, answer, predictor, capacity_factors=factors, policies=policies,
                           max_loss_increase=args.max_loss_increase)
    text = render(curve, answer)
    files = ()
    if args.plot:
        files = (plot(curve, args.plot),)
        text += f"\n\nwrote {args.plot}"
    return Result(curve.to_dict(), text, files=files)
