"""A staged pilot of the plan's answer: stages at their true load, gates, rollback thresholds.

The pilot runs the production answer itself (its hardware, layout and batch limit) on a share of
the traffic per stage (default 1%, 10%, 50%, 100%). Stage ``s`` of an answer with ``R`` replicas
uses ``r_s = max(1, ceil(s x R))`` replicas, each taking ``lambda_s = s x target rate / r_s``
requests/s. Its expected values are those of that load, not of full load: the serving DES
(:mod:`moesim.planner.verify`'s replica, the same iteration costs the plan priced) is run at
``lambda_s`` for ``verify.seeds`` seeds, each long enough for ``MIN_REQUESTS`` requests. At 1% a
replica decodes far fewer sequences at once than at full load, so its TPOT and TTFT are lower.

Per watched metric: the expected value, a band, the gate to the next stage and the rollback
threshold.
- p99 TPOT / TTFT (s): band = expected +- max(the DES's 95% half-width, the measured error of
  serving forecasts ``e``: :mod:`moesim.provenance`, widened for prior-only profiles); gate:
  observed <= min(band high, SLO); roll back: observed > SLO.
- output tokens/s per replica: below saturation a replica serves what it is offered, so expected
  = offered load (the DES's windowed measurement is reported beside it); gate: >= 98% of offered (no queue building); roll back: < 90% of offered.
- drop fraction (the quality proxy until a quality model exists) and expert imbalance: the
  routing model's values at the plan's batch; gate: drops <= max(2 x expected, 1e-4), imbalance <=
  1.25 x expected; roll back: drops > ``limits.max_drop_fraction``, imbalance > 1.5 x expected.
A stage should run for at least ``max(MIN_STAGE_S, P99_REQUESTS / its request rate)`` (1,000
requests put 10 above a p99) before its gate is read.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moesim.errors import SpecError
from moesim.planner.plan import PlanResult
from moesim.planner.scenario import ServingScenario, scenario_model
from moesim.planner.whatif import apply_changes

DEFAULT_STAGES = (0.01, 0.10, 0.50, 1.00)
MIN_REQUESTS = 400  # per DES seed and stage
P99_REQUESTS = 1000
MIN_STAGE_S = 3600.0


@dataclass(frozen=True)
class Watch:
    """One metric of one stage: what to expect, when to proceed, when to roll back."""

    metric: str
    unit: str
    expected: float
    band_low: float
    band_high: float
    gate: str
    gate_value: float
    rollback_if: str
    rollback_value: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Stage:
    """One pilot stage at its own load."""

    share: float
    replicas: int
    devices: int
    request_rate_per_replica: float
    offered_output_tokens_per_s: float
    min_duration_s: float
    usd_per_hour: float
    watches: tuple[Watch, ...]

    def watch(self, metric: str) -> Watch:
        return next(w for w in self.watches if w.metric == metric)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["watches"] = [w.to_dict() for w in self.watches]
        return d


@dataclass(frozen=True)
class StagedPilot:
    """The stages of a pilot of ``plan``'s answer."""

    scenario: str
    hardware: str
    layout: str
    batch: int
    devices_per_replica: int
    replicas_full: int
    error: float
    error_source: str
    stages: tuple[Stage, ...]
    plan: PlanResult

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "hardware": self.hardware, "layout": self.layout, "batch": self.batch,
                "devices_per_replica": self.devices_per_replica, "replicas_full": self.replicas_full,
                "forecast_error": self.error, "forecast_error_source": self.error_source,
                "stages": [s.to_dict() for s in self.stages], "plan": self.plan.to_dict(top=5)}

    def checklist(self) -> str:
        """A Markdown runbook: one section per stage with its gate and rollback lines."""
        out = [f"# Pilot runbook: {self.scenario}",
               f"Deployment: {self.hardware}, {self.layout}, batch {self.batch}/device, "
               f"{self.devices_per_replica} devices per replica ({self.replicas_full} replica(s) at 100%).",
               f"Bands include the measured serving forecast error +-{self.error:.0%} ({self.error_source}).", ""]
        for i, s in enumerate(self.stages, 1):
            out.append(f"## Stage {i}: {s.share:.0%} of traffic ({s.replicas} replica(s), {s.devices} devices, "
                       f"{s.request_rate_per_replica:.3g} req/s per replica, ${s.usd_per_hour:,.2f}/h)")
            out.append(f"- [ ] run at least {s.min_duration_s / 3600:.1f} h before reading the gate")
            for w in s.watches:
                out.append(f"- [ ] {w.metric}: expect {_fmt(w.expected, w.unit)} (band {_fmt(w.band_low, w.unit)}-"
                           f"{_fmt(w.band_high, w.unit)}); proceed if {w.gate}; ROLL BACK if {w.rollback_if}")
            out.append("")
        return "\n".join(out)


def _fmt(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x * 1e3:.1f} ms"
    if unit == "tok/s":
        return f"{x:,.0f} tok/s"
    return f"{x:.4g}"


def _latency(name: str, est: float, half: float, e: float, slo: float | None, src: str) -> Watch:
    spread = max(half if math.isfinite(half) else 0.0, e * est)
    lo, hi = max(0.0, est - spread), est + spread
    gate = min(hi, slo) if slo is not None else hi
    back = slo if slo is not None else hi
    return Watch(name, "s", est, lo, hi, f"{name} <= {gate * 1e3:.1f} ms", gate,
                 f"{name} > {back * 1e3:.1f} ms" + (" (the SLO)" if slo is not None else ""), back, src)


