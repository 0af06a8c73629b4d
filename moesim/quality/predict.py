"""Predictions of the quality model, with a band from its held-out error and its limits stated.

Build a :class:`QualityPredictor` once (``default_predictor()``: reads the shipped table, fits
the model and its leave-one-model-out error, a few tenths of a second) and call
:meth:`QualityPredictor.predict` or :meth:`QualityPredictor.from_routing` per candidate; the
module-level :func:`predict_loss_increase` and :func:`predict_from_routing` build the default
predictor when none is passed (convenient, slow in a loop).

Band: the leave-one-model-out 90th-percentile relative error ``e`` of the fit
(:mod:`moesim.quality.holdout`): ``[x / (1 + e), x * (1 + e)]``. It says how well the formula
transfers between models trained here; it does not cover the step from this small model to a
production one (the ``limits`` text says so in every output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.errors import SpecError
from moesim.quality.holdout import HoldoutReport, holdout
from moesim.quality.model import QualityModel, fit_quality_model
from moesim.quality.table import QualityTable, load_table

BASIS = "moesim.quality: loss increase fitted on held-out measurements of the MoE trained by validation/quality_sweep.py"


@dataclass(frozen=True)
class QualityEstimate:
    """Predicted held-out loss increase (nats per byte of the proxy model) and its band."""

    loss_increase: float
    low: float
    high: float
    perplexity_increase: float  # exp(loss_increase) - 1
    relative_loss_increase: float  # loss_increase / the proxy's dropless loss
    drop_fraction: float
    reroute_fraction: float
    backup_fraction: float
    effective_top_k: int
    top_k: int
    extrapolated: bool
    basis: str
    limits: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class QualityPredictor:
    """A fitted model, its held-out error and the measured ranges (explicit object: build once)."""

    model: QualityModel
    heldout: HoldoutReport
    band_factor: float  # 1 + leave-one-model-out p90 relative error
    dropless_loss: float  # mean dropless loss of the measured models (nats per byte)
    max_fraction: dict  # policy -> largest measured overflow fraction
    min_top_k_ratio: float

    @property
    def policies(self) -> tuple[str, ...]:
        return self.model.policies

    def check_policy(self, policy: str) -> None:
        """SpecError unless the model was measured for ``policy``."""
        if policy not in self.policies:
            raise SpecError("overflow policy", policy,
                            f"the quality model was measured for {', '.join(self.policies)} only")

    def predict(self, *, drop_fraction: float = 0.0, reroute_fraction: float = 0.0,
                backup_fraction: float = 0.0, effective_top_k: int | None = None,
                top_k: int | None = None) -> QualityEstimate:
        """Loss increase for these routing fractions (of the ``effective_top_k`` copies) at
        ``effective_top_k`` of a model trained with ``top_k`` (both default to "unchanged")."""
        fr = {"drop_fraction": drop_fraction, "reroute_fraction": reroute_fraction,
              "backup_fraction": backup_fraction}
        for name, v in fr.items():
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise SpecError(name, v, "must lie in [0, 1]")
        if sum(fr.values()) > 1.0 + 1e-9:
            raise SpecError("drop + reroute + backup fractions", sum(fr.values()), "must not exceed 1")
        for policy, name in (("reroute", "reroute_fraction"), ("shared", "backup_fraction")):
            if fr[name] > 0:
                self.check_policy(policy)
        k, k_eff = _top_k(top_k, effective_top_k)
        x = [[drop_fraction, reroute_fraction, backup_fraction, k_eff / k]]
        value = float(self.model.predict_inputs(x)[0])
        extrapolated = (k_eff / k < self.min_top_k_ratio - 1e-12 or any(
            v > self.max_fraction.get(p, 0.0) + 1e-9
            for p, v in (("drop", drop_fraction), ("reroute", reroute_fraction), ("shared", backup_fraction))))
        limits = self.model.limits + (" Outside the measured range: extrapolated." if extrapolated else "")
        return QualityEstimate(
            loss_increase=value, low=value / self.band_factor, high=value * self.band_factor,
            perplexity_increase=math.expm1(value), relative_loss_increase=value / self.dropless_loss,
            **fr, effective_top_k=k_eff, top_k=k, extrapolated=extrapolated,
            basis=f"{BASIS}; leave-one-model-out error: median {self.heldout.median_rel_error:.0%}, "
                  f"p90 {self.heldout.p90_rel_error:.0%} ({self.heldout.points} points)",
            limits=limits,
        )

    def from_routing(self, stats, *, trained_top_k: int | None = None) -> QualityEstimate:
        """The estimate for what a routing engine reports (:class:`moesim.routing.stats.RoutingStats`):
        its drop / reroute / shared fractions at its top-k, for a model trained with
        ``trained_top_k`` (default: the same top-k)."""
        return self.predict(drop_fraction=float(stats.drop_fraction),
                            reroute_fraction=float(stats.reroute_fraction),
                            backup_fraction=float(stats.shared_fraction),
                            effective_top_k=int(stats.top_k), top_k=trained_top_k or int(stats.top_k))


def _top_k(top_k, effective_top_k) -> tuple[int, int]:
    if top_k is None and effective_top_k is None:
        return 1, 1
    k = top_k if top_k is not None else effective_top_k
    k_eff = effective_top_k if effective_top_k is not None else k
    if not (isinstance(k, int) and k >= 1):
        raise SpecError("top_k", k, "must be a positive integer")
    if not (isinstance(k_eff, int) and 1 <= k_eff <= k):
        raise SpecError("effective_top_k", k_eff, f"must be an integer in [1, top_k = {k}]")
    return k, k_eff


def build_predictor(table: QualityTable) -> QualityPredictor:
    """Fit ``table`` and its leave-one-model-out error."""
    model = fit_quality_model(table)
    report = holdout(table, "setting")
    refs = [p.dropless_loss for p in table.points]
    max_fraction = {
        "drop": max(p.drop_fraction for p in table.points),
        "reroute": max(p.reroute_fraction for p in table.points),
        "shared": max(p.backup_fraction for p in table.points),
    }
    return QualityPredictor(
        model=model, heldout=report, band_factor=1.0 + report.p90_rel_error,
        dropless_loss=sum(refs) / len(refs), max_fraction=max_fraction,
        min_top_k_ratio=min(p.top_k / p.trained_top_k for p in table.points),
    )


def default_predictor() -> QualityPredictor:
    """The predictor of the shipped measurement table (builds it: call once, pass it on)."""
    return build_predictor(load_table())


def predict_loss_increase(*, drop_fraction: float = 0.0, reroute_fraction: float = 0.0,
                          backup_fraction: float = 0.0, effective_top_k: int | None = None,
                          top_k: int | None = None, predictor: QualityPredictor | None = None) -> QualityEstimate:
    """:meth:`QualityPredictor.predict` of ``predictor`` (default: :func:`default_predictor`)."""
    return (predictor or default_predictor()).predict(
        drop_fraction=drop_fraction, reroute_fraction=reroute_fraction, backup_fraction=backup_fraction,
        effective_top_k=effective_top_k, top_k=top_k)


def predict_from_routing(stats, *, trained_top_k: int | None = None,
                         predictor: QualityPredictor | None = None) -> QualityEstimate:
    """:meth:`QualityPredictor.from_routing` of ``predictor`` (default: :func:`default_predictor`)."""
    return (predictor or default_predictor()).from_routing(stats, trained_top_k=trained_top_k)


__all__ = ["QualityEstimate", "QualityPredictor", "build_predictor", "default_predictor",
           "predict_from_routing", "predict_loss_increase"]
