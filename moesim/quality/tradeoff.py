"""The cost-latency-quality curve of a plan's answer over capacity factor x overflow policy.

For the answer's layout (hardware, devices, TP/EP/PP/DP, decode batch) each point prices one
decode step with the capacity-aware step model (:func:`step_time_at_capacity`:
``moesim.step.estimate`` on the answer's ``Deployment`` with the point's capacity factor and
overflow policy; the step routes with the routing engine at the scenario's skew) and predicts
the quality cost of the drop / reroute / backup fractions that step priced with
:class:`moesim.quality.predict.QualityPredictor` (the planner's rule, moesim/planner/
quality_cost.py, so a point equals the plan row of the same candidate). TPOT and $/M output tokens
are the answer's own, scaled by the step-time ratio to the answer's capacity setting (same
replicas and batch; serving scenarios only, since the quality was measured at inference).

Legend: E routed experts, k top-k, T tokens routed per routing call over the EP group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moesim.errors import MoesimError, SpecError
from moesim.quality.predict import QualityEstimate, QualityPredictor

CAPACITY_FACTORS: tuple[float | None, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, None)
STEP_BASIS = ("step model: moesim.step.estimate (Decode at the plan's mean context) on the answer's Deployment "
              "with the point's capacity_factor and overflow: the busiest rank's expert rows capped at capacity "
              "(dropped copies cost no expert time, rerouted ones are priced where they land, the shared-expert "
              "backup is priced); the fractions and the quality cost are of the routing that step priced")


@dataclass(frozen=True)
class StepAtCapacity:
    """One decode iteration priced at a capacity setting (seconds) and the routing it priced:
    shares of the routed copies dropped, rerouted and backed up, the busiest rank's imbalance."""

    step_time_s: float
    drop_fraction: float
    reroute_fraction: float
    backup_fraction: float
    expert_imbalance: float
    top_k: int
    basis: str = STEP_BASIS


@dataclass(frozen=True)
class TradeoffPoint:
    """One capacity factor x overflow policy at the answer's layout."""

    capacity_factor: float | None
    overflow: str
    drop_fraction: float
    reroute_fraction: float
    backup_fraction: float
    rank_imbalance: float
    step_time_s: float
    tpot_s: float
    usd_per_million_tokens: float
    quality: QualityEstimate
    within_quality_limit: bool | None

    @property
    def label(self) -> str:
        cf = "dropless" if self.capacity_factor is None else f"cf {self.capacity_factor:g}"
        return cf if self.capacity_factor is None else f"{cf} {self.overflow}"

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "quality"}
        d["quality"] = self.quality.to_dict()
        d["loss_increase"] = self.quality.loss_increase
        return d


@dataclass(frozen=True)
class TradeoffCurve:
    """The curve, the layout it was drawn at, and what every number rests on."""

    scenario: str
    layout: str
    model: str
    routed_tokens: int
    skew: str
    answer_capacity_factor: float | None
    points: tuple[TradeoffPoint, ...]
    max_loss_increase: float | None
    step_basis: str
    quality_basis: str
    quality_limits: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def cheapest_within(self) -> TradeoffPoint | None:
        """The cheapest point within the quality limit (all points when there is none)."""
        ok = [p for p in self.points if p.within_quality_limit is not False]
        return min(ok, key=lambda p: (p.usd_per_million_tokens, p.quality.loss_increase), default=None)

    def to_dict(self) -> dict:
        best = self.cheapest_within()
        return {
            "scenario": self.scenario, "layout": self.layout, "model": self.model,
            "routed_tokens": self.routed_tokens, "skew": self.skew,
            "answer_capacity_factor": self.answer_capacity_factor,
            "max_loss_increase": self.max_loss_increase,
            "cheapest_within_limit": best.to_dict() if best else None,
            "points": [p.to_dict() for p in self.points],
            "step_basis": self.step_basis, "quality_basis": self.quality_basis,
            "quality_limits": self.quality_limits, "notes": list(self.notes),
        }


def step_time_at_capacity(model, hw, candidate, scenario, capacity_factor: float | None, overflow: str,
                          cache=None) -> StepAtCapacity:
    """The decode iteration of ``candidate`` at ``capacity_factor`` (None: dropless) and ``overflow``:
    the one call into the step model (see ``STEP_BASIS``); ``cache`` a ``moesim.step.StepCache``."""
    from moesim.planner.costs import deployment_of
    from moesim.specs.serving_features import inflight_context_tokens
    from moesim.step import Decode, estimate

    dep = deployment_of(candidate, scenario, model, hw=hw, capacity_factor=capacity_factor, overflow=overflow)
    if dep.overlap != "none" and getattr(scenario.search, "overlap", "none") == "auto":
        # the planner's decode overlap at this batch (moesim/planner/serving_policy.py decode_steps):
        # the faster of none / two micro-batches
        ctx = inflight_context_tokens(scenario.workload)
        t = {m: estimate(model, dep.with_(overlap=m), Decode(candidate.batch, ctx, scenario.routing.skew),
                         check_memory=False, cache=cache).step_time_s[0] for m in ("none", dep.overlap)}
        dep = dep.with_(overlap=min(t, key=t.__getitem__))
    bd = estimate(model, dep, Decode(candidate.batch, inflight_context_tokens(scenario.workload), scenario.routing.skew),
                  check_memory=False, cache=cache).breakdown(0)
    return StepAtCapacity(step_time_s=bd.step_time_s, drop_fraction=bd.drop_fraction,
                          reroute_fraction=bd.reroute_fraction, backup_fraction=bd.backup_fraction,
                          expert_imbalance=bd.expert_imbalance, top_k=model.moe.top_k)


