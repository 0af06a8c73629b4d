"""What-if: a base scenario plus changes, planned side by side with deltas.

Changes are dotted paths into the scenario (``workload.output_len``, ``slo.tpot_s``,
``routing.capacity_factor``, ``hardware``) or into the model (``model.top_k``,
``model.moe.top_k``, ``model.num_layers``). A ``model.X`` change builds a modified ModelSpec:
``X`` is looked up among the model's own fields, then ``moe.X`` and ``attention.X``; the result is
revalidated (``top_k`` above ``num_experts`` is refused naming the field). Setting
``routing.capacity_factor`` also pins the searched capacity factors to that value.
"""
from __future__ import annotations

try:  # Python 3.11+; the tomli backport (a dependency on 3.10) is the same parser
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from typing import Any

from moesim import safeio
from moesim.errors import MoesimError, SpecError
from moesim.planner.plan import PlanResult, plan
from moesim.planner.scenario import Scenario, scenario_from_dict
from moesim.specs import AttentionSpec, ModelSpec, MoESpec


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``4``, ``1.0``, ``true``, ``[8, 16]``), ``none``, or a bare string."""
    if text.strip().lower() in ("none", "null", "dropless"):
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise SpecError("--set", text, f"nested more than {safeio.MAX_DEPTH} levels deep") from None
    return safeio.check_depth(value, "--set value")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "hardware=h200-sxm"]`` -> ``{"a.b": 1, "hardware": "h200-sxm"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", item, "use PATH=VALUE, e.g. model.top_k=4")
        out[key.strip()] = parse_value(value.strip())
    return out


def _model_path(parts: list[str]) -> list[str]:
    """Resolve ``model.top_k`` to ``["moe", "top_k"]`` (own fields first, then moe, then attention)."""
    if len(parts) > 1 or parts[0] in ModelSpec.model_fields:
        return parts
    for section, cls in (("moe", MoESpec), ("attention", AttentionSpec)):
        if parts[0] in cls.model_fields:
            return [section, parts[0]]
    raise SpecError(f"model.{parts[0]}", "", "not a field of the model, its moe or its attention section")


def _put(d: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            if not isinstance(nxt, dict):
                raise SpecError(".".join(path), value, f"{p} is not a section")
            d[p] = nxt
        d = nxt
    d[path[-1]] = value


def apply_changes(base: Scenario, changes: dict[str, Any]) -> Scenario:
    """A new scenario: ``base`` with ``changes`` (dotted paths, see the module docstring)."""
    data = base.to_dict()
    for key, value in changes.items():
        parts = key.replace("__", ".").split(".")
        if parts[0] == "model" and len(parts) > 1:
            overrides = data.setdefault("model_overrides", {})
            _put(overrides, _model_path(parts[1:]), value)
            continue
        if key == "hardware" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if parts == ["routing", "capacity_factor"] and isinstance(data.get("search"), dict):
            data["search"]["capacity_factors"] = None
        _put(data, parts, value)
    return scenario_from_dict(data, source=f"{base.name} with {', '.join(f'{k}={v}' for k, v in changes.items())}")


@dataclass(frozen=True)
class Delta:
    metric: str
    base: Any
    changed: Any
    delta: float | None
    relative: float | None

    def to_dict(self) -> dict:
        return dict(metric=self.metric, base=self.base, changed=self.changed, delta=self.delta,
                    relative=self.relative)


@dataclass(frozen=True)
class WhatIfResult:
    base: PlanResult
    changed: PlanResult
    changes: dict
    deltas: tuple[Delta, ...]

    def to_dict(self) -> dict:
        return {"changes": self.changes, "deltas": [d.to_dict() for d in self.deltas],
                "base": self.base.to_dict(top=5), "changed": self.changed.to_dict(top=5)}


def headline(result: PlanResult) -> dict[str, Any]:
    """The numbers a side-by-side compares, from a plan's answer (None where infeasible)."""
    a = result.answer
    if a is None:
        return {"hardware": "infeasible"}
    r, ev = a.ranked, a.ranked.evaluation
    v = a.verification
    out = {
        "hardware": r.candidate.hardware,
        "parallelism": r.candidate.layout(),
        "devices": a.total_devices,
        "usd_per_hour": a.usd_per_hour,
        "usd_per_million_tokens": a.usd_per_million_tokens,
        "tpot_s": v.tpot_p99_s if v and v.tpot_p99_s is not None else ev.tpot_s,
        "ttft_s": v.ttft_p99_s if v and v.ttft_p99_s is not None else ev.ttft_s,
        "drop_fraction": ev.drop_fraction,
        "imbalance": ev.imbalance,
        "bottleneck": ev.bottleneck,
    }
    if result.scenario.kind == "training":
        out.update(days=r.days, total_usd=r.total_usd, mfu=ev.mfu)
        out.pop("tpot_s"), out.pop("ttft_s")
    return out


def side_by_side(base: PlanResult, changed: PlanResult) -> tuple[Delta, ...]:
    hb, hc = headline(base), headline(changed)
    rows = []
    for key in dict.fromkeys([*hb, *hc]):
        b, c = hb.get(key), hc.get(key)
        num = isinstance(b, (int, float)) and isinstance(c, (int, float)) and not isinstance(b, bool)
        delta = (c - b) if num else None
        rel = (delta / b) if num and b else (0.0 if num and delta == 0 else None)
        rows.append(Delta(key, b, c, delta, rel))
    return tuple(rows)


def what_if(base: Scenario, changes: dict[str, Any] | None = None, *, evaluator=None,
            **kw_changes) -> WhatIfResult:
    """Plan ``base`` and ``base`` + changes; keyword changes use ``__`` for dots (``model__top_k=4``)."""
    changes = {**(changes or {}), **{k.replace("__", "."): v for k, v in kw_changes.items()}}
    run_kw = {"executor": "inline"}
    changed_scenario = apply_changes(base, changes) if changes else base
    if evaluator is None:
        from moesim.planner.plan import default_evaluator

        evaluator = default_evaluator()
    b = plan(base, evaluator, **run_kw)
    c = plan(changed_scenario, evaluator, **run_kw) if changes else b
    if not b.feasible and not c.feasible:
        raise MoesimError(f"neither the base nor the changed scenario is feasible: {why_infeasible(b)}")
    return WhatIfResult(b, c, changes, side_by_side(b, c))


def why_infeasible(result: PlanResult) -> str:
    """The planner's one-line reason a scenario has no answer ('' when it has one)."""
    try:
        result.require_feasible()
    except MoesimError as err:
        return str(err)
    return ""
