"""Serving-DES verification of one candidate: the per-replica rate it sustains under the SLO.

Uses the serving simulator (moesim.des.serving): one co-located replica whose iteration costs
come from the step model (``from_deployment``), continuous batching with at most
``batch x devices`` sequences in flight, Poisson arrivals and the scenario's length distribution.
``max_sustainable_rate`` searches the request rate meeting the SLO at its percentile, starting at
the analytic rate; it is run for ``verify.seeds`` seeds.

Interval on the rate: with 3 or more seeds a 95% t-interval over the seeds; with fewer, the span
of the seeds' bisection brackets [feasible, first infeasible] (every seed's answer lies inside).
The p99 TTFT / TPOT come from one more simulation at the lowest seed's sustainable rate with that
seed (a load the search found feasible), with their 95% batch-means half-widths (the simulator's
own intervals).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from moesim.catalog import load_profile
from moesim.errors import MoesimError
from moesim.planner.evaluation import Evaluation, Verification
from moesim.planner.scenario import overlap_mode
from moesim.specs import Cluster

REL_TOL = 0.05


def _lengths(workload):
    from moesim.des.serving.arrivals import LengthDist

    if workload.length_distribution == "lognormal":
        return (LengthDist("lognormal", mean=float(workload.prompt_len), sigma=workload.length_sigma),
                LengthDist("lognormal", mean=float(workload.output_len), sigma=workload.length_sigma))
    return LengthDist.fixed(workload.prompt_len), LengthDist.fixed(workload.output_len)


def _system(ev: Evaluation, scenario, model):
    from moesim.des.serving.deployment import from_deployment
    from moesim.des.serving.replica import SchedulerConfig
    from moesim.des.serving.system import Pool, ServingSystem

    c, w = ev.candidate, scenario.workload
    hw = load_profile(c.hardware)
    cost = from_deployment(model, hw, Cluster(hardware=hw.name, devices=c.devices), c.parallelism(),
                           dtype=w.dtype, kv_dtype=w.kv_dtype, overlap=overlap_mode(scenario, model),
                           prompt_len_hint=w.prompt_len)
    seqs = c.batch * c.devices // c.pp
    sched = SchedulerConfig(token_budget=max(8192, seqs), max_seqs=seqs)
    return ServingSystem(colocated=Pool(cost=cost, replicas=1, sched=sched))


def _interval(rates: list[float], uppers: list[float], lowers: list[float]) -> tuple[float, float]:
    if len(rates) >= 3:
        half = stats.t.ppf(0.975, len(rates) - 1) * np.std(rates, ddof=1) / math.sqrt(len(rates))
        return float(np.mean(rates) - half), float(np.mean(rates) + half)
    return float(min(lowers)), float(max(uppers))


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _ci(lat) -> tuple[float, float] | None:
    if not (math.isfinite(lat.p99) and math.isfinite(lat.p99_ci95)):
        return None
    return float(lat.p99 - lat.p99_ci95), float(lat.p99 + lat.p99_ci95)


def verify_with_des(ev: Evaluation, scenario, model) -> Verification | None:
    """Per-replica sustainable request rate under ``scenario.slo`` (module docstring)."""
    try:
        from moesim.des.serving.capacity import max_sustainable_rate
        from moesim.des.serving.system import simulate
        from moesim.des.serving.arrivals import synthetic
    except ImportError:  # the serving simulator is not available: the plan stays analytic
        return None
    v, w = scenario.verify, scenario.workload
    prompt, output = _lengths(w)
    try:
        system = _system(ev, scenario, model)
    except MoesimError as err:
        return Verification(ev.candidate, 0.0, 0.0, 0.0, 0.0, notes=(f"not simulated: {err}",))
    start = max(ev.tokens_per_s / w.output_len, 1e-3)
    searches = [max_sustainable_rate(system, prompt, output, scenario.slo, duration_s=v.duration_s,
                                     seed=v.seed + i, start_rate_per_s=start, rel_tol=REL_TOL)
                for i in range(v.seeds)]
    rates = [s.rate_per_s for s in searches]
    lo, hi = _interval(rates, [s.upper_rate_per_s for s in searches], rates)
    rate = float(np.mean(rates))
    notes = ()
    ttft = tpot = ttft_ci = tpot_ci = None
    worst = int(np.argmin(rates))
    if rates[worst] > 0:
        # latencies at the lowest seed's sustainable rate, with that seed: a load the SLO search
        # itself found feasible (so the reported p99 is within the SLO by construction)
        reqs = synthetic("poisson", rates[worst], v.duration_s, prompt, output, v.seed + worst)
        res = simulate(system, reqs, slo=scenario.slo, warmup_s=0.1 * v.duration_s, window_end_s=v.duration_s,
                       samples=10)
        ttft, tpot = res.ttft_s.p99, res.tpot_s.p99
        ttft_ci, tpot_ci = _ci(res.ttft_s), _ci(res.tpot_s)
        ttft, tpot = _finite(ttft), _finite(tpot)
    else:
        notes = ("the SLO is missed even at the lowest rate tried",)
    return Verification(
        candidate=ev.candidate, max_request_rate_per_s=rate, rate_ci_low=lo, rate_ci_high=hi,
        output_tokens_per_s=rate * w.output_len, ttft_p99_s=ttft, tpot_p99_s=tpot,
        ttft_p99_ci=ttft_ci, tpot_p99_ci=tpot_ci, engine="serving DES", notes=notes,
    )
