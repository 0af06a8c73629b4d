"""Analytic step model: one layer -> a pipeline stage -> a training step or inference iteration.

Entry point: ``estimate(model, deployment, workload)`` over arrays of points (a scalar is an
array of one) -> ``StepEstimate``; ``StepEstimate.breakdown(i)`` is one point's
``StepBreakdown``. Workloads: ``Decode``, ``Prefill``, ``Training``; the deployment is
``moesim.specs.Deployment``; ``StepCache`` is the caller's memo, keyed by content.
"""
from moesim.step.breakdown import StepBreakdown
from moesim.step.cache import StepCache
from moesim.step.estimate import StepEstimate, estimate
from moesim.step.layer import LayerOps, two_microbatch_time
from moesim.step.training import pipeline_bubble_fraction
from moesim.step.workload import Decode, Prefill, Training

__all__ = [
    "Decode", "LayerOps", "Prefill", "StepBreakdown", "StepCache", "StepEstimate", "Training", "estimate",
    "pipeline_bubble_fraction", "two_microbatch_time",
]
