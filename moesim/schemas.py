"""JSON Schemas of the files users write that are not single specs: planner scenarios
(``moesim plan``), serving scenarios (``moesim serve``) and measurement case files
(``moesim validate``, shared/CASES.md). ``moesim schema scenario|serve|cases`` prints them;
docs/scenario-reference.md is generated from them (``python -m moesim.schemas --markdown``).

The case-file schema is built from the reader's own tables (``moesim.cases.REQUIRED_INPUTS``
and ``METRICS``), so the two cannot drift apart.
"""
from __future__ import annotations

import json
import sys


def scenario_schema() -> dict:
    from moesim.planner.scenario import ServingScenario, TrainingScenario

    return {"title": "moesim plan scenario", "description": "kind = \"serving\" or \"training\" picks the form",
            "oneOf": [ServingScenario.model_json_schema(), TrainingScenario.model_json_schema()]}


def serve_schema() -> dict:
    from moesim.des.serving.scenario import ServeScenario

    return ServeScenario.model_json_schema()


def cases_schema() -> dict:
    from moesim.cases import METRICS, REQUIRED_INPUTS, SCHEMA

    variants = []
    for kind, required in REQUIRED_INPUTS.items():
        variants.append({
            "properties": {
                "kind": {"const": kind},
                "inputs": {"type": "object", "required": list(required),
                           "properties": {"not_stated": {"type": "array", "items": {"type": "string"}},
                                          "not_applicable": {"type": "array", "items": {"type": "string"}}}},
                "measured": {"type": "object", "required": ["metric", "value"],
                             "properties": {"metric": {"enum": list(METRICS[kind])},
                                            "value": {"type": "number", "exclusiveMinimum": 0}}},
            }})
    case = {"type": "object", "required": ["id", "kind", "hardware", "inputs", "measured"],
            "properties": {"id": {"type": "string"}, "kind": {"enum": list(REQUIRED_INPUTS)},
                           "hardware": {"type": "string", "description": "a profile name"},
                           "source": {"type": "string"}, "notes": {"type": "string"}},
            "oneOf": variants}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": f"{SCHEMA} measurement case file",
            "type": "object", "required": ["schema", "cases"],
            "properties": {"schema": {"const": SCHEMA}, "description": {"type": "string"},
                           "cases": {"type": "array", "items": case}}}


SCHEMAS = {"scenario": scenario_schema, "serve": serve_schema, "cases": cases_schema}


def _fields_md(schema: dict, defs: dict, prefix: str = "", out: list | None = None) -> list:
    """Rows (field, type, default, description) of an object schema, nested sections expanded."""
    out = [] if out is None else out
    for name, prop in schema.get("properties", {}).items():
        ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("anyOf", []) if "$ref" in a), None)
        if ref:
            _fields_md(defs[ref.split("/")[-1]], defs, f"{prefix}{name}.", out)
            continue
        typ = prop.get("type") or "/".join(str(a.get("type", a.get("const", "?"))) for a in prop.get("anyOf", []))
        if "enum" in prop:
            typ = " / ".join(map(str, prop["enum"]))
        if "const" in prop:
            typ = repr(prop["const"])
        default = json.dumps(prop["default"]) if "default" in prop else "required" if name in schema.get(
            "required", []) else ""
        out.append((prefix + name, typ, default, (prop.get("description") or "").replace("|", "/")))
    return out


def markdown() -> str:
    """docs/scenario-reference.md: every field of a planner scenario (serving and training) and
    of a serve scenario, from the schemas."""
    lines = ["# Scenario reference", "",
             "Generated from the JSON Schemas by `python -m moesim.schemas --markdown` (do not edit by hand;",
             "`moesim schema scenario|serve|cases` prints the schemas themselves). Units are in the field names.", ""]
    forms = [("Planner scenario, serving (`moesim plan`, kind = \"serving\")", scenario_schema()["oneOf"][0]),
             ("Planner scenario, training (`moesim plan`, kind = \"training\")", scenario_schema()["oneOf"][1]),
             ("Serving simulation scenario (`moesim serve`)", serve_schema())]
    for title, sch in forms:
        lines += [f"## {title}", "", "| field | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{f}` | {t} | {d} | {m} |" for f, t, d, m in _fields_md(sch, sch.get("$defs", {}))]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - docs generation
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown())
    else:
        json.dump({k: f() for k, f in SCHEMAS.items()}, sys.stdout, indent=2)
