"""``StepBreakdown``: the time of one training step or inference iteration, by component.

Component times are seconds per step on the critical device, summed over the layers it runs
(and, in training, over its micro-batches, forward and backward). Under overlap the components
add up to more than ``step_time_s``; ``exposed_comm_s`` is the communication time not hidden
behind compute. ``host_s`` is the time the device waits for the host to issue its operators
(eager phases; moesim/step/host.py), ``host_issue_s`` the host's whole issue time (which overlaps
the device's work); ``host_loop_s`` the serving executor loop's per-sequence host time of the
iteration (moesim/step/host.py eq. 4; its exposed part is in ``host_s``). Under ``none`` the components add up to ``step_time_s`` exactly.
``bottleneck`` names the largest contributor to the step time: a host-bound step names ``host``.
Capacity (``capacity_factor``, ``overflow``; ``dropless`` without a limit): ``drop_fraction``,
``reroute_fraction`` and ``backup_fraction`` are shares of the routed token copies of the
critical stage's MoE layers that no expert processed, that a next-preferred expert processed,
and that the shared-expert backup processed (moesim/routing).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

COMPONENTS: tuple[str, ...] = (
    "attention_s", "attention_comm_s", "elementwise_s", "router_s", "dispatch_s", "experts_s", "shared_experts_s",
    "combine_s", "dense_ffn_s", "embedding_head_s", "pipeline_bubble_s", "dp_comm_s", "optimizer_s", "host_s",
)

# component -> bottleneck name reported to users (planner vocabulary, DESIGN.md "Planner")
_BOTTLENECK: dict[str, str] = {
    "attention_s": "attention",
    "attention_comm_s": "tp_cp_comm",
    "elementwise_s": "elementwise",
    "router_s": "router",
    "dispatch_s": "all_to_all",
    "experts_s": "experts",
    "shared_experts_s": "shared_experts",
    "combine_s": "all_to_all",
    "dense_ffn_s": "dense_ffn",
    "embedding_head_s": "lm_head",
    "pipeline_bubble_s": "pipeline_bubble",
    "dp_comm_s": "dp_comm",
    "optimizer_s": "optimizer",
    "host_s": "host",
}


@dataclass(frozen=True)
class StepBreakdown:
    """One step (training) or iteration (prefill/decode) on the critical device; times in s."""

    phase: str
    overlap: str
    step_time_s: float
    tokens_per_step_per_device: float
    attention_s: float = 0.0
    attention_comm_s: float = 0.0
    elementwise_s: float = 0.0
    router_s: float = 0.0
    dispatch_s: float = 0.0
    experts_s: float = 0.0
    shared_experts_s: float = 0.0
    combine_s: float = 0.0
    dense_ffn_s: float = 0.0
    embedding_head_s: float = 0.0
    pipeline_bubble_s: float = 0.0
    dp_comm_s: float = 0.0
    optimizer_s: float = 0.0
    host_s: float = 0.0
    host_issue_s: float = 0.0
    host_loop_s: float = 0.0
    exposed_comm_s: float = 0.0
    model_flops_per_step_per_device: float = 0.0
    peak_flops: float = 0.0
    memory_GiB: float = 0.0
    memory_capacity_GiB: float = 0.0
    expert_imbalance: float = 1.0
    drop_fraction: float = 0.0
    reroute_fraction: float = 0.0
    backup_fraction: float = 0.0
    capacity_factor: float | None = None
    overflow: str = "dropless"

    @property
    def tokens_per_s_per_device(self) -> float:
        return self.tokens_per_step_per_device / self.step_time_s

    @property
    def model_tflops_per_device(self) -> float:
        """Model FLOPs (no recompute) per second per device, in TFLOP/s."""
        return self.model_flops_per_step_per_device / self.step_time_s / 1e12

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: achieved model FLOP/s over the dense peak of the dtype."""
        return self.model_flops_per_step_per_device / self.step_time_s / self.peak_flops if self.peak_flops else 0.0

    @property
    def memory_fits(self) -> bool:
        return self.memory_capacity_GiB <= 0 or self.memory_GiB <= self.memory_capacity_GiB

    def components(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COMPONENTS}

    @property
    def bottleneck(self) -> str:
        """Name of the largest component (all-to-all counts only its exposed part under overlap)."""
        comp = self.components()
        if self.overlap != "none":
            comm = comp["dispatch_s"] + comp["combine_s"]
            scale = self.exposed_comm_s / comm if comm > 0 else 0.0
            comp["dispatch_s"] *= scale
            comp["combine_s"] *= scale
        merged: dict[str, float] = {}
        for name, t in comp.items():
            merged[_BOTTLENECK[name]] = merged.get(_BOTTLENECK[name], 0.0) + t
        return max(merged, key=merged.get)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            tokens_per_s_per_device=self.tokens_per_s_per_device,
            model_tflops_per_device=self.model_tflops_per_device,
            mfu=self.mfu,
            memory_fits=self.memory_fits,
            bottleneck=self.bottleneck,
            components_s=self.components(),
        )
        return d


def sum_fields(a: dict[str, float], b: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    """``a + scale x b`` over component names (helper for accumulating layer times)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + scale * v
    return out


FIELD_NAMES = tuple(f.name for f in fields(StepBreakdown))
