"""Shared pieces of every spec: the frozen strict base model and number formats (dtypes)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from moesim.errors import SpecError

Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "fp4"]
DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")

# NOTE: block-scaled formats count as their element type (docs/cases.md, "Names"):
# mxfp8 -> fp8, nvfp4 / mxfp4 -> fp4. Their scale bytes are added by ``bytes_per_element``.
DTYPE_ALIASES: dict[str, str] = {"mxfp8": "fp8", "nvfp4": "fp4", "mxfp4": "fp4", "e4m3": "fp8"}

_ELEMENT_BYTES: dict[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5,
}
# Scale bytes per element of block-scaled formats: one 8-bit scale per block.
# mxfp8 / mxfp4: 32-element blocks with an E8M0 scale (OCP MX spec v1.0) -> 1/32 byte each;
# nvfp4: 16-element blocks with an FP8 scale -> 1/16 byte each;
# DeepSeek-V3 fp8: 128x128 weight blocks with an fp32 scale -> 4/16384 byte each (negligible).
_SCALE_BYTES: dict[str, float] = {"mxfp8": 1 / 32, "mxfp4": 1 / 32, "nvfp4": 1 / 16}


def canonical_dtype(name: str, field: str = "dtype") -> str:
    """Map a dtype name (or an alias such as ``mxfp8``) to one of ``DTYPES``; raise naming ``field``."""
    key = str(name).lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in _ELEMENT_BYTES:
        allowed = ", ".join(DTYPES + tuple(DTYPE_ALIASES))
        raise SpecError(field, name, f"allowed dtypes: {allowed}")
    return key


def bytes_per_element(name: str) -> float:
    """Bytes one element occupies in memory, including block-scale overhead for MX/NV formats."""
    key = str(name).lower()
    return _ELEMENT_BYTES[canonical_dtype(key)] + _SCALE_BYTES.get(key, 0.0)


class FrozenDict(dict):
    """A read-only dict: what a spec's mapping fields hold, so a spec shared through a cache
    (``load_profile``) cannot be changed for the whole process. Copies (``dict(m)``,
    ``to_dict()``) are ordinary dicts."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("a spec's mappings are read-only (specs are frozen); copy it with dict(...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):  # pickling and deepcopy rebuild it whole instead of item by item
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> dict:
        return dict(self)


def freeze(value):
    """``value`` with every dict in it (recursively) made a :class:`FrozenDict`."""
    if isinstance(value, dict):
        return value if isinstance(value, FrozenDict) else FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


class Spec(BaseModel):
    """Base of every spec: frozen, unknown keys rejected, values validated on assignment,
    mapping fields read-only (:class:`FrozenDict`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _freeze_mappings(self):
        for name, value in self.__dict__.items():
            if isinstance(value, dict) and not isinstance(value, FrozenDict):
                self.__dict__[name] = freeze(value)
        return self

    def to_dict(self) -> dict:
        """Plain-JSON form (what ``model_dump(mode='json')`` gives)."""
        return self.model_dump(mode="json")
