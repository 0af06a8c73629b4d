"""Serving-DES verification of one candidate: how many replicas serve the target within the SLO.

The plan's question is a count: R replicas of this deployment, each taking an even share
lambda(R) = target request rate / R, meet the SLO or not. So the DES decides that count instead of
bisecting a continuous sustainable rate (which costs ~7 simulations per seed):

- probes: one co-located replica (``moesim.des.serving``) configured as the analytic stage
  assumed (:mod:`moesim.planner.serving_policy`: the same ``GridCost`` iteration costs, token
  budget per attention DP rank, sequence limit, prefill batching K; Poisson arrivals, the
  scenario's length distribution) arriving over d = ``probe_duration_s`` (``verify.duration_s``
  stretched to ten TTFT limits and 2,000 arrivals, at most ten-fold) at lambda(R), metrics over
  [0.1 d, d], simulated until every request that could still be on time has finished
  (``simulated_time_s``);
- overload: a probe whose backlog of requests waiting to decode (for their first token; when
  disaggregated, also for a decode slot after it) grows over the window
  (``moesim.des.serving.metrics.backlog``) is *missed* whatever its percentiles say. A finite
  window cannot see that a queue growing without bound breaks a TTFT (or TPOT) limit that is
  long against the window (one A100 serving 8,000-token prompts met p50 TTFT <= 60 s in a 54-s
  window at 2.3 times the load it sustains). Growth counts as overload above a tenth of the
  arrivals between the two quarters it compares and above 3 sd of their Poisson count: a replica
  that keeps up has a stationary backlog (growth within that noise), an overloaded one keeps
  1 - mu / lambda of its arrivals, so overloads past ~11% are caught (a milder one that meets
  the percentiles in the window can under-count the replicas by up to that share of the load);
- walk: start at the analytic count R0; while met, try R - 1 (down to 1); while missed, try
  R + 1 (at most ``MAX_PROBES`` probes, never past ``max_devices``). The search stops as soon as
  the count is decided: met at R*, missed at R* - 1 (or R* = 1). R* is the point answer.
- interval, per probe and SLO limit: the percentile the SLO names (unfinished requests count as
  infinitely late: ``Goodput.percentile_values``) with the simulator's own 95% batch-means
  half-width h (20 batches of consecutive requests). Over m seeds: mean estimate and half-width
  sqrt(sum h_j^2) / m (independent seeds). A probe is *met* when estimate + h <= limit for every
  limit, *missed* when estimate - h > limit for some limit, else *unsure*; an unsure probe gets
  another seed (``verify.seed + j``) up to ``verify.seeds``. The replica interval is
  [R* - 1 if that probe was unsure else R*, R* + 1 if R* was unsure else R*] (each end from one
  probe's 95% interval; no correction for the several probes). Percentiles other than 50/90/99
  have no half-width: every probe is then unsure and the interval is [R* - 1, R* + 1].
- rates reported: ``max_request_rate_per_s`` = lambda(R*) (the highest per-replica load the DES
  found within the SLO: a lower bound of the sustainable rate), ``rate_ci_low/high`` = lambda at
  the interval's ends. p99 TTFT / TPOT (and their half-widths) come from the R* probe.
Iteration costs (``GridCost``, memoized nodes) are shared by every candidate with the same
hardware and layout, in this process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.errors import MoesimError
from moesim.planner import serving_policy
from moesim.planner.evaluation import Evaluation, Verification

MAX_PROBES = 6
TTFT_WINDOWS = 10.0  # a probe's window spans at least this many TTFT limits: at d = 10 T an overload
# rho leaves the median request waiting ~(rho - 1) x 0.55 d, past T from rho ~1.18, so the SLO
# percentile itself sees what the backlog test (~1.11) might not (module docstring)
MIN_ARRIVALS = 2000  # a probe's arrivals, so that 3 sd of the half window's
# arrivals (3 sqrt(900) = 90) is no more than a tenth of them (metrics.backlog_grows)
MAX_SPAN = 10.0  # a probe spans at most this many verify.duration_s: bounds the DES work of a stretched
# probe at ten times what the scenario asked for (the default plan's verification: 0.1 s either way)
_LIMITS = ("ttft_s", "tpot_s", "e2e_s")


def _lengths(workload):
    from moesim.des.serving.arrivals import LengthDist

    if workload.length_distribution == "lognormal":
        return (LengthDist("lognormal", mean=float(workload.prompt_len), sigma=workload.length_sigma),
                LengthDist("lognormal", mean=float(workload.output_len), sigma=workload.length_sigma))
    return LengthDist.fixed(workload.prompt_len), LengthDist.fixed(workload.output_len)


def _system(ev: Evaluation, scenario, model, cache):
    """One co-located replica as the analytic stage priced it (``serving_policy``: same GridCost,
    per-rank token budget, sequence limit and prefill batching K; TensorRT-LLM's engine limits
    under its scheduler: ``des_scheduler``)."""
    from moesim.des.serving.system import Pool, ServingSystem

    c = ev.candidate
    sched = serving_policy.des_scheduler(c, scenario, model, cache, ev.decode_steps_per_prefill or 1)
    return ServingSystem(colocated=Pool(cost=serving_policy.replica_cost(c, scenario, model, cache), replicas=1,
                                        sched=sched))


@dataclass(frozen=True)
class Probe:
    """The DES at one per-replica load: SLO-percentile estimates and 95% half-widths (s), per limit."""

    replicas: int
    rate_per_s: float
    seeds: int
    estimate: dict
    half_width: dict
    ttft_p99: tuple[float, float] | None
    tpot_p99: tuple[float, float] | None
    backlog: tuple[float, float] | None = None  # (growth, arrivals between), means over seeds

    @property
    def overloaded(self) -> bool:
        """The backlog grew past a tenth of the arrivals and their 3-sd Poisson noise
        (``moesim.des.serving.metrics.backlog_grows``)."""
        if self.backlog is None:
            return False
        from moesim.des.serving.metrics import backlog_grows

        return backlog_grows(*self.backlog)

    def status(self, slo) -> str:
        """``met``, ``missed`` or ``unsure`` (module docstring)."""
        if self.overloaded:
            return "missed"
        met = True
        for name, v in self.estimate.items():
            limit, h = getattr(slo, name), self.half_width[name]
            if v - (h if math.isfinite(h) else 0.0) > limit:
                return "missed"
            met &= math.isfinite(h) and v + h <= limit
        return "met" if met else "unsure"

    def point_met(self, slo) -> bool:
        return not self.overloaded and all(v <= getattr(slo, name) for name, v in self.estimate.items())

    def to_dict(self) -> dict:
        d = {"replicas": self.replicas, "rate_per_s": self.rate_per_s, "seeds": self.seeds,
             "estimate_s": self.estimate, "half_width_s": self.half_width}
        if self.backlog is not None:
            d["backlog"] = {"growth": self.backlog[0], "arrivals_between": self.backlog[1],
                            "overloaded": self.overloaded}
        return d


def _half(stats, q: float) -> float:
    attr = {50.0: "p50_ci95", 90.0: "p90_ci95", 99.0: "p99_ci95"}.get(float(q))
    h = getattr(stats, attr) if attr else math.nan
    return float(h) if h is not None else math.nan


def _p99(stats) -> tuple[float, float] | None:
    return (float(stats.p99), float(stats.p99_ci95)) if math.isfinite(stats.p99) else None


def _run(system, scenario, rate: float, seed: int, lengths):
    from moesim.des.serving.arrivals import synthetic
    from moesim.des.serving.system import simulate

    d = probe_duration_s(scenario, rate)
    reqs = synthetic("poisson", rate, d, *lengths, seed)
    return simulate(system, reqs, slo=scenario.slo, warmup_s=0.1 * d, window_end_s=d,
                    max_time_s=simulated_time_s(d, scenario.slo, reqs), samples=10)


def probe_duration_s(scenario, rate: float) -> float:
    """Arrival span of a probe at ``rate`` requests/s: ``verify.duration_s``, longer where the SLO
    needs it, at most ``MAX_SPAN`` times that: ``TTFT_WINDOWS`` times the limit that bounds the
    first token (``slo.ttft_s``, else ``slo.e2e_s``), so that a TTFT limit long against the window
    cannot be met by a queue that has not had time to grow, and long enough for ``MIN_ARRIVALS``
    arrivals, so that the backlog test sees an overload of ~11% (module docstring)."""
    d, slo = scenario.verify.duration_s, scenario.slo
    bound = slo.ttft_s if slo.ttft_s is not None else slo.e2e_s
    need = max(TTFT_WINDOWS * bound if bound is not None else 0.0, MIN_ARRIVALS / rate if rate > 0 else 0.0)
    return max(d, min(need, MAX_SPAN * d))


def simulated_time_s(duration_s: float, slo, reqs) -> float:
    """Simulated time of a probe: long enough that a request still unfinished at the end is late.

    A request of the measured window arrives by ``duration_s``; if it meets the SLO it has its
    first token within ``ttft_s`` and its last within ``(L - 1) tpot_s`` after that (or within
    ``e2e_s``), so it is done by ``duration_s + bound(L_max)``. Stopping then (never earlier than
    3 d + 60 s) makes "unfinished counts as infinitely late" exact instead of penalising long
    requests that were on time. Without latency limits: 3 d + 60 s."""
    floor = 3.0 * duration_s + 60.0
    longest = int(reqs.output_Q.max()) if len(reqs.output_Q) else 1
    bounds = []
    if slo.ttft_s is not None and slo.tpot_s is not None:
        bounds.append(slo.ttft_s + (longest - 1) * slo.tpot_s)
    if slo.e2e_s is not None:
        bounds.append(slo.e2e_s)
    if not bounds:
        return floor
    return max(floor, duration_s + min(bounds) + 1.0)  # + 1 s: slack for the last iteration in flight


def probe(system, scenario, replicas: int, rate: float, lengths) -> Probe:
    """Simulate one load with seeds added while the outcome is unsure (module docstring)."""
    v, slo = scenario.verify, scenario.slo
    names = [n for n in _LIMITS if getattr(slo, n) is not None]
    vals: dict[str, list[float]] = {n: [] for n in names}
    halves: dict[str, list[float]] = {n: [] for n in names}
    first = None
    growth, between = [], []
    for j in range(v.seeds):
        res = _run(system, scenario, rate, v.seed + j, lengths)
        first = first or res
        growth.append(res.backlog["growth"])
        between.append(res.backlog["arrivals_between"])
        g = res.goodput
        for n in names:
            vals[n].append(float(g.percentile_values.get(n, math.inf)) if g.percentile_values else math.inf)
            halves[n].append(_half(getattr(res, n), slo.percentile))
        m = j + 1
        p = Probe(replicas, rate, m, {n: sum(vals[n]) / m for n in names},
                  {n: math.sqrt(sum(h * h for h in halves[n])) / m for n in names},
                  _p99(first.ttft_s), _p99(first.tpot_s), (sum(growth) / m, sum(between) / m))
        if p.status(slo) != "unsure":
            break
    return p


def decide_replicas(system, scenario, r0: int, devices: int, lengths) -> tuple[int | None, dict[int, Probe]]:
    """(R*, probes by replica count): the walk of the module docstring; R* None when no count up
    to the probe limit meets the SLO. A walk down cut short by the limit returns the lowest count
    met (then R* - 1 is absent from the probes: an upper bound, not decided)."""
    target = scenario.target_output_tokens_per_s / scenario.workload.output_len
    slo, probes = scenario.slo, {}

    def at(r: int) -> Probe:
        if r not in probes:
            probes[r] = probe(system, scenario, r, target / r, lengths)
        return probes[r]

    r = max(1, r0)
    if at(r).point_met(slo):
        while r > 1 and len(probes) < MAX_PROBES and at(r - 1).point_met(slo):
            r -= 1
        return r, probes
    while len(probes) < MAX_PROBES and (r + 1) * devices <= scenario.max_devices:
        r += 1
        if at(r).point_met(slo):
            return r, probes
    return None, probes


def verify_with_des(ev: Evaluation, scenario, model, cache=None) -> Verification | None:
    """Replicas needed for the target within the SLO, with an interval (module docstring).
    ``cache``: the evaluator's ``PlanCache`` (a fresh one when None)."""
    from moesim.planner.costs import PlanCache

    cache = PlanCache() if cache is None else cache
    try:
        system = _system(ev, scenario, model, cache)
    except ImportError:  # the serving simulator is not available: the plan stays analytic
        return None
    except MoesimError as err:
        return Verification(ev.candidate, 0.0, 0.0, 0.0, 0.0, notes=(f"not simulated: {err}",))
    w, c = scenario.workload, ev.candidate
    target = scenario.target_output_tokens_per_s / w.output_len
    r0 = math.ceil(scenario.target_output_tokens_per_s / ev.tokens_per_s - 1e-9) if ev.tokens_per_s > 0 else 1
    best, probes = decide_replicas(system, scenario, r0, c.devices, _lengths(w))
    trials = tuple(p.to_dict() for p in sorted(probes.values(), key=lambda p: p.replicas))
    if best is None:
        return Verification(c, 0.0, 0.0, 0.0, 0.0, engine="serving DES", probes=trials,
                            notes=(f"undecided: the SLO is missed up to {max(probes)} replicas",))
    slo, p = scenario.slo, probes[best]
    below = probes.get(best - 1)
    lo = best - 1 if below is not None and below.status(slo) != "missed" else best
    notes = () if best == 1 or below is not None else (
        f"{best - 1} replicas not probed (probe limit {MAX_PROBES}): {best} is an upper bound",)
    if below is not None and below.overloaded:
        notes += (f"{best - 1} replicas do not keep up: at {target / (best - 1):.3g} req/s per replica the queue "
                  "waiting to decode grows over the window",)
    hi = best + 1 if p.status(slo) != "met" else best
    rate = target / best
    ttft, tpot = p.ttft_p99, p.tpot_p99
    return Verification(
        candidate=c, max_request_rate_per_s=rate, rate_ci_low=target / hi, rate_ci_high=target / lo,
        output_tokens_per_s=rate * w.output_len,
        ttft_p99_s=ttft[0] if ttft else None, tpot_p99_s=tpot[0] if tpot else None,
        ttft_p99_ci=(ttft[0] - ttft[1], ttft[0] + ttft[1]) if ttft and math.isfinite(ttft[1]) else None,
        tpot_p99_ci=(tpot[0] - tpot[1], tpot[0] + tpot[1]) if tpot and math.isfinite(tpot[1]) else None,
        engine="serving DES", notes=notes, replicas=best, replicas_ci=(lo, hi), probes=trials,
    )
