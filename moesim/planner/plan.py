"""``plan(scenario)``: search, judge, rank, verify the best with the serving DES, answer with a CI.

Stages: (1) enumerate the space (:mod:`space`); (2) evaluate every candidate with the evaluator
(analytic step model, memoized per hardware x layout x batch, + memory model by default) through an executor (:mod:`sweep`);
(3) judge each evaluation against the SLO / deadline and cost it (:mod:`rank`); (4) verify the
cheapest serving candidate of each of the ``verify.top_n`` cheapest hardware types with the
serving DES (:mod:`verify`: the replicas needed and their 95% interval), and the answer is the
cheapest verified deployment.
With ``screen=True`` (serving) stage (2) is preceded by a screening pass of lower bounds
(:mod:`screen`) and evaluates exactly only the layouts that may hold one of the ``screen_keep``
cheapest deployments or a hardware's cheapest; the top of the ranking and the answer are the
unscreened plan's (tests/test_planner_screen.py), the rest is summarized as ``screened_out``.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import asdict, dataclass, field, replace

from moesim.errors import InfeasibleError, SpecError
from moesim.planner.evaluation import Evaluation, HardwareFacts, Verification
from moesim.planner.quality_cost import LIMITS as QUALITY_LIMITS
from moesim.planner.rank import (
    Ranked, Rejection, RejectionGroup, closest_rejection, judge_serving, judge_training,
    pareto_frontier, rank, summarize_rejections,
)
from moesim.planner.scenario import Scenario, scenario_model
from moesim.planner.space import serving_space, training_space
from moesim.planner.sweep import run_sweep


@dataclass(frozen=True)
class Answer:
    """The recommended deployment; ``*_ci`` are 95% intervals from the DES seeds (None if unverified)."""

    ranked: Ranked
    verified: bool
    replicas: int
    total_devices: int
    usd_per_hour: float
    usd_per_million_tokens: float
    devices_ci: tuple[int, int] | None = None
    usd_per_hour_ci: tuple[float, float] | None = None
    verification: Verification | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranked"] = self.ranked.to_dict()
        d["verification"] = self.verification.to_dict() if self.verification else None
        return d


@dataclass(frozen=True)
class PlanResult:
    """Everything a plan found: ranked candidates, frontier, rejections, the answer."""

    scenario: Scenario
    evaluator: str
    ranked: tuple[Ranked, ...]
    frontier: tuple[Ranked, ...]
    rejected: tuple[RejectionGroup, ...]
    answer: Answer | None
    closest: Rejection | None
    evaluated: int
    space_size: int
    timings_s: dict = field(default_factory=dict)
    verifications: tuple[Verification, ...] = ()
    # serving modes (moesim/planner/modes.py): the disaggregated search and which mode wins
    disaggregated: object | None = None
    modes: object | None = None

    @property
    def feasible(self) -> bool:
        return bool(self.ranked) or bool(self.disaggregated is not None and self.disaggregated.best is not None)

    @property
    def failed(self) -> RejectionGroup | None:
        """The candidates whose evaluation raised (reason ``error``), or None."""
        return next((g for g in self.rejected if g.reason == "error"), None)

    def require_feasible(self) -> "PlanResult":
        """Raise InfeasibleError naming the closest candidate and what it lacks when nothing passed;
        when evaluations failed, their error is the answer's error (the failed candidates might
        have met the target)."""
        if self.feasible:
            return self
        failed = self.failed
        if failed is not None:
            raise InfeasibleError(f"{self.scenario.name}: no answer: {failed.count} of {self.evaluated} evaluated "
                                  f"candidates failed with an error, e.g. {failed.example}")
        if self.disaggregated is not None:
            co = "co-located: not searched" if "colocated" not in self.scenario.modes else (
                "co-located: nothing could be evaluated") if self.closest is None else (
                f"co-located: closest is {_closest_text(self.closest)}")
            raise InfeasibleError(f"{self.scenario.name}: no deployment meets the target; {co}; "
                                  f"disaggregated: {self.disaggregated.lacks()}")
        if self.closest is None:
            raise InfeasibleError(f"{self.scenario.name}: no candidate could be evaluated "
                                  f"({self.space_size} in the search space)")
        ev = self.closest.evaluation
        c = ev.candidate
        raise InfeasibleError(
            f"{self.scenario.name}: no deployment meets the target; closest is {c.hardware} x{c.devices} "
            f"{c.layout()} batch {c.batch}, which {ev.reason.replace('_', ' ')}: {ev.detail}"
        )

    def to_dict(self, top: int | None = None) -> dict:
        ranked = self.ranked if top is None else self.ranked[:top]
        return {
            "scenario": self.scenario.to_dict(),
            "evaluator": self.evaluator,
            "answer": self.answer.to_dict() if self.answer else None,
            "candidates": [_row(r) for r in ranked],
            "quality_limits": QUALITY_LIMITS,
            "frontier": [r.candidate.key() for r in self.frontier],
            "rejected": [g.to_dict() for g in self.rejected],
            "closest": ({"key": self.closest.evaluation.candidate.key(), "reason": self.closest.evaluation.reason,
                         "detail": self.closest.evaluation.detail} if self.closest else None),
            "verifications": [v.to_dict() for v in self.verifications],
            "evaluated": self.evaluated,
            "space_size": self.space_size,
            "timings_s": self.timings_s,
            **({"disaggregated": self.disaggregated.to_dict(), "modes": self.modes.to_dict() if self.modes else None}
               if self.disaggregated is not None else {}),
        }


def _closest_text(rej: Rejection) -> str:
    ev = rej.evaluation
    c = ev.candidate
    return f"{c.hardware} x{c.devices} {c.layout()} batch {c.batch}, which {ev.reason.replace('_', ' ')}: {ev.detail}"


def _row(r: Ranked) -> dict:
    """One flat ranked row (the --json ``candidates`` entries and the CSV columns)."""
    ev, c = r.evaluation, r.candidate
    return {
        "rank_key": c.key(), "hardware": c.hardware, "devices_per_replica": c.devices,
        "replicas": r.replicas, "devices": r.total_devices, "nodes": r.nodes,
        "tp": c.tp, "ep": c.ep, "etp": c.etp, "pp": c.pp, "dp": c.dp, "attention_layout": c.attention_layout,
        "batch": c.batch, "capacity_factor": c.capacity_factor, "redundant_experts": c.redundant_experts,
        "tokens_per_s": ev.tokens_per_s, "tokens_per_s_per_device": ev.tokens_per_s / c.devices,
        "tpot_s": ev.tpot_s, "ttft_s": ev.ttft_s, "step_time_s": ev.step_time_s,
        "memory_headroom_GiB": ev.memory_headroom_GiB, "usd_per_hour": r.usd_per_hour,
        "usd_per_million_tokens": r.usd_per_million_tokens, "bottleneck": ev.bottleneck,
        "drop_fraction": ev.drop_fraction, "reroute_fraction": ev.reroute_fraction,
        "backup_fraction": ev.backup_fraction, "loss_increase": ev.loss_increase,
        "loss_increase_low": ev.loss_increase_low, "loss_increase_high": ev.loss_increase_high, "imbalance": ev.imbalance, "mfu": ev.mfu,
        "decode_steps_per_prefill": ev.decode_steps_per_prefill,
        "days": r.days, "total_usd": r.total_usd,
    }


def default_evaluator():
    """The real evaluator: analytic step model + memory model, serving DES for verification."""
    from moesim.planner.analytic import AnalyticEvaluator

    return AnalyticEvaluator()


def _facts(scenario, evaluator) -> dict[str, HardwareFacts]:
    """Each candidate hardware's facts, priced on the scenario's one price basis (moesim.prices)."""
    from moesim.prices import apply

    facts = {hw: evaluator.hardware(hw) for hw in scenario.hardware}
    return apply(price_basis(scenario, facts), facts)


def price_basis(scenario, facts: dict[str, HardwareFacts]):
    """The scenario's PriceBasis over ``facts`` (raises when providers mix without a stated basis)."""
    from moesim.catalog import list_profiles
    from moesim.prices import PriceEntry, PricesSpec, resolve

    listed = {hw: f.price or PriceEntry(hw, f.usd_per_device_hour, "evaluator", "list", "", "")
              for hw, f in facts.items()}
    if all(f.price is None for f in facts.values()):  # an evaluator without price lists (a test double)
        spec = scenario.prices
        return resolve(PricesSpec(usd_per_device_hour=spec.usd_per_device_hour, source=spec.source),
                       listed, scenario.prices_usd_per_device_hour, known=list_profiles())
    return resolve(scenario.prices, listed, scenario.prices_usd_per_device_hour, known=list_profiles())


