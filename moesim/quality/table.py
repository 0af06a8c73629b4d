"""The measured table the quality model is fitted on: held-out loss increase per routing setting.

Written by ``python -m validation.quality_sweep`` (validation/quality_sweep.py) from the small
byte-level MoE trained here, shipped as package data (``moesim/quality/data/*.json``) so the
installed library reads it without the repository; tests/test_quality_model.py checks it equals
what ``validation.quality_sweep.export_table`` derives from the full measurement file in
validation/data/. This module is the package's only file access (read-only package data).

One row = one trained model (``setting``: its stabilizers) evaluated at one inference router
setting (``top_k`` used, ``capacity_factor`` or None = dropless, ``overflow``). Fractions are of
the ``T x top_k`` routed copies of that row, averaged over layers and held-out batches, as the
routing engine reports them (``RoutingStats.drop_fraction`` / ``reroute_fraction`` /
``shared_fraction``). ``loss_increase`` is nats per byte over the same model's dropless loss at
its trained top-k on the same batches; ``loss_increase_se`` its paired standard error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moesim.errors import SpecError

TABLE_FORMAT = "moesim.quality-table"
DEFAULT_TABLE = "quality-cpu-tinymoe.json"


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured (model, inference router setting) pair."""

    setting: str
    trained_top_k: int
    top_k: int
    capacity_factor: float | None
    overflow: str
    drop_fraction: float
    reroute_fraction: float
    backup_fraction: float
    imbalance: float
    loss_increase: float
    loss_increase_se: float
    dropless_loss: float

    @property
    def key(self) -> str:
        cf = "dropless" if self.capacity_factor is None else f"cf{self.capacity_factor:g}"
        return f"{self.setting}/k{self.top_k}_{cf}_{self.overflow}"


@dataclass(frozen=True)
class QualityTable:
    """The measured points and where they come from."""

    source: str
    model: str
    limits: str
    points: tuple[MeasuredPoint, ...]

    @property
    def settings(self) -> tuple[str, ...]:
        """Training settings (stabilizers), in file order."""
        return tuple(dict.fromkeys(p.setting for p in self.points))

    @property
    def policies(self) -> tuple[str, ...]:
        """Overflow policies measured at a capacity limit."""
        return tuple(dict.fromkeys(p.overflow for p in self.points if p.capacity_factor is not None))

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": 1, "source": self.source, "model": self.model,
                "limits": self.limits, "points": [p.__dict__ for p in self.points]}


def table_from_dict(doc: dict) -> QualityTable:
    """Validate a table document (format, version, fields of every point)."""
    if doc.get("format") != TABLE_FORMAT or doc.get("version") != 1:
        raise SpecError("quality table format", doc.get("format"), f"expected {TABLE_FORMAT!r} version 1")
    try:
        points = tuple(MeasuredPoint(**p) for p in doc["points"])
        return QualityTable(source=doc["source"], model=doc["model"], limits=doc["limits"], points=points)
    except (KeyError, TypeError) as err:
        raise SpecError("quality table", str(err), "every point needs the MeasuredPoint fields") from err


def load_table(path: str | Path | None = None) -> QualityTable:
    """The shipped table (default) or a table file written by validation/quality_sweep.py."""
    if path is None:
        text = resources.files("moesim.quality").joinpath("data", DEFAULT_TABLE).read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise SpecError("quality table", str(path), f"cannot be read ({err.strerror})") from err
    return table_from_dict(json.loads(text))
