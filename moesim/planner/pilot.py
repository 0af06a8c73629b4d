"""Pilot plan: the smallest deployment that serves a share of the traffic, what to watch, when to roll back.

The pilot is planned as the scenario with its target scaled by ``share``; among the deployments
that meet it, the one with the fewest devices (then the cheapest) is the pilot. Each watched
metric gets its expected value and a band:
- latency (p99 TPOT, p99 TTFT): the DES's 95% interval when verified, else the analytic value
  +- ``model_uncertainty`` (the step model's validation target: median error <= 20%);
- output tokens/s per device: expected +- model_uncertainty;
- drop fraction and expert imbalance: expected value, band up to 1.5x.
Roll back when a p99 latency passes its SLO, throughput per device falls below the band's low end,
the drop fraction passes ``limits.max_drop_fraction`` (quality proxy), or imbalance passes 1.5x
its expected value (a routing shift the plan did not assume).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from moesim.errors import SpecError
from moesim.planner.plan import PlanResult, default_evaluator, plan
from moesim.planner.rank import quality_key
from moesim.planner.scenario import ServingScenario
from moesim.planner.whatif import apply_changes

MODEL_UNCERTAINTY = 0.20


@dataclass(frozen=True)
class Watch:
    metric: str
    unit: str
    expected: float
    band_low: float
    band_high: float
    rollback_if: str
    threshold: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PilotPlan:
    share: float
    plan: PlanResult
    hardware: str
    devices: int
    layout: str
    batch: int
    usd_per_hour: float
    watches: tuple[Watch, ...]

    def to_dict(self) -> dict:
        return {"share": self.share, "hardware": self.hardware, "devices": self.devices, "layout": self.layout,
                "batch": self.batch, "usd_per_hour": self.usd_per_hour,
                "watch": [w.to_dict() for w in self.watches], "plan": self.plan.to_dict(top=5)}


def _latency_watch(name: str, expected: float, ci, slo: float | None, verified: bool) -> Watch:
    if verified and ci:
        lo, hi, src = ci[0], ci[1], "serving DES 95% interval"
    else:
        lo, hi = expected * (1 - MODEL_UNCERTAINTY), expected * (1 + MODEL_UNCERTAINTY)
        src = f"analytic +-{MODEL_UNCERTAINTY:.0%} (model uncertainty)"
    limit = slo if slo is not None else hi
    return Watch(name, "s", expected, lo, hi, f"{name} > {limit:.4g} s", limit, src)


def pilot_plan(scenario: ServingScenario, share: float = 0.1, *, evaluator=None) -> PilotPlan:
    """The smallest deployment serving ``share`` of the scenario's traffic, with watches and rollbacks."""
    if scenario.kind != "serving":
        raise SpecError("scenario.kind", scenario.kind, "a pilot plan needs a serving scenario")
    if not 0 < share <= 1:
        raise SpecError("--share", share, "must be in (0, 1]")
    w = scenario.workload
    changes = ({"workload.target_output_tokens_per_s": w.target_output_tokens_per_s * share}
               if w.target_output_tokens_per_s is not None else {"workload.request_rate": w.request_rate * share})
    pilot_scenario = apply_changes(scenario, changes)
    result = plan(pilot_scenario, evaluator or default_evaluator(), executor="inline").require_feasible()
    best = min(result.ranked, key=lambda r: (r.total_devices, r.usd_per_hour, *quality_key(r.evaluation), r.latency_s))
    ev, c = best.evaluation, best.candidate
    v = result.answer.verification if result.answer and result.answer.ranked is best else None
    slo = scenario.slo
    tpot = v.tpot_p99_s if v and v.tpot_p99_s is not None else ev.tpot_s
    ttft = v.ttft_p99_s if v and v.ttft_p99_s is not None else ev.ttft_s
    per_dev = ev.tokens_per_s / c.devices
    u = MODEL_UNCERTAINTY
    watches = (
        _latency_watch("p99 TPOT", tpot, v.tpot_p99_ci if v else None, slo.tpot_s, v is not None),
        _latency_watch("p99 TTFT", ttft, v.ttft_p99_ci if v else None, slo.ttft_s, v is not None),
        Watch("output tokens/s per device", "tok/s", per_dev, per_dev * (1 - u), per_dev * (1 + u),
              f"below {per_dev * (1 - u):,.0f} tok/s per device at full load", per_dev * (1 - u),
              f"analytic +-{u:.0%}"),
        Watch("drop fraction", "fraction", ev.drop_fraction, 0.0, max(ev.drop_fraction * 1.5, 1e-4),
              f"drop fraction > {scenario.limits.max_drop_fraction:g} (quality proxy)",
              scenario.limits.max_drop_fraction, "routing model at the scenario's skew"),
        Watch("expert imbalance (max/mean)", "ratio", ev.imbalance, 1.0, ev.imbalance * 1.5,
              f"imbalance > {ev.imbalance * 1.5:.2f} (routing differs from the plan)", ev.imbalance * 1.5,
              "routing model at the scenario's skew"),
    )
    return PilotPlan(share, result, c.hardware, best.total_devices, c.layout(), c.batch, best.usd_per_hour, watches)
