"""Judging evaluations against the scenario, costing them, ranking, frontier, rejection summary.

Serving, cost to meet the target (T output tokens/s) with one replica sustaining r tokens/s:
    replicas = ceil(T / r);  devices = replicas x n;  $/h = devices x price [$/device-h];
    $/M tokens = $/h / (T [tok/s] x 3600 [s/h]) x 1e6     (paying for the capacity actually bought).
Training on n devices at R tokens/s for a budget of B tokens:
    days = B / R / 86400;  cost = n x price x days x 24;  $/M tokens = cost / B x 1e6.
Quality: a candidate over ``limits.max_drop_fraction`` (or, when set, ``limits.max_loss_increase``)
is rejected (``quality_rejection``), for serving and training alike: drops are never free.
Rank: cheapest first ($/h serving, total $ training), ties by quality (drop fraction, then the
predicted loss increase), then latency (TPOT or days); equal on all of these, the search order
(``sorted`` is stable), never an identity string.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, replace

from moesim.planner.evaluation import REASONS, Evaluation, HardwareFacts


@dataclass(frozen=True)
class Ranked:
    """A feasible deployment with its cost to meet the target."""

    evaluation: Evaluation
    replicas: int
    total_devices: int
    nodes: int
    usd_per_hour: float
    usd_per_million_tokens: float
    latency_s: float  # TPOT (serving) or wall time (training)
    days: float | None = None
    total_usd: float | None = None

    @property
    def candidate(self):
        return self.evaluation.candidate

    def sort_key(self):
        primary = self.total_usd if self.total_usd is not None else self.usd_per_hour
        return (primary, *quality_key(self.evaluation), self.latency_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["evaluation"] = self.evaluation.to_dict()
        return d


@dataclass(frozen=True)
class Rejection:
    """One rejected evaluation with how far it is from acceptable (ratio > 1; 1 = just missed)."""

    evaluation: Evaluation
    miss_ratio: float


def quality_key(ev: Evaluation) -> tuple[float, float]:
    """Lower is better: (drop fraction, predicted loss increase; 0 when none was predicted)."""
    return (ev.drop_fraction, ev.loss_increase or 0.0)


def quality_rejection(ev: Evaluation, scenario) -> Rejection | None:
    """A Rejection when ``ev`` breaks the scenario's quality limits (module docstring)."""
    limits = scenario.limits
    if ev.drop_fraction > limits.max_drop_fraction:
        return Rejection(ev.rejected("drops_too_many", f"drops {ev.drop_fraction:.2%} > {limits.max_drop_fraction:.2%}"),
                         1.0 + ev.drop_fraction - limits.max_drop_fraction)
    cap = limits.max_loss_increase
    if cap is not None and (ev.loss_increase is None or ev.loss_increase > cap):
        got = "not predicted" if ev.loss_increase is None else f"{ev.loss_increase:.4f}"
        miss = math.inf if ev.loss_increase is None else 1.0 + ev.loss_increase - cap
        return Rejection(ev.rejected("loses_too_much_quality", f"predicted loss increase {got} > {cap:g} nats"), miss)
    return None