def _quality(predictor: QualityPredictor, step: StepAtCapacity, trained_top_k: int) -> QualityEstimate:
    """The prediction for the routing fractions the step priced (``from_routing`` of those stats)."""
    return predictor.predict(drop_fraction=step.drop_fraction, reroute_fraction=step.reroute_fraction,
                             backup_fraction=step.backup_fraction, effective_top_k=step.top_k, top_k=trained_top_k)


def answer_quality(scenario, answer, predictor: QualityPredictor,
                   trained_top_k: int | None = None) -> tuple[QualityEstimate | None, str]:
    """The predicted quality cost of a plan's answer at its own capacity setting, and the
    assumption a comparison makes, in words (``None`` and a note for a dense model).
    ``trained_top_k``: the top-k the model was trained with when the scenario changed it (what-if
    ``model.top_k``); default the scenario model's own."""
    from moesim.catalog import load_profile
    from moesim.planner.scenario import scenario_model

    model = scenario_model(scenario)
    assumption = ("quality: the comparison assumes the two models are of equal quality when the MoE "
                  "routes dropless (the choice of dense model is the user's)")
    if model.moe is None:
        return None, assumption
    c = answer.candidate
    k, k_trained = model.moe.top_k, trained_top_k or model.moe.top_k
    if c.capacity_factor is None:
        est = predictor.predict(top_k=k_trained, effective_top_k=k)
        cost = "no routing cost" if k == k_trained else f"top-{k} of {k_trained}: +{est.loss_increase:.4f} nats"
        return est, assumption + f"; the {model.name} answer is dropless: {cost}"
    predictor.check_policy(scenario.routing.overflow)
    step = step_time_at_capacity(model, load_profile(c.hardware), c, scenario, c.capacity_factor,
                                 scenario.routing.overflow)
    est = _quality(predictor, step, k_trained)
    return est, (assumption + f"; the {model.name} answer (top-{k} of {k_trained}) at capacity factor {c.capacity_factor:g} "
                 f"({scenario.routing.overflow}) drops {step.drop_fraction:.2%}, reroutes "
                 f"{step.reroute_fraction:.2%} and backs up {step.backup_fraction:.2%} of copies: predicted "
                 f"loss increase {est.loss_increase:.4f} nats ({est.low:.4f}-{est.high:.4f}); {est.limits}")


def tradeoff_curve(scenario, answer, predictor: QualityPredictor, *,
                   capacity_factors=CAPACITY_FACTORS, policies: tuple[str, ...] = ("drop", "reroute", "shared"),
                   max_loss_increase: float | None = None) -> TradeoffCurve:
    """The curve at ``answer`` (a planner :class:`~moesim.planner.rank.Ranked`) of ``scenario``."""
    from moesim.catalog import load_profile
    from moesim.planner.scenario import scenario_model

    if scenario.kind != "serving":
        raise SpecError("scenario kind", scenario.kind, "tradeoff needs a serving scenario (the quality "
                        "model was measured with capacity changed at inference)")
    if max_loss_increase is not None and not max_loss_increase >= 0:
        raise SpecError("max_loss_increase", max_loss_increase, "must be >= 0 (nats)")
    for policy in policies:
        predictor.check_policy(policy)
    model = scenario_model(scenario)
    if model.moe is None:
        raise SpecError("model", model.name, "is dense: no routing to trade off")
    notes = []
    if "shared" in policies and model.moe.num_shared_experts == 0:
        policies = tuple(p for p in policies if p != "shared")
        notes.append(f"{model.name} has no shared expert: the shared-expert backup policy is left out")
    from moesim.step.cache import StepCache

    c = answer.candidate
    hw = load_profile(c.hardware)
    cache = StepCache()  # one layout: layer setups shared by every point
    ref = step_time_at_capacity(model, hw, c, scenario, c.capacity_factor, scenario.routing.overflow, cache)
    grid = [(cf, pol) for cf in capacity_factors if cf is not None for pol in policies]
    grid += [(None, "drop")] if None in capacity_factors else []
    points = []
    for cf, pol in grid:
        step = step_time_at_capacity(model, hw, c, scenario, cf, pol, cache)
        ratio = step.step_time_s / ref.step_time_s
        q = _quality(predictor, step, model.moe.top_k)
        points.append(TradeoffPoint(
            capacity_factor=cf, overflow=pol, drop_fraction=step.drop_fraction,
            reroute_fraction=step.reroute_fraction, backup_fraction=step.backup_fraction,
            rank_imbalance=step.expert_imbalance, step_time_s=step.step_time_s,
            tpot_s=answer.evaluation.tpot_s * ratio, usd_per_million_tokens=answer.usd_per_million_tokens * ratio,
            quality=q, within_quality_limit=None if max_loss_increase is None else q.loss_increase <= max_loss_increase,
        ))
    return TradeoffCurve(
        scenario=scenario.name, layout=c.key(), model=model.name, routed_tokens=_routed_tokens(c, scenario, model),
        skew=scenario.routing.skew, answer_capacity_factor=c.capacity_factor, points=tuple(points),
        max_loss_increase=max_loss_increase, step_basis=STEP_BASIS, quality_basis=predictor.model.source,
        quality_limits=predictor.model.limits, notes=tuple(notes),
    )


def _routed_tokens(c, scenario, model) -> int:
    """Tokens one MoE layer routes over the EP group per routing call of the decode step: the batch
    per device (per micro-batch half under two-microbatch overlap, moesim/step/estimate.py) x EP."""
    from moesim.planner.scenario import overlap_mode

    halves = 2 if overlap_mode(scenario, model) == "two_microbatch" else 1
    return max(1, round(c.batch / halves * c.ep))
