"""Built-in hardware profiles and model presets by exact name, and users' own TOML files by path.

This module and cli.py are the only places in the library that read files (through
:mod:`moesim.safeio`). Every load error becomes a one-line ``MoesimError`` that names the file,
the field path and what is allowed; values of a file loaded by path are never quoted (it may be
any file, e.g. one holding credentials). Loaded specs are cached by file content, never by name.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
try:  # Python 3.11+; the tomli backport (a dependency on 3.10) is the same parser
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

from moesim import safeio
from moesim.errors import MoesimError, SpecError, UnknownNameError
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


MAX_PROBLEMS = 6  # problems listed in one error line (then "and N more")


def validation_message(err: ValidationError, source: str = "", show_values: bool = True) -> str:
    """One line: ``source: field.path = value: what is allowed; ...`` (the first few problems).
    ``show_values=False`` (a file loaded by path) names each key but never quotes its value."""
    lines = []
    problems = _union_branches_dropped(err.errors())
    for e in problems[:MAX_PROBLEMS]:
        path = ".".join(str(p) for p in e["loc"] if not _is_union_tag(p))
        value = e.get("input")
        shown_value = "" if isinstance(value, dict) or not show_values else f" = {safeio.shown(repr(value))}"
        msg = e["msg"].removeprefix("Value error, ")
        cause = _spec_error(e)
        if cause is not None:  # a validator named the field: the path ends at it, never twice
            path = _joined(path, cause.field)
            shown_value = f" = {safeio.shown(repr(cause.value))}" if show_values and cause.value is not None else ""
            msg = cause.allowed
        elif not show_values and e.get("type") not in ("missing", "extra_forbidden"):
            msg = _without_values(e)
        path = path or "(top level)"
        lines.append(f"{path}{shown_value}: {msg}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    return (f"{source}: " if source else "") + "; ".join(lines)


def _is_union_tag(part) -> bool:
    """pydantic names the member of a union it tried as a path element (``literal['a','b']``,
    ``function-after[f(), Model]``): not a field a user wrote."""
    return isinstance(part, str) and "[" in part and part.endswith("]")


def _union_branches_dropped(problems: list) -> list:
    """``problems`` without the errors of a union's literal member when another member of the same
    union also failed: a table written where a name is allowed failed as the table, and the list
    of names it is not is noise."""
    def prefix(e):
        loc = e["loc"]
        k = next((i for i, p in enumerate(loc) if _is_union_tag(p)), None)
        return None if k is None else (loc[:k], str(loc[k]).startswith("literal["))

    tags = [prefix(e) for e in problems]
    tables = {t[0] for t in tags if t is not None and not t[1]}
    kept = [e for e, t in zip(problems, tags) if not (t is not None and t[1] and t[0] in tables)]
    return kept or problems


def _spec_error(e: dict) -> SpecError | None:
    """The SpecError a validator raised for error ``e`` (it names the field and what is allowed)."""
    cause = (e.get("ctx") or {}).get("error") if e.get("type") == "value_error" else None
    return cause if isinstance(cause, SpecError) else None


def _joined(path: str, field: str) -> str:
    """``path`` extended by the dotted ``field`` a validator named, without repeating the part of
    it ``path`` already ends with (``compute.peak_dense_tflops`` + ``peak_dense_tflops.fp8``)."""
    if not path:
        return field
    parts, names = path.split("."), field.split(".")
    for k in range(min(len(parts), len(names)), 0, -1):
        if parts[-k:] == names[:k]:
            return ".".join(parts + names[k:])
    return f"{path}.{field}"


def _without_values(e: dict) -> str:
    """pydantic's message for error ``e`` when it may quote the input (custom validators do):
    the generic message of its type instead, which names what is allowed."""
    if e.get("type") == "value_error":
        return "invalid value (not shown: it comes from a file that failed to load)"
    return e["msg"]


def build(cls: type[S], data: Any, source: str = "", show_values: bool = True) -> S:
    """Validate ``data`` as ``cls``; a failure raises MoesimError with the field path."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise MoesimError(validation_message(err, source or cls.__name__, show_values)) from None
    except MoesimError as err:  # raised inside a validator: prefix the source
        if not show_values:
            detail = f"{err.field}: {err.allowed}" if isinstance(err, SpecError) else "values not shown"
            raise MoesimError(f"{source or cls.__name__}: not a valid {cls.__name__} ({detail})") from None
        raise MoesimError(f"{source or cls.__name__}: {err}") from None


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file; a missing, unreadable, non-UTF-8, malformed or too deeply nested file
    raises one-line MoesimError naming it (see :mod:`moesim.safeio`)."""
    return safeio.load_toml(path)


def write_toml(data: dict, path: str | Path) -> None:
    """Write ``data`` as TOML (None values dropped, as TOML has no null)."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    safeio.atomic_write_text(path, tomli_w.dumps(strip(data)))


def replace_efficiency(path: str | Path, efficiency: "Efficiency") -> None:
    """Rewrite the ``[efficiency...]`` tables of a profile TOML, keeping every other line
    (comments and sources included); the new tables go at the end of the file."""
    from moesim.specs.hardware import Efficiency

    p = Path(path)
    kept, skipping = [], False
    for line in safeio.read_text(p, "hardware profile").splitlines():
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
    safeio.atomic_write_text(p, text)


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


MAX_NAME = 64  # built-in profile and preset names are short identifiers


