"""Analytic step model: one layer -> a pipeline stage -> a training step or inference iteration.

Entry points: ``training_step``, ``prefill_iteration``, ``decode_iteration`` (-> StepBreakdown),
``decode_grid`` (vectorized decode estimates for the planner).
"""
from moesim.step.breakdown import StepBreakdown
from moesim.step.inference import decode_iteration, prefill_iteration
from moesim.step.layer import LayerOps, two_microbatch_time
from moesim.step.training import pipeline_bubble_fraction, training_step

__all__ = [
    "LayerOps", "StepBreakdown", "decode_iteration", "pipeline_bubble_fraction", "prefill_iteration",
    "training_step", "two_microbatch_time",
]
