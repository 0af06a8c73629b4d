"""Measurement case files (``moesim-cases/1``, see docs/cases.md): reading and checking them.

A malformed case never hides the others: each problem becomes a ``CaseProblem`` naming the case
id and the missing or invalid key, and the well-formed cases are returned beside it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from moesim import safeio
from moesim.errors import MoesimError

SCHEMA = "moesim-cases/1"

# Required inputs per kind (docs/cases.md, "Kinds, inputs and metrics"). A required key may be
# null only when the case lists it in inputs.not_stated or inputs.not_applicable.
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k", "dtype"),
    "grouped_gemm": ("m_per_group", "n", "k", "dtype"),
    "all_to_all": ("op", "ranks", "ranks_per_node", "tokens_per_rank", "hidden", "top_k",
                   "num_experts", "bytes_per_token"),
    "moe_layer": ("ranks", "tokens_per_rank", "dtype"),
    "training": ("model", "devices", "tp", "pp", "ep", "global_batch", "seq_len", "dtype"),
    "serving": ("model", "phase", "devices", "ep", "dtype"),
}
METRICS: dict[str, tuple[str, ...]] = {
    "gemm": ("time_s",),
    "grouped_gemm": ("time_s",),
    "all_to_all": ("time_s", "bandwidth_GBps"),
    "moe_layer": ("time_s",),
    "training": ("tokens_per_s_per_device", "model_tflops_per_device", "step_time_s", "mfu"),
    "serving": ("tokens_per_s_per_device",),
}


@dataclass(frozen=True)
class Case:
    """One measured number and the inputs that produced it."""

    id: str
    kind: str
    hardware: str
    inputs: Mapping[str, Any]
    metric: str
    measured: float
    source: str = ""
    notes: str = ""
    group: str = ""  # the source group (leave-one-group-out): the case's "group", else source_group(source)
    role: str = "evaluation"  # calibration (fitted on) or evaluation (never fitted on): the case's "role", else the file's

    def input(self, key: str, default: Any = None) -> Any:
        """An input value; ``default`` when absent or null (not stated by the source)."""
        value = self.inputs.get(key)
        return default if value is None else value

    @property
    def not_stated(self) -> tuple[str, ...]:
        return tuple(self.inputs.get("not_stated") or ())


@dataclass(frozen=True)
class CaseProblem:
    """A case that could not be read: its id (or position) and what is wrong."""

    id: str
    problem: str

    def to_dict(self) -> dict:
        return {"id": self.id, "problem": self.problem}


@dataclass(frozen=True)
class CaseFile:
    """The readable cases of a file and the problems of the others."""

    source: str
    description: str
    cases: tuple[Case, ...]
    problems: tuple[CaseProblem, ...] = field(default_factory=tuple)
    role: str = "evaluation"

    def of_kind(self, kind: str) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.kind == kind)

    def on(self, hardware: str) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.hardware == hardware)


ROLES = ("calibration", "evaluation")


def source_group(source: str) -> str:
    """The group a source belongs to: ``owner/repo`` of a GitHub address, else the host name
    (``lmsys.org``), else the text before the first space or parenthesis (a local script)."""
    text = source.strip()
    if "://" in text:
        host, _, path = text.split("://", 1)[1].partition("/")
        if host == "github.com":
            parts = [p for p in path.split("/") if p]
            if len(parts) >= 2:
                return f"{parts[0]}/{parts[1].split(' ')[0]}"
        return host
    return text.split(" ")[0].split("(")[0] or "unknown"


def _check_case(raw: Any, index: int, role: str = "evaluation") -> Case:
    """Build a Case or raise ValueError naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"case #{index} is not an object")
    for key in ("id", "kind", "hardware", "inputs", "measured"):
        if key not in raw:
            raise ValueError(f"missing key {key!r}")
    kind = raw["kind"]
    if kind not in REQUIRED_INPUTS:
        raise ValueError(f"kind {kind!r} unknown; known kinds: {', '.join(REQUIRED_INPUTS)}")
    inputs = raw["inputs"]
    if not isinstance(inputs, dict):
        raise ValueError("inputs must be an object")
    excused = set(inputs.get("not_stated") or ()) | set(inputs.get("not_applicable") or ())
    for key in REQUIRED_INPUTS[kind]:
        if key not in inputs:
            raise ValueError(f"missing required input {key!r} for kind {kind!r}")
        if inputs[key] is None and key not in excused:
            raise ValueError(f"input {key!r} is null but not listed in inputs.not_stated")
    measured = raw["measured"]
    if not isinstance(measured, dict) or "metric" not in measured or "value" not in measured:
        raise ValueError("measured must be an object with 'metric' and 'value'")
    metric, value = measured["metric"], measured["value"]
    if metric not in METRICS[kind]:
        raise ValueError(f"metric {metric!r} not known for kind {kind!r}; known: {', '.join(METRICS[kind])}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"measured.value {value!r} must be a positive number")
    source = str(raw.get("source", ""))
    role = raw.get("role", role)  # a case may override its file's role (rows a stack was fitted on)
    if role not in ROLES:
        raise ValueError(f"role {role!r} unknown; allowed: {', '.join(ROLES)}")
    return Case(
        id=str(raw["id"]),
        kind=kind,
        hardware=str(raw["hardware"]),
        inputs=MappingProxyType(dict(inputs)),
        metric=metric,
        measured=float(value),
        source=source,
        notes=str(raw.get("notes", "")),
        group=str(raw.get("group") or source_group(source)),
        role=role,
    )


def parse_cases(data: Any, source: str = "") -> CaseFile:
    """Check a decoded case file; bad cases become problems, good ones cases."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MoesimError(f"{source}: not a {SCHEMA} file (top-level 'schema' must be {SCHEMA!r})")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list):
        raise MoesimError(f"{source}: 'cases' must be a list")
    role = data.get("role", "evaluation")
    if role not in ROLES:
        raise MoesimError(f"{source}: role {role!r} unknown; allowed: {', '.join(ROLES)}")
    cases, problems, seen = [], [], set()
    for i, raw in enumerate(raw_cases):
        cid = str(raw.get("id", f"#{i}")) if isinstance(raw, dict) else f"#{i}"
        try:
            case = _check_case(raw, i, role)
            if case.id in seen:
                raise ValueError("duplicate id")
            seen.add(case.id)
            cases.append(case)
        except ValueError as err:
            problems.append(CaseProblem(cid, str(err)))
    return CaseFile(source, str(data.get("description", "")), tuple(cases), tuple(problems), role)


def load_cases(path: str | Path) -> CaseFile:
    """Read a case file; unreadable JSON raises MoesimError naming the file."""
    p = Path(path)
    return parse_cases(_resolve_case_files(safeio.load_json(p), p), str(p))


def _resolve_case_files(data: Any, path: Path) -> Any:
    """Case ``hardware`` and ``inputs.model`` names that are file paths, resolved against the
    case file's folder and confined to it (:func:`moesim.safeio.resolve_named`)."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        return data
    base, source = path.resolve().parent, safeio.shown(path)
    cases = []
    for raw in data["cases"]:
        if isinstance(raw, dict):
            raw = dict(raw)
            if isinstance(raw.get("hardware"), str) and safeio.looks_like_path(raw["hardware"]):
                raw["hardware"] = safeio.resolve_named(raw["hardware"], base, "hardware", source)
            inputs = raw.get("inputs")
            if isinstance(inputs, dict) and isinstance(inputs.get("model"), str) and safeio.looks_like_path(inputs["model"]):
                raw["inputs"] = {**inputs, "model": safeio.resolve_named(inputs["model"], base, "model", source)}
        cases.append(raw)
    return {**data, "cases": cases}