class _SpecCache:
    """Loaded specs keyed by (kind, sha256 of the file's bytes): an edited file is reloaded,
    identical content is validated once. Specs are frozen and their mappings read-only, so a
    cached value can be shared."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], BaseModel] = {}

    def load(self, cls: type[S], path: Path, what: str) -> S:
        data = safeio.read_bytes(path, what)
        key = (cls.__name__, hashlib.sha256(data).hexdigest())
        spec = self._specs.get(key)
        if spec is None:
            where = f"{what} {safeio.shown(path)}"
            raw = safeio.parse_toml(safeio.decode_text(data, where), where)
            spec = self._specs[key] = build(cls, raw, source=where, show_values=False)
        return spec

    def clear(self) -> None:
        self._specs.clear()


_CACHE = _SpecCache()


def _spec_path(kind: str, name: str, folder: Path, known) -> Path:
    """The file of a built-in name or of a path (relative to the working directory)."""
    if not isinstance(name, str) or not name:
        raise MoesimError(f"{kind}: needs a name or a TOML path, got {safeio.shown(repr(name))}")
    if safeio.looks_like_path(name):
        return Path(name)
    path = folder / f"{name}.toml"
    if len(name) > MAX_NAME or name.startswith(".") or not path.is_file():
        raise UnknownNameError(kind, safeio.shown(name), known())
    return path


def file_digest(kind: str, name: str) -> str:
    """sha256 of the file a profile (``kind='hardware'``) or model name refers to, or a word
    saying why there is none (for fingerprints of what decided a result)."""
    folder = _profiles_dir() if kind == "hardware" else _PRESETS_DIR
    try:
        path = _spec_path(kind, name, folder, lambda: [])
        return hashlib.sha256(safeio.read_bytes(path, kind)).hexdigest()
    except MoesimError as err:
        return f"unreadable: {err}"


# ---- hardware ---------------------------------------------------------------------------------
def list_profiles() -> list[str]:
    """Names of the built-in hardware profiles."""
    return _names(_profiles_dir())


# profiles that replace catalog ones of the same name within a `profile_overrides` block
_OVERRIDES: ContextVar[Mapping[str, HardwareProfile]] = ContextVar("profile_overrides", default={})


@contextmanager
def profile_overrides(profiles: Mapping[str, HardwareProfile]) -> Iterator[None]:
    """Within the block (this thread or task only), ``load_profile(name)`` returns
    ``profiles[name]`` for those names: code that loads profiles by name, the planner's
    in-process (``executor="inline"``) search, priced on a calibrated or modified profile.
    A process pool started inside the block does not see it."""
    token = _OVERRIDES.set({**_OVERRIDES.get(), **profiles})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def load_profile(name: str) -> HardwareProfile:
    """A built-in profile by exact name, or a user's profile TOML by path (relative to the
    working directory: resolve names written in files with :func:`moesim.safeio.resolve_named`);
    inside ``profile_overrides``, the profile given for that name."""
    override = _OVERRIDES.get().get(name)
    if override is not None:
        return override
    return _CACHE.load(HardwareProfile, _spec_path("hardware profile", name, _profiles_dir(), list_profiles),
                       "hardware profile")


# ---- models -----------------------------------------------------------------------------------
def list_models() -> list[str]:
    """Names of the built-in model presets."""
    return _names(_PRESETS_DIR)


def load_model(name: str) -> ModelSpec:
    """A built-in preset by exact name, a user's model TOML by path (see :func:`load_profile`), or
    ``hf:PATH`` (a local Hugging Face config.json, mapped by :mod:`moesim.hf_import`)."""
    if name.startswith("hf:"):
        return load_hf_model(name[3:])
    return _CACHE.load(ModelSpec, _spec_path("model", name, _PRESETS_DIR, list_models), "model")


# ---- names written inside files ---------------------------------------------------------------
def resolve_file_names(data: Any, path: str | Path) -> Any:
    """``data`` (a scenario read from ``path``) with every file it names made absolute: ``model``,
    ``hardware`` (one or a list; price overrides follow the renamed hardware), ``routing.skew =
    "trace:FILE"`` and ``arrivals.trace_path``. Relative names resolve against the scenario's
    folder; a name outside that folder tree is refused (:func:`moesim.safeio.resolve_named`).
    Built-in names are left as they are."""
    if not isinstance(data, dict):
        return data
    base, source = Path(path).resolve().parent, safeio.shown(path)
    out = dict(data)

    def fix(name: Any, what: str, always: bool = False) -> Any:
        if isinstance(name, str) and (always or safeio.looks_like_path(name)):
            return safeio.resolve_named(name, base, what, source)
        return name

    renamed: dict[str, str] = {}
    if "model" in out:
        model = out["model"]
        if isinstance(model, str) and model.startswith("hf:"):
            out["model"] = "hf:" + fix(model[3:], "model", True)
        else:
            out["model"] = fix(model, "model")
    hw = out.get("hardware")
    if isinstance(hw, (str, list, tuple)):
        names = [hw] if isinstance(hw, str) else list(hw)
        fixed = [fix(n, "hardware") for n in names]
        renamed = {n: f for n, f in zip(names, fixed) if isinstance(n, str) and n != f}
        out["hardware"] = fixed[0] if isinstance(hw, str) else fixed
    prices = out.get("prices_usd_per_device_hour")
    if renamed and isinstance(prices, dict):
        out["prices_usd_per_device_hour"] = {renamed.get(k, k): v for k, v in prices.items()}
    routing = out.get("routing")
    if isinstance(routing, dict) and isinstance(routing.get("skew"), str) and routing["skew"].startswith("trace:"):
        out["routing"] = {**routing, "skew": "trace:" + fix(routing["skew"][len("trace:"):], "routing trace", True)}
    arrivals = out.get("arrivals")
    if isinstance(arrivals, dict) and isinstance(arrivals.get("trace_path"), str):
        out["arrivals"] = {**arrivals, "trace_path": fix(arrivals["trace_path"], "arrivals trace", True)}
    return out


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