def verify_targets(ranked: list[Ranked], n: int) -> list[Ranked]:
    """The cheapest candidate of each of the ``n`` cheapest hardware types (rank order): near
    duplicates of one deployment (the same hardware at another batch) are not re-verified."""
    out, seen = [], set()
    for r in ranked:
        if len(out) >= n:
            break
        if r.candidate.hardware not in seen:
            seen.add(r.candidate.hardware)
            out.append(r)
    return out


def _verify(scenario, evaluator, ranked: list[Ranked], facts) -> tuple[Answer | None, list[Verification]]:
    """DES-check ``verify_targets``; the answer is the cheapest verified (a verification that
    could not decide is listed but never the answer)."""
    if not ranked:
        return None, []
    n = scenario.verify.top_n if scenario.kind == "serving" else 0
    verifier = getattr(evaluator, "verify", None)
    answers, checks = [], []
    for r in verify_targets(ranked, n) if verifier else []:
        v = verifier(r.evaluation, scenario)
        if v is None:
            continue
        checks.append(v)
        if v.replicas is not None or v.max_request_rate_per_s > 0:
            answers.append(_answer_from(scenario, r, v, facts[r.candidate.hardware]))
    if not answers:
        r = ranked[0]
        return Answer(r, False, r.replicas, r.total_devices, r.usd_per_hour, r.usd_per_million_tokens), checks
    return min(answers, key=lambda a: (a.usd_per_hour, a.ranked.sort_key())), checks


