"""The cost-latency-quality curve of a plan's answer over capacity factor x overflow policy.

For the answer's layout (hardware, devices, TP/EP/PP/DP, decode batch) each point routes one
decode step of ``batch x devices / pp`` tokens over the EP group with the routing engine
(:func:`moesim.routing.api.route_model`, the scenario's skew; analytic, Monte Carlo where the
analytic engine refuses), prices the step with :func:`step_time_at_capacity` and predicts the
quality cost with :class:`moesim.quality.predict.QualityPredictor`. TPOT and $/M output tokens
are the answer's own, scaled by the step-time ratio to the answer's capacity setting (same
replicas and batch; serving scenarios only, since the quality was measured at inference).

Legend: E routed experts, k top-k, T tokens routed per decode step over the EP group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moesim.errors import MoesimError, SpecError
from moesim.quality.predict import QualityEstimate, QualityPredictor

CAPACITY_FACTORS: tuple[float | None, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, None)
STEP_BASIS = ("step model: dropless estimate (moesim.step, Decode) with the routed-expert path (dispatch, experts, "
              "combine) scaled by the busiest rank's copies at capacity over dropless, and the shared "
              "experts' time by the backup copies they take; an approximation kept (same numbers) until "
              "this function switches to the step model's own capacity pricing (docs/quality.md)")


@dataclass(frozen=True)
class StepAtCapacity:
    """One decode iteration priced at a capacity setting (seconds)."""

    step_time_s: float
    dropless_step_time_s: float
    expert_path_scale: float  # busiest rank's copies at capacity / dropless
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


def step_time_at_capacity(model, hw, candidate, scenario, dropless, capped) -> StepAtCapacity:
    """The decode iteration of ``candidate`` with the routing ``capped`` (RoutingStats at a
    capacity) instead of ``dropless``: the one call into the step model (see ``STEP_BASIS``)."""
    from moesim.planner.costs import deployment_of
    from moesim.step import Decode, estimate

    w = scenario.workload
    dep = deployment_of(candidate, scenario, model, hw=hw, capacity=False)  # dropless: the scaling below prices capacity
    bd = estimate(model, dep, Decode(candidate.batch, w.prompt_len + w.output_len // 2, scenario.routing.skew),
                  check_memory=False).breakdown(0)
    scale = capped.rank_tokens_max / dropless.rank_tokens_max if dropless.rank_tokens_max > 0 else 1.0
    expert_path = bd.dispatch_s + bd.experts_s + bd.combine_s
    backup = bd.shared_experts_s * capped.shared_fraction * capped.top_k
    step = bd.step_time_s + (scale - 1.0) * expert_path + backup
    return StepAtCapacity(step_time_s=step, dropless_step_time_s=bd.step_time_s, expert_path_scale=scale)


def _route(model, candidate, hw, scenario, capacity_factor, overflow):
    from moesim.routing.api import route_model

    kw = dict(ep=candidate.ep, ranks_per_node=min(hw.scale_up.domain_size, candidate.ep),
              skew=scenario.routing.skew, capacity_factor=capacity_factor, overflow=overflow,
              placement="load_aware" if candidate.redundant_experts else scenario.routing.placement,
              redundant_experts=candidate.redundant_experts)
    tokens = max(1, candidate.batch * candidate.devices // candidate.pp)
    try:
        return route_model(model, tokens, engine="analytic", **kw)
    except (TypeError, NotImplementedError, MoesimError):
        return route_model(model, tokens, engine="montecarlo", samples=32, seed=0, **kw)


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
    stats = _route(model, c, load_profile(c.hardware), scenario, c.capacity_factor, scenario.routing.overflow)
    est = predictor.from_routing(stats, trained_top_k=k_trained)
    return est, (assumption + f"; the {model.name} answer (top-{k} of {k_trained}) at capacity factor {c.capacity_factor:g} "
                 f"({scenario.routing.overflow}) drops {stats.drop_fraction:.2%}, reroutes "
                 f"{stats.reroute_fraction:.2%} and backs up {stats.shared_fraction:.2%} of copies: predicted "
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
    c = answer.candidate
    hw = load_profile(c.hardware)
    dropless = _route(model, c, hw, scenario, None, "drop")
    ref_routing = _route(model, c, hw, scenario, c.capacity_factor, scenario.routing.overflow)
    ref = step_time_at_capacity(model, hw, c, scenario, dropless, ref_routing)
    grid = [(cf, pol) for cf in capacity_factors if cf is not None for pol in policies]
    grid += [(None, "drop")] if None in capacity_factors else []
    points = []
    for cf, pol in grid:
        stats = dropless if cf is None else _route(model, c, hw, scenario, cf, pol)
        step = step_time_at_capacity(model, hw, c, scenario, dropless, stats)
        ratio = step.step_time_s / ref.step_time_s
        q = predictor.from_routing(stats, trained_top_k=model.moe.top_k)
        points.append(TradeoffPoint(
            capacity_factor=cf, overflow=pol, drop_fraction=float(stats.drop_fraction),
            reroute_fraction=float(stats.reroute_fraction), backup_fraction=float(stats.shared_fraction),
            rank_imbalance=float(stats.rank_imbalance), step_time_s=step.step_time_s,
            tpot_s=answer.evaluation.tpot_s * ratio, usd_per_million_tokens=answer.usd_per_million_tokens * ratio,
            quality=q, within_quality_limit=None if max_loss_increase is None else q.loss_increase <= max_loss_increase,
        ))
    return TradeoffCurve(
        scenario=scenario.name, layout=c.key(), model=model.name, routed_tokens=dropless.tokens,
        skew=scenario.routing.skew, answer_capacity_factor=c.capacity_factor, points=tuple(points),
        max_loss_increase=max_loss_increase, step_basis=STEP_BASIS, quality_basis=predictor.model.source,
        quality_limits=predictor.model.limits, notes=tuple(notes),
    )
