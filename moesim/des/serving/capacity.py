"""The largest request rate a serving system sustains within an SLO (what capacity planners ask).

``max_sustainable_rate`` runs the simulation at trial rates with one fixed seed (common random
numbers: every trial sees the same lengths and the same arrival pattern scaled by 1/rate) and
searches: doubling from ``start_rate_per_s`` until a rate fails, then bisection until the
bracket [feasible, infeasible] is narrower than ``rel_tol`` of its upper end. A rate is
feasible when every SLO limit holds at the SLO percentile over the window after a warm-up
(``ServingResult.goodput.slo_met``; unfinished requests count as misses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from moesim.des.serving.arrivals import LengthDist, synthetic
from moesim.des.serving.system import ServingSystem, simulate
from moesim.errors import SpecError
from moesim.specs import SLO


@dataclass(frozen=True)
class RateSearch:
    """Result of the search: the best feasible rate and every trial (rate, feasible)."""

    rate_per_s: float
    upper_rate_per_s: float
    rel_tol: float
    trials: tuple[tuple[float, bool], ...]
    output_tokens_per_s: float

    def to_dict(self) -> dict:
        return {"max_sustainable_rate_per_s": self.rate_per_s, "upper_rate_per_s": self.upper_rate_per_s,
                "rel_tol": self.rel_tol, "output_tokens_per_s": self.output_tokens_per_s,
                "trials": [{"rate_per_s": r, "feasible": f} for r, f in self.trials]}


def max_sustainable_rate(system: ServingSystem, prompt: LengthDist, output: LengthDist, slo: SLO, *,
                         duration_s: float = 600.0, warmup_fraction: float = 0.1, seed: int = 0,
                         start_rate_per_s: float = 1.0, rel_tol: float = 0.02, kind: str = "poisson",
                         cv: float = 1.0, max_trials: int = 40) -> RateSearch:
    """Largest Poisson (or gamma) request rate meeting ``slo`` (bisection within ``rel_tol``)."""
    if slo.ttft_s is None and slo.tpot_s is None and slo.e2e_s is None:
        raise SpecError("slo", slo.to_dict(), "give at least one of ttft_s, tpot_s, e2e_s")
    if not 0 < rel_tol < 1:
        raise SpecError("rel_tol", rel_tol, "must be in (0, 1)")
    if not start_rate_per_s > 0:
        raise SpecError("start_rate_per_s", start_rate_per_s, "must be > 0")
    trials: list[tuple[float, bool]] = []
    outputs: dict[float, float] = {}

    def ok(rate: float) -> bool:
        reqs = synthetic(kind, rate, duration_s, prompt, output, seed, cv=cv)
        res = simulate(system, reqs, slo=slo, warmup_s=warmup_fraction * duration_s,
                       window_end_s=duration_s, max_time_s=3 * duration_s + 60.0, samples=10)
        feasible = res.goodput.slo_met
        trials.append((rate, feasible))
        outputs[rate] = res.output_tokens_per_s
        return feasible

    lo, hi = _bracket(ok, start_rate_per_s, max_trials)
    while hi - lo > rel_tol * hi and len(trials) < max_trials:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return RateSearch(lo, hi, rel_tol, tuple(trials), outputs.get(lo, 0.0))


def _bracket(ok: Callable[[float], bool], start: float, max_trials: int) -> tuple[float, float]:
    """[feasible, infeasible] rates by doubling up (or halving down) from ``start``."""
    rate = start
    if ok(rate):
        for _ in range(max_trials):
            if not ok(2 * rate):
                return rate, 2 * rate
            rate *= 2
        raise SpecError("start_rate_per_s", start, "no infeasible rate found by doubling; SLO too loose?")
    for _ in range(max_trials):
        rate /= 2
        if ok(rate):
            return rate, 2 * rate
    return 0.0, rate
