"""The quality model: predicted held-out loss increase from what the routing engine reports.

Inputs (fractions of the ``T x k'`` routed copies, as in :class:`moesim.routing.stats.RoutingStats`):
``d`` dropped, ``r`` served by a rerouted (next-preferred) expert, ``b`` served by the shared
experts (overflow ``shared``); ``k'`` the top-k used at inference and ``k`` the top-k the model
was trained with (``q = k' / k``, ``m = 1 - q``).

    loss_increase = c_k * m**p_k + q**(-gamma) * sum_x a_x * x * (1 + beta * x),  x in (d, r, b)

Parameters, all >= 0 (so the cost is zero when nothing is dropped, rerouted or backed up at the
trained k, and never falls when a fraction grows):
- ``a_drop``, ``a_reroute``, ``a_backup``: nats (per byte, on the measured model) per unit
  fraction of copies, at small fractions: the marginal cost of each overflow path;
- ``beta``: convexity (the cost per copy grows with the fraction: later overflow takes copies
  of tokens that already lost others, and copies of the hottest, most relied-upon experts);
- ``gamma``: how much more an overflowing copy costs when the token has fewer experts
  (``k' < k``: each remaining copy carries more of the renormalised gate weight);
- ``c_k``, ``p_k``: the cost of routing every token to its best ``k'`` of ``k`` experts
  (weights renormalised), dropless.

Fitted by least squares (scipy.optimize.least_squares, bounds >= 0) on a measured
:class:`~moesim.quality.table.QualityTable`; ``holdout`` gives the leave-settings-out error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.errors import SpecError
from moesim.quality.table import MeasuredPoint, QualityTable

PARAMS: tuple[str, ...] = ("a_drop", "a_reroute", "a_backup", "beta", "gamma", "c_k", "p_k")
_X0 = (0.3, 0.3, 0.3, 1.0, 0.5, 0.3, 3.0)
_UPPER = (50.0, 50.0, 50.0, 50.0, 5.0, 50.0, 8.0)


def _inputs(points) -> np.ndarray:
    """Rows (d, r, b, q) of measured points."""
    return np.array([[p.drop_fraction, p.reroute_fraction, p.backup_fraction, p.top_k / p.trained_top_k]
                     for p in points], dtype=float).reshape(-1, 4)


def loss_increase_formula(theta, x_N4: np.ndarray) -> np.ndarray:
    """The model's formula (module docstring) for rows ``(d, r, b, q)``; ``theta`` in PARAMS order."""
    a_d, a_r, a_b, beta, gamma, c_k, p_k = (float(t) for t in theta)
    d, r, b, q = x_N4.T
    overflow = a_d * d * (1 + beta * d) + a_r * r * (1 + beta * r) + a_b * b * (1 + beta * b)
    return c_k * (1.0 - q) ** p_k + q ** (-gamma) * overflow


@dataclass(frozen=True)
class QualityModel:
    """Fitted parameters and the fit's own residuals (in-sample)."""

    params: dict[str, float]
    points: int
    rms_nats: float  # in-sample root-mean-square residual
    max_abs_nats: float
    policies: tuple[str, ...]
    trained_top_k: tuple[int, ...]
    source: str = ""
    model: str = ""
    limits: str = ""
    settings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def theta(self) -> tuple[float, ...]:
        return tuple(self.params[name] for name in PARAMS)

    def predict_inputs(self, x_N4: np.ndarray) -> np.ndarray:
        return loss_increase_formula(self.theta, np.asarray(x_N4, dtype=float).reshape(-1, 4))

    def to_dict(self) -> dict:
        return {"params": dict(self.params), "points": self.points, "rms_nats": self.rms_nats,
                "max_abs_nats": self.max_abs_nats, "policies": list(self.policies),
                "settings": list(self.settings), "source": self.source, "model": self.model,
                "limits": self.limits}


def fit_points(points: tuple[MeasuredPoint, ...] | list[MeasuredPoint]) -> np.ndarray:
    """Least-squares parameters (PARAMS order) for these points."""
    from scipy.optimize import least_squares

    if len(points) < len(PARAMS):
        raise SpecError("quality table", len(points), f"needs at least {len(PARAMS)} points to fit")
    x_N4 = _inputs(points)
    y_N = np.array([p.loss_increase for p in points])
    res = least_squares(lambda th: loss_increase_formula(th, x_N4) - y_N, x0=_X0,
                        bounds=([0.0] * len(PARAMS), _UPPER))
    return res.x


def fit_quality_model(table: QualityTable) -> QualityModel:
    """Fit the formula on every point of ``table``."""
    theta = fit_points(table.points)
    resid = loss_increase_formula(theta, _inputs(table.points)) - np.array([p.loss_increase for p in table.points])
    return QualityModel(
        params=dict(zip(PARAMS, (float(t) for t in theta))), points=len(table.points),
        rms_nats=float(np.sqrt(np.mean(resid ** 2))), max_abs_nats=float(np.abs(resid).max()),
        policies=table.policies, trained_top_k=tuple(sorted({p.trained_top_k for p in table.points})),
        source=table.source, model=table.model, limits=table.limits, settings=table.settings,
    )
