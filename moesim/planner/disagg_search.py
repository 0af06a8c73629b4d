"""``[disaggregated]``: the bounds of the prefill/decode-disaggregated search of a serving scenario.

Each pool is searched on its own grid (hardware, devices per replica, attention layout, redundant
expert slots per rank, and the pool's batch: the prefill token budget per attention rank, the
decode sequences per device); the pools are then paired (heterogeneous pairs when
``heterogeneous``). Empty hardware lists mean the scenario's ``hardware``.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from moesim.specs.common import Spec


class DisaggSearch(Spec):
    """Search bounds of the disaggregated mode (defaults: the published large-EP shapes)."""

    prefill_hardware: tuple[str, ...] = Field((), description="prefill-pool hardware; () = scenario.hardware")
    decode_hardware: tuple[str, ...] = Field((), description="decode-pool hardware; () = scenario.hardware")
    heterogeneous: bool = Field(True, description="pair a prefill pool on one accelerator with a decode pool "
                                                  "on another")
    prefill_devices_per_replica: tuple[int, ...] = Field((8, 16, 32), description="devices of one prefill replica")
    decode_devices_per_replica: tuple[int, ...] = Field((8, 16, 32, 64, 72, 144),
                                                        description="devices of one decode replica")
    prefill_token_budget_per_rank: tuple[int, ...] = Field(
        (4096, 8192, 16384), description="new prompt tokens one attention rank prefills per iteration "
                                         "(SGLang --chunked-prefill-size per DP rank)")
    decode_batch_per_device: tuple[int, ...] | None = Field(
        None, description="decode sequences per device; None = search.batch_per_device")
    redundant_slots_per_rank: tuple[int, ...] = Field(
        (0, 1), description="EPLB redundant expert slots per EP rank, on top of the fewest that make the "
                            "experts divide the EP size")
    prefill_max_utilization: float = Field(0.9, gt=0, lt=1, description="largest prefill-pool load (arriving "
                                                                         "tokens / capacity) planned for")

    @field_validator("prefill_devices_per_replica", "decode_devices_per_replica", "prefill_token_budget_per_rank",
                     "decode_batch_per_device")
    @classmethod
    def _positive(cls, value, info):
        if value is None:
            return value
        if not value or any(v <= 0 for v in value):
            raise ValueError(f"{info.field_name} needs positive integers, got {value!r}")
        return tuple(sorted(set(value)))

    @field_validator("redundant_slots_per_rank")
    @classmethod
    def _slots(cls, value):
        if not value or any(v < 0 for v in value):
            raise ValueError(f"redundant_slots_per_rank needs integers >= 0, got {value!r}")
        return tuple(sorted(set(value)))

    @field_validator("prefill_hardware", "decode_hardware", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return (value,) if isinstance(value, str) else value
