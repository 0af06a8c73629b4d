"""Leave-settings-out error of the quality model: refit without a group of points, predict them.

Groups (``GROUPINGS``): ``setting`` leaves out one trained model (a stabilizer setting) at a
time, so its whole curve is predicted from the other models; ``capacity_factor`` leaves out every
point at one capacity factor (all models and policies); ``top_k`` leaves out every point at one
reduced inference top-k. Errors are absolute (nats) and relative (on points whose measured
increase is above ``REL_FLOOR_NATS``, where a relative error means something).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.quality.model import _inputs, fit_points, loss_increase_formula
from moesim.quality.table import MeasuredPoint, QualityTable

REL_FLOOR_NATS = 0.01
GROUPINGS: dict[str, callable] = {
    "setting": lambda p: p.setting,
    "capacity_factor": lambda p: p.capacity_factor,
    "top_k": lambda p: p.top_k if p.top_k < p.trained_top_k else None,
}


@dataclass(frozen=True)
class HoldoutReport:
    """Held-out predictions of one grouping, pooled over its folds."""

    grouping: str
    folds: int
    points: int
    rms_nats: float
    max_abs_nats: float
    median_rel_error: float  # |predicted - measured| / measured, over points above REL_FLOOR_NATS
    p90_rel_error: float
    worst: str  # key of the point with the largest absolute error

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def holdout(table: QualityTable, grouping: str = "setting") -> HoldoutReport:
    """Refit without each group of ``grouping`` and predict it (groups with key None stay in)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping {grouping!r}: allowed {', '.join(GROUPINGS)}")
    key = GROUPINGS[grouping]
    groups = sorted({key(p) for p in table.points if key(p) is not None}, key=str)
    held: list[tuple[MeasuredPoint, float]] = []
    for g in groups:
        train = [p for p in table.points if key(p) != g]
        test = [p for p in table.points if key(p) == g]
        theta = fit_points(train)
        held += list(zip(test, loss_increase_formula(theta, _inputs(test))))
    meas = np.array([p.loss_increase for p, _ in held])
    pred = np.array([v for _, v in held])
    err = np.abs(pred - meas)
    big = meas > REL_FLOOR_NATS
    rel = err[big] / meas[big]
    return HoldoutReport(
        grouping=grouping, folds=len(groups), points=len(held),
        rms_nats=float(np.sqrt(np.mean(err ** 2))), max_abs_nats=float(err.max()),
        median_rel_error=float(np.median(rel)) if rel.size else 0.0,
        p90_rel_error=float(np.quantile(rel, 0.9)) if rel.size else 0.0,
        worst=held[int(err.argmax())][0].key,
    )
