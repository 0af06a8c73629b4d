"""The planner's one call into the quality model: a candidate's predicted loss increase.

Per candidate the step model (``moesim.step.estimate``) reports the routing engine's drop,
reroute and backup fractions of the routed copies under the candidate's capacity factor and
overflow policy (``StepBreakdown.drop_fraction`` / ``reroute_fraction`` / ``backup_fraction``:
``RoutingStats.drop_fraction`` / ``reroute_fraction`` / ``shared_fraction`` of the step it
priced, moesim/step/pricing.py ``rank_load``). Those fractions, the model's top-k and the top-k
the model was trained with (the preset's, before ``model_overrides``: a what-if ``model.top_k``
is priced as a reduction) go to ``QualityPredictor.predict``, exactly what
``QualityPredictor.from_routing(stats, trained_top_k=)`` computes from the same stats
(tests/test_planner_quality.py checks the two agree).

Nothing overflowing at the trained top-k costs exactly zero (the model's form,
docs/quality.md §2): then the predictor is not built, so a dropless plan pays no fit (~0.5 s).
Otherwise ``PlanQuality`` builds the default predictor once and keeps it (it travels, fitted,
with the evaluator to worker processes).

Training: the quality model was measured with capacity changed at inference (docs/quality.md
§3: a training capacity factor is outside it), so a training candidate that overflows gets no
prediction (``None``; rejected when ``limits.max_loss_increase`` is set).
"""
from __future__ import annotations

from dataclasses import dataclass

LIMITS = ("predicted loss increase in nats from moesim.quality, fitted on a small byte-level MoE trained here "
          "(validation/quality_sweep.py): a small byte-level model is a proxy for the production model, applied "
          "through the routing fractions only; band = leave-one-model-out p90 error (docs/quality.md)")


@dataclass(frozen=True)
class LossIncrease:
    """A candidate's predicted loss increase (nats) and its band; ``extrapolated`` outside the measured range."""

    value: float
    low: float
    high: float
    extrapolated: bool = False


ZERO = LossIncrease(0.0, 0.0, 0.0)


class PlanQuality:
    """The plan's quality predictor, built on first need (module docstring); pickles with its fit."""

    def __init__(self, predictor=None):
        self._predictor = predictor

    @property
    def predictor(self):
        if self._predictor is None:
            from moesim.quality import default_predictor

            self._predictor = default_predictor()
        return self._predictor

    def loss_increase(self, bd, model, trained_top_k: int | None, *, kind: str = "serving") -> LossIncrease | None:
        """The predicted loss increase of a step breakdown ``bd`` of ``model`` (module docstring);
        ``ZERO`` for a dense model (no routing) or nothing overflowing at the trained top-k."""
        if model.moe is None:
            return ZERO
        k = model.moe.top_k
        k_trained = trained_top_k or k
        fr = dict(drop_fraction=float(bd.drop_fraction), reroute_fraction=float(bd.reroute_fraction),
                  backup_fraction=float(bd.backup_fraction))
        if k == k_trained and not any(fr.values()):
            return ZERO
        if kind != "serving" or k > k_trained:  # not measured: training capacity, top-k above the trained
            return None
        est = self.predictor.predict(**fr, effective_top_k=k, top_k=k_trained)
        return LossIncrease(est.loss_increase, est.low, est.high, est.extrapolated)

    def check_policy(self, policy: str) -> None:
        """SpecError (one line) unless the quality model was measured for overflow ``policy``."""
        self.predictor.check_policy(policy)

    def __getstate__(self):
        return {"_predictor": self._predictor}

    def __setstate__(self, state):
        self._predictor = state["_predictor"]


def trained_top_k(scenario) -> int | None:
    """The top-k the scenario's model was trained with: its preset's, before ``model_overrides``."""
    from moesim.catalog import load_model

    base = load_model(scenario.model)
    return base.moe.top_k if base.moe is not None else None


def measured_policies() -> tuple[str, ...]:
    """Overflow policies the shipped quality table measured at a capacity limit (reads the table only)."""
    from moesim.quality.table import load_table

    return load_table().policies