def _answer_from(scenario, r: Ranked, v: Verification, facts: HardwareFacts) -> Answer:
    rate = scenario.target_output_tokens_per_s / scenario.workload.output_len
    n = r.candidate.devices

    def replicas(per_replica: float) -> int:
        return math.ceil(rate / per_replica - 1e-9) if per_replica > 0 else 10**9

    if v.replicas is not None:  # the verifier decided the count (and its interval) itself
        reps, (lo, hi) = v.replicas, v.replicas_ci or (v.replicas, v.replicas)
    else:
        reps, lo, hi = replicas(v.max_request_rate_per_s), replicas(v.rate_ci_high), replicas(v.rate_ci_low)
    usd = reps * n * facts.usd_per_device_hour
    return Answer(
        r, True, reps, reps * n, usd, usd / (scenario.target_output_tokens_per_s * 3600.0) * 1e6,
        devices_ci=(lo * n, hi * n),
        usd_per_hour_ci=(lo * n * facts.usd_per_device_hour, hi * n * facts.usd_per_device_hour),
        verification=v,
    )


def plan(scenario: Scenario, evaluator=None, *, executor: str = "local", address=None,
         workers: int | None = None, results_path=None, progress: bool = False,
         chunk_size: int = 2048, screen: bool = False, screen_keep: int = 10) -> PlanResult:
    """Search ``scenario``'s space and rank what meets it (see the module docstring). ``screen``
    (serving): screen the space first (:mod:`moesim.planner.screen`) and evaluate exactly only the
    layouts that may hold one of the ``screen_keep`` cheapest deployments or a hardware's cheapest
    (those, and the answer, are then the unscreened plan's; the others are reported as
    ``screened_out``); the exact layouts run inline (``executor``, ``results_path`` and
    ``progress`` apply to the unscreened sweep only). Screening applies to the analytic evaluator
    only (its bounds are that model's); other evaluators are swept unscreened."""
    evaluator = evaluator or default_evaluator()
    t0 = time.perf_counter()
    model = scenario_model(scenario)
    facts = _facts(scenario, evaluator)
    space = (serving_space if scenario.kind == "serving" else training_space)(scenario, model)
    judge = judge_serving if scenario.kind == "serving" else judge_training
    ranked, rejections = [], []
    timings: dict = {}
    if screen_keep < 1:
        raise SpecError("screen_keep", screen_keep, "at least 1")
    if screen and scenario.kind == "serving" and _screenable(evaluator) and _featureless(scenario):
        evals = _screened_sweep(space.candidates, scenario, model, evaluator, facts, screen_keep, ranked,
                                rejections, timings)
    elif scenario.kind == "serving" and "colocated" not in scenario.modes:
        evals = []
    else:
        evals = run_sweep(space.candidates, scenario, evaluator, executor=executor, address=address,
                          workers=workers, results_path=results_path, progress=progress, chunk_size=chunk_size)
        for ev in evals:
            out = judge(ev, scenario, facts[ev.candidate.hardware])
            (ranked if isinstance(out, Ranked) else rejections).append(out)
    t1 = time.perf_counter()
    ranked = rank(ranked)
    answer, checks = _verify(scenario, evaluator, ranked, facts)
    t2 = time.perf_counter()
    disagg = modes = None
    if scenario.kind == "serving" and "disaggregated" in scenario.modes:
        from moesim.planner.modes import compare, plan_disaggregated

        disagg = plan_disaggregated(scenario, model, evaluator, facts)
        modes = compare(answer, disagg)
        timings["disaggregated_s"] = time.perf_counter() - t2
    return PlanResult(
        scenario=scenario, evaluator=getattr(evaluator, "name", type(evaluator).__name__),
        ranked=tuple(ranked), frontier=tuple(pareto_frontier(ranked)),
        rejected=tuple(summarize_rejections(rejections, space.invalid, space.invalid_examples)),
        answer=answer, closest=closest_rejection(rejections) if not ranked else None,
        evaluated=len(evals), space_size=space.size,
        timings_s={"analytic_s": t1 - t0, "verify_s": t2 - t1, "configs_per_s": len(evals) / max(t1 - t0, 1e-9),
                   **timings},
        verifications=tuple(checks), disaggregated=disagg, modes=modes,
    )


