"""Shared pieces of the step entry points: input checks, pipeline stages, layer stacks."""
from __future__ import annotations

import math

from moesim import units
from moesim.errors import InfeasibleError, SpecError
from moesim.specs import Cluster, HardwareProfile, ModelSpec, Parallelism, RoutingSpec, check_cluster, check_parallelism
from moesim.step.layer import OVERLAPS, LayerOps, LayerSetup, StackTime, layer_ops, stack_times


def check_deployment(model: ModelSpec, hw: HardwareProfile, cluster: Cluster, par: Parallelism,
                     overlap: str) -> None:
    """SpecError naming the field when the deployment cannot be laid out."""
    check_cluster(cluster, hw)
    check_parallelism(model, par, cluster)
    if overlap not in OVERLAPS:
        raise SpecError("overlap", overlap, f"one of {', '.join(OVERLAPS)}")
    if par.ep > 1 and not model.is_moe:
        raise SpecError("parallel.ep", par.ep, f"{model.name} is dense")


def check_routing(routing: RoutingSpec) -> None:
    if routing.capacity_factor is not None or routing.drift:
        raise SpecError("routing", routing.skew,
                        "the step model assumes dropless routing without drift (capacity_factor None, drift 0)")


def stage_layers(model: ModelSpec, pp: int) -> list[range]:
    """Contiguous layer ranges of the ``pp`` pipeline stages (ceil split, as compute.memory)."""
    per = math.ceil(model.num_layers / pp)
    return [range(s * per, min(model.num_layers, (s + 1) * per)) for s in range(pp)]


def require_fit(footprint) -> None:
    """InfeasibleError with the memory model's reason when the deployment does not fit."""
    if not footprint.fits:
        raise InfeasibleError(footprint.reason or "does not fit in device memory")


def stage_ops(setup: LayerSetup, layers: range, tokens: float, context: float) -> list[LayerOps]:
    return [layer_ops(setup, i, tokens, context) for i in layers]


def critical_stage(setup: LayerSetup, model: ModelSpec, pp: int, tokens: float, context: float,
                   overlap: str, head_s: float) -> tuple[list[LayerOps], float, StackTime, bool]:
    """(ops, time, ``StackTime`` of its layers, is the last stage) of the slowest pipeline stage
    (the last one also runs the LM head, ``head_s``, included in time).

    ``tokens`` are per micro-batch of the schedule (half the batch under two_microbatch).
    """
    best = None
    stages = stage_layers(model, pp)
    for s, layers in enumerate(stages):
        ops = stage_ops(setup, layers, tokens, context)
        st = stack_times(ops, overlap)
        t = st.time_s + (head_s if s == len(stages) - 1 else 0.0)
        if best is None or t > best[1]:
            best = (ops, t, st, s == len(stages) - 1)
    return best


def summed(ops: list[LayerOps], scale: float = 1.0) -> dict[str, float]:
    """Component times summed over ``ops`` and multiplied by ``scale``."""
    out: dict[str, float] = {}
    for o in ops:
        for k, v in o.components().items():
            out[k] = out.get(k, 0.0) + scale * v
    return out


def gib(x: float) -> float:
    return x / units.GiB
