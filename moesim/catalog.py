"""Built-in hardware profiles and model presets by exact name, and users' own TOML files by path.

This module and cli.py are the only places in the library that read files. Every load error
becomes a ``MoesimError`` whose one-line message names the file, the field path, the value and
what is allowed.
"""
from __future__ import annotations

import functools
try:  # Python 3.11+; the tomli backport (a dependency on 3.10) is the same parser
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from moesim.errors import MoesimError, UnknownNameError
from moesim.specs import (
    SLO,
    Cluster,
    HardwareProfile,
    ModelSpec,
    Parallelism,
    RoutingSpec,
    ServingWorkload,
    TrainingWorkload,
)

S = TypeVar("S", bound=BaseModel)

_PRESETS_DIR = Path(__file__).parent / "presets"


def _profiles_dir() -> Path:
    """Installed: the ``moesim.hwprofiles`` package; source checkout: the top-level hwprofiles/."""
    try:
        return Path(str(resources.files("moesim.hwprofiles")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "hwprofiles"


def validation_message(err: ValidationError, source: str = "") -> str:
    """One line per problem: ``source: field.path = value: what is allowed``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source + ': ' if source else ''}{path}{shown}: {msg}")
    return "; ".join(lines)


def build(cls: type[S], data: Any, source: str = "") -> S:
    """Validate ``data`` as ``cls``; a failure raises MoesimError with the field path."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise MoesimError(validation_message(err, source or cls.__name__)) from None
    except MoesimError as err:  # raised inside a validator: prefix the source
        raise MoesimError(f"{source or cls.__name__}: {err}") from None


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file; a missing or malformed file raises MoesimError naming it."""
    p = Path(path)
    if not p.is_file():
        raise MoesimError(f"{p}: no such file")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise MoesimError(f"{p}: not valid TOML: {err}") from None


def write_toml(data: dict, path: str | Path) -> None:
    """Write ``data`` as TOML (None values dropped, as TOML has no null)."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    Path(path).write_text(tomli_w.dumps(strip(data)))


def replace_efficiency(path: str | Path, efficiency: "Efficiency") -> None:
    """Rewrite the ``[efficiency...]`` tables of a profile TOML, keeping every other line
    (comments and sources included); the new tables go at the end of the file."""
    from moesim.specs.hardware import Efficiency

    p = Path(path)
    kept, skipping = [], False
    for line in p.read_text().splitlines():
        header = line.strip().startswith("[") and not line.strip().startswith("[[")
        if header:
            skipping = line.strip().strip("[]").strip().split(".")[0] == "efficiency"
        if not skipping:
            kept.append(line)
    eff = Efficiency.model_validate(efficiency.model_dump())
    defaults = Efficiency()
    block = {"origin": eff.origin, "compute_origin": eff.compute_origin, "comm_origin": eff.comm_origin}
    for section in ("compute", "comm"):
        changed = {k: float(f"{v:.4g}") if isinstance(v, float) else v
                   for k, v in getattr(eff, section).model_dump().items()
                   if v != getattr(getattr(defaults, section), k)}
        if changed:
            block[section] = changed
    text = "\n".join(kept).rstrip() + "\n\n" + tomli_w.dumps({"efficiency": block})
    build(HardwareProfile, tomllib.loads(text), source=str(p))  # never write an unloadable profile
    p.write_text(text)
    _load_profile_cached.cache_clear()


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or "\\" in name


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


# ---- hardware ---------------------------------------------------------------------------------
def list_profiles() -> list[str]:
    """Names of the built-in hardware profiles."""
    return _names(_profiles_dir())


@functools.lru_cache(maxsize=None)
def _load_profile_cached(path: str) -> HardwareProfile:
    return build(HardwareProfile, read_toml(path), source=path)


def load_profile(name: str) -> HardwareProfile:
    """A built-in profile by exact name, or a user's profile TOML by path."""
    if _looks_like_path(name):
        return _load_profile_cached(str(Path(name).resolve()))
    path = _profiles_dir() / f"{name}.toml"
    if not path.is_file():
        raise UnknownNameError("hardware profile", name, list_profiles())
    return _load_profile_cached(str(path))


# ---- models -----------------------------------------------------------------------------------
def list_models() -> list[str]:
    """Names of the built-in model presets."""
    return _names(_PRESETS_DIR)


@functools.lru_cache(maxsize=None)
def _load_model_cached(path: str) -> ModelSpec:
    return build(ModelSpec, read_toml(path), source=path)


def load_model(name: str) -> ModelSpec:
    """A built-in preset by exact name, a user's model TOML by path, or ``hf:PATH`` (a local
    Hugging Face config.json, mapped by :mod:`moesim.hf_import`)."""
    if name.startswith("hf:"):
        return load_hf_model(name[3:])
    if _looks_like_path(name):
        return _load_model_cached(str(Path(name).resolve()))
    path = _PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise UnknownNameError("model", name, list_models())
    return _load_model_cached(str(path))


def load_hf_model(path: str | Path, name: str | None = None) -> ModelSpec:
    """A model spec from a local Hugging Face config.json (nothing is downloaded)."""
    from moesim.hf_import import default_name, model_dict_from_hf, read_hf_config

    cfg = read_hf_config(path)
    data = model_dict_from_hf(cfg, name=name or default_name(path, cfg), source=str(path))
    return build(ModelSpec, data, source=f"hf:{path}")


# ---- measured error bands (moesim/provenance.py) --------------------------------------------------
ERROR_BANDS_PATH = Path(__file__).with_name("data") / "error_bands.json"


def read_error_bands(path: str | Path | None = None) -> dict:
    """The error-bands file (default: the shipped ``moesim/data/error_bands.json``); {} if absent."""
    import json

    p = ERROR_BANDS_PATH if path is None else Path(path)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise MoesimError(f"{p}: cannot read the error bands ({err})") from None


def write_error_bands(data: dict, path: str | Path) -> str:
    """Write an error-bands file (``moesim validate --write-bands``)."""
    import json

    try:
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as err:
        raise MoesimError(f"--write-bands {path}: {err.strerror}") from None
    return str(path)


# ---- schemas ----------------------------------------------------------------------------------
SCHEMAS: dict[str, type[BaseModel]] = {
    "hardware": HardwareProfile,
    "model": ModelSpec,
    "cluster": Cluster,
    "parallelism": Parallelism,
    "routing": RoutingSpec,
    "slo": SLO,
    "training": TrainingWorkload,
    "serving": ServingWorkload,
}


def json_schema(kind: str) -> dict:
    """JSON Schema of a spec kind (``workload`` gives training and serving together)."""
    if kind == "workload":
        return {
            "title": "Workload",
            "oneOf": [TrainingWorkload.model_json_schema(), ServingWorkload.model_json_schema()],
        }
    if kind not in SCHEMAS:
        raise UnknownNameError("schema", kind, [*SCHEMAS, "workload"])
    return SCHEMAS[kind].model_json_schema()