def _des_at(system, scenario: ServingScenario, rate: float, lengths) -> dict:
    """p99 TPOT/TTFT (mean over seeds) with the 95% half-width sqrt(sum h^2)/m, and tokens/s."""
    from moesim.des.serving.arrivals import synthetic
    from moesim.des.serving.system import simulate

    v = scenario.verify
    d = max(v.duration_s, MIN_REQUESTS / rate)
    acc: dict[str, list] = {"tpot": [], "ttft": [], "tok": []}
    for j in range(v.seeds):
        reqs = synthetic("poisson", rate, d, *lengths, v.seed + j)
        res = simulate(system, reqs, slo=scenario.slo, warmup_s=0.1 * d, window_end_s=d, max_time_s=3 * d + 60.0,
                       samples=10)
        acc["tpot"].append((res.tpot_s.p99, res.tpot_s.p99_ci95))
        acc["ttft"].append((res.ttft_s.p99, res.ttft_s.p99_ci95))
        acc["tok"].append(res.output_tokens_per_s)
    m = len(acc["tok"])

    def mean_half(pairs):
        return (sum(p for p, _ in pairs) / m,
                math.sqrt(sum((h if h is not None and math.isfinite(h) else math.inf) ** 2 for _, h in pairs)) / m)

    return {"tpot": mean_half(acc["tpot"]), "ttft": mean_half(acc["ttft"]), "tokens_per_s": sum(acc["tok"]) / m,
            "duration_s": d, "seeds": m}


def staged_pilot(scenario: ServingScenario, result: PlanResult, *, error: float, error_source: str = "",
                 stages: tuple[float, ...] = DEFAULT_STAGES, price_per_device_hour: float | None = None,
                 progress: bool = False, cache=None) -> StagedPilot:
    """Stages of a pilot of ``result``'s answer (module docstring); ``error`` is the relative
    serving forecast error the bands carry (``moesim.provenance``); ``progress``: a bar over
    the stages on stderr; ``cache``: the plan's evaluator's ``PlanCache`` (moesim/planner/costs.py;
    a fresh one when None: the replica is priced anew, to the same numbers)."""
    from moesim.planner.costs import PlanCache
    from moesim.progress import bar
    from moesim.planner.verify import _lengths, _system

    if scenario.kind != "serving":
        raise SpecError("scenario.kind", scenario.kind, "a pilot needs a serving scenario")
    if not stages or any(not 0 < s <= 1 for s in stages) or list(stages) != sorted(stages):
        raise SpecError("--stages", stages, "increasing shares in (0, 1], e.g. 0.01,0.1,0.5,1")
    if not 0 <= error < 1:
        raise SpecError("error", error, "a relative error in [0, 1)")
    a = result.answer
    if a is None:
        result.require_feasible()
    ev, c = a.ranked.evaluation, a.ranked.candidate
    price = price_per_device_hour if price_per_device_hour is not None else a.usd_per_hour / a.total_devices
    system = _system(ev, scenario, scenario_model(scenario), PlanCache() if cache is None else cache)
    lengths = _lengths(scenario.workload)
    target = scenario.target_output_tokens_per_s / scenario.workload.output_len
    out = []
    for share in bar(stages, total=len(stages), desc="pilot stages (serving DES)", enabled=progress):
        reps = max(1, math.ceil(share * a.replicas - 1e-9))
        rate = share * target / reps
        stage_scn = apply_changes(scenario, {"verify.duration_s": max(scenario.verify.duration_s, MIN_REQUESTS / rate)})
        des = _des_at(system, stage_scn, rate, lengths)
        src = f"serving DES at this load ({des['seeds']} seeds x {des['duration_s']:.0f} s) +-{error:.0%} forecast error"
        offered = rate * scenario.workload.output_len
        out.append(Stage(
            share, reps, reps * c.devices, rate, offered * reps,
            max(MIN_STAGE_S, P99_REQUESTS / (rate * reps)), reps * c.devices * price,
            (_latency("p99 TPOT", *des["tpot"], error, scenario.slo.tpot_s, src),
             _latency("p99 TTFT", *des["ttft"], error, scenario.slo.ttft_s, src),
             Watch("output tokens/s per replica", "tok/s", offered, offered * 0.98, offered,
                   f">= {offered * 0.98:,.0f} tok/s (98% of offered)", offered * 0.98,
                   f"< {offered * 0.9:,.0f} tok/s (90% of offered: the replica falls behind)", offered * 0.9,
                   f"offered load (a replica below saturation serves what it is offered); the DES's window "
                   f"measured {des['tokens_per_s']:,.0f} tok/s"),
             Watch("drop fraction (quality proxy)", "fraction", ev.drop_fraction, 0.0,
                   max(2 * ev.drop_fraction, 1e-4), f"<= {max(2 * ev.drop_fraction, 1e-4):.3g}",
                   max(2 * ev.drop_fraction, 1e-4), f"> {scenario.limits.max_drop_fraction:g} (the plan's limit)",
                   scenario.limits.max_drop_fraction, "routing model at the plan's batch and skew"),
             Watch("expert imbalance (max/mean)", "ratio", ev.imbalance, 1.0, 1.25 * ev.imbalance,
                   f"<= {1.25 * ev.imbalance:.3g}", 1.25 * ev.imbalance,
                   f"> {1.5 * ev.imbalance:.3g} (routing differs from the plan)", 1.5 * ev.imbalance,
                   "routing model at the plan's batch and skew")),
        ))
    return StagedPilot(scenario.name, c.hardware, c.layout(), c.batch, c.devices, a.replicas, error,
                       error_source, tuple(out), result)