def _nodes(devices: int, facts: HardwareFacts) -> int:
    return -(-devices // max(1, min(facts.domain_size, devices)))


def end_to_end_s(ev: Evaluation, output_len: int) -> float | None:
    """A request's end-to-end latency at the SLO percentile as the closed form prices it: its TTFT
    at that percentile plus ``output_len - 1`` TPOTs (the closed form's later tokens come at one
    steady period each, the same for every request); None when either is not priced."""
    if ev.ttft_s is None or ev.tpot_s is None:
        return None
    return ev.ttft_s + max(0, output_len - 1) * ev.tpot_s


def judge_serving(ev: Evaluation, scenario, facts: HardwareFacts) -> Ranked | Rejection:
    """Apply the SLO, drop limit and device limit to one serving evaluation; cost it if it passes."""
    if ev.reason in ("drops_too_many", "loses_too_much_quality"):  # set aside before its latencies were priced
        return quality_rejection(replace(ev, status="ok", reason=None, detail=""), scenario) or Rejection(ev, math.inf)
    if not ev.ok:
        ratio = 1.0 + max(0.0, -(ev.memory_headroom_GiB or 0.0)) / max(facts.hbm_GiB, 1e-9)
        return Rejection(ev, ratio if ev.reason == "does_not_fit" else math.inf)
    slo, c = scenario.slo, ev.candidate
    if slo.tpot_s is not None and (ev.tpot_s is None or ev.tpot_s > slo.tpot_s):
        return Rejection(ev.rejected("misses_slo_tpot", f"TPOT {ev.tpot_s * 1e3:.1f} ms > {slo.tpot_s * 1e3:g} ms"),
                         ev.tpot_s / slo.tpot_s)
    if slo.ttft_s is not None and (ev.ttft_s is None or ev.ttft_s > slo.ttft_s):
        return Rejection(ev.rejected("misses_slo_ttft", f"TTFT {ev.ttft_s * 1e3:.0f} ms > {slo.ttft_s * 1e3:g} ms"),
                         ev.ttft_s / slo.ttft_s)
    if slo.e2e_s is not None:
        e2e = end_to_end_s(ev, scenario.workload.output_len)
        if e2e is None or e2e > slo.e2e_s:
            shown = "not priced" if e2e is None else f"{e2e:.2f} s"
            return Rejection(ev.rejected("misses_slo_e2e", f"end-to-end {shown} > {slo.e2e_s:g} s"),
                             math.inf if e2e is None else e2e / slo.e2e_s)
    bad = quality_rejection(ev, scenario)
    if bad is not None:
        return bad
    if not ev.tokens_per_s > 0:
        return Rejection(ev.rejected("error", "zero throughput"), math.inf)
    target = scenario.target_output_tokens_per_s
    replicas = math.ceil(target / ev.tokens_per_s - 1e-9)
    total = replicas * c.devices
    if total > scenario.max_devices:
        return Rejection(ev.rejected("over_max_devices", f"needs {total} devices > max_devices {scenario.max_devices}"),
                         total / scenario.max_devices)
    usd_h = total * facts.usd_per_device_hour
    return Ranked(ev, replicas, total, replicas * _nodes(c.devices, facts), usd_h,
                  usd_h / (target * 3600.0) * 1e6, ev.tpot_s)


def judge_training(ev: Evaluation, scenario, facts: HardwareFacts) -> Ranked | Rejection:
    """Apply the deadline to one training evaluation; cost it if it passes."""
    if not ev.ok:
        ratio = 1.0 + max(0.0, -(ev.memory_headroom_GiB or 0.0)) / max(facts.hbm_GiB, 1e-9)
        return Rejection(ev, ratio if ev.reason == "does_not_fit" else math.inf)
    bad = quality_rejection(ev, scenario)
    if bad is not None:
        return bad
    if not ev.tokens_per_s > 0:
        return Rejection(ev.rejected("error", "zero throughput"), math.inf)
    w, c = scenario.workload, ev.candidate
    days = w.tokens_to_train / ev.tokens_per_s / 86400.0
    if days > w.deadline_days:
        return Rejection(ev.rejected("misses_deadline", f"takes {days:.1f} days > {w.deadline_days:g}"),
                         days / w.deadline_days)
    usd_h = c.devices * facts.usd_per_device_hour
    total = usd_h * days * 24.0
    return Ranked(ev, 1, c.devices, _nodes(c.devices, facts), usd_h,
                  total / w.tokens_to_train * 1e6, days * 86400.0, days, total)


def rank(ranked: list[Ranked]) -> list[Ranked]:
    return sorted(ranked, key=Ranked.sort_key)


def pareto_frontier(ranked: list[Ranked]) -> list[Ranked]:
    """Deployments no other beats on both cost and latency (cheapest first)."""
    out: list[Ranked] = []
    best = math.inf
    for r in sorted(ranked, key=lambda r: (r.usd_per_hour, r.latency_s, *quality_key(r.evaluation))):
        if r.latency_s < best:
            out.append(r)
            best = r.latency_s
    return out


@dataclass(frozen=True)
class RejectionGroup:
    reason: str
    meaning: str
    count: int
    example: str

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_rejections(rejections: list[Rejection], invalid: dict[str, int],
                         invalid_examples: dict[str, str]) -> list[RejectionGroup]:
    """Rejections grouped by reason, most frequent first, each with its closest example."""
    counts: Counter = Counter(invalid)
    closest: dict[str, Rejection] = {}
    for r in rejections:
        reason = r.evaluation.reason or "error"
        counts[reason] += 1
        cur = closest.get(reason)
        if cur is None or r.miss_ratio < cur.miss_ratio:
            closest[reason] = r
    groups = []
    for reason, n in counts.most_common():
        if reason in closest:
            ev = closest[reason].evaluation
            c = ev.candidate
            example = f"{c.hardware} x{c.devices} {c.layout()} batch {c.batch}: {ev.detail}"
        else:
            example = invalid_examples.get(reason, "")
        groups.append(RejectionGroup(reason, REASONS.get(reason, reason), n, example))
    return groups


def closest_rejection(rejections: list[Rejection]) -> Rejection | None:
    """The rejected deployment nearest to acceptable (smallest miss ratio)."""
    finite = [r for r in rejections if math.isfinite(r.miss_ratio)]
    if not finite:
        return None
    return min(finite, key=lambda r: r.miss_ratio)


def with_price(facts: HardwareFacts, scenario) -> HardwareFacts:
    """Apply the scenario's price override for this hardware, if any."""
    price = scenario.prices_usd_per_device_hour.get(facts.name)
    return facts if price is None else replace(facts, usd_per_device_hour=float(price))