def _screenable(evaluator) -> bool:
    """The screen's bounds are the analytic evaluator's (moesim/planner/screen.py); another
    evaluator (closed form, a test double) is swept unscreened."""
    from moesim.planner.analytic import AnalyticEvaluator

    return isinstance(evaluator, AnalyticEvaluator)


def _featureless(scenario) -> bool:
    """The screen's bounds assume one token per plain decode step and whole-prompt prefills."""
    f = getattr(scenario, "features", None)
    return f is None or (f.prefix_cache_hit_rate == 0 and f.speculative is None)


SCREEN_NODES = 1  # decode nodes per layout in the screening pass (the largest fitting batch); refined to
# screen.NODES for the layouts that reach the exact stage


def _screened_sweep(candidates, scenario, model, evaluator, facts, keep: int, ranked: list, rejections: list,
                    timings: dict) -> list[Evaluation]:
    """Screen, then evaluate exactly layout by layout in order of their cheapest lower bound while
    a layout's bound is within the ``keep``-th cheapest exact cost or its hardware's cheapest
    (both only fall, so a skipped layout stays skipped); judges into ``ranked`` / ``rejections``."""
    from moesim.planner.screen import layout_order, screen

    t = time.perf_counter()
    screened = screen(candidates, scenario, model, facts, nodes=SCREEN_NODES, cache=evaluator.cache)
    dt = time.perf_counter() - t
    timings.update(screen_s=dt, screen_configs_per_s=len(candidates) / max(dt, 1e-9))
    done: set[int] = set()
    costs: list[float] = []
    best: dict[str, float] = {}
    evals: list[Evaluation] = []
    layouts = 0
    heap = [(lb, False, hw, idx[0], idx) for lb, hw, idx in layout_order(screened)]
    heapq.heapify(heap)
    while heap:
        lb, refined, hw, _, idx = heapq.heappop(heap)
        kth = sorted(costs)[keep - 1] if len(costs) >= keep else math.inf
        if lb > max(kth, best.get(hw, math.inf)):
            continue
        if not refined:  # more decode nodes (~10 ms; tighter bounds) before the exact evaluation (~50 ms)
            for i, s in zip(idx, screen([candidates[i] for i in idx], scenario, model, facts, cache=evaluator.cache)):
                screened[i] = s
            heapq.heappush(heap, (min(screened[i].usd_per_hour_lb for i in idx), True, hw, idx[0], idx))
            continue
        todo = [i for i in idx if screened[i].reason is None]
        if not todo:
            continue
        layouts += 1
        for i, ev in zip(todo, run_sweep([candidates[i] for i in todo], scenario, evaluator, executor="inline")):
            done.add(i)
            evals.append(ev)
            out = judge_serving(ev, scenario, facts[hw])
            if isinstance(out, Ranked):
                ranked.append(out)
                costs.append(out.usd_per_hour)
                best[hw] = min(best.get(hw, math.inf), out.usd_per_hour)
            else:
                rejections.append(out)
    for i, s in enumerate(screened):
        if i in done:
            continue
        if s.reason is None:
            s = replace(s, reason="screened_out", detail=f"screening: at least ${s.usd_per_hour_lb:.2f}/h, "
                        f"above the {keep} cheapest exact deployments")
        rejections.append(judge_serving(s.evaluation(), scenario, facts[s.candidate.hardware]))
    timings.update(exact_layouts=layouts, exact_configs=len(evals))
    return evals
