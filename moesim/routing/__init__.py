"""Routing: who goes where. Popularity models, placement, capacity and overflow, traffic.

Entry points: :func:`route`, :func:`route_model` (expected :class:`RoutingStats` of a step, by
the ``analytic`` or ``montecarlo`` engine) and :func:`step_sampler` (single sampled steps for
the DES). See :mod:`moesim.routing.api` for the conventions.
"""
from moesim.routing.api import route, route_model, sample_routing_step, step_sampler
from moesim.routing.montecarlo import StepSample, StepSampler
from moesim.routing.placement import Placement, place
from moesim.routing.problem import RoutingProblem, build_problem
from moesim.routing.stats import RoutingStats
from moesim.routing.trace import Trace, load_trace, write_trace

__all__ = [
    "route", "route_model", "step_sampler", "sample_routing_step", "StepSample", "StepSampler",
    "Placement", "place", "RoutingProblem", "build_problem", "RoutingStats", "Trace", "load_trace",
    "write_trace",
]
