"""Entry points: :func:`route` (numbers in), :func:`route_model` (a model preset in), and
:func:`step_sampler` (one sampled step at a time, for the layer DES).

Conventions (both engines):
* ``tokens`` T is the step's tokens over the whole EP group; token ``i`` sits on source rank
  ``i mod ep`` (so every rank holds T/ep tokens) and tokens are served first come, first served;
* loads are token copies (token, expert) pairs; ``capacity_factor`` gives
  ``C = ceil(cf * T * k / E)`` copies per physical slot (``None``: dropless);
* ``skew`` strings: see :mod:`moesim.routing.popularity`; traces: :mod:`moesim.routing.trace`;
* placement and redundant slots: :mod:`moesim.routing.placement`; EP ranks are grouped
  ``ranks_per_node`` to a node;
* group-limited routing: experts in ``n_groups`` contiguous groups, each token first picks
  ``topk_groups`` groups (in proportion to their popularity mass), then its k experts there.
"""
from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from moesim.errors import SpecError
from moesim.routing.analytic import run_analytic
from moesim.routing.montecarlo import StepSampler, run_montecarlo
from moesim.routing.problem import RoutingProblem, build_problem
from moesim.routing.stats import RoutingStats
from moesim.specs.model import ModelSpec

Engine = Literal["analytic", "montecarlo"]
_ENGINES = {
    "analytic": lambda pb, samples, seed, progress=False: run_analytic(pb, seed),
    "montecarlo": lambda pb, samples, seed, progress=False: run_montecarlo(pb, samples, seed, progress=progress),
}


def _route_uncached(num_experts, top_k, tokens, ep, ranks_per_node, skew, capacity_factor, overflow,
                    placement, redundant_experts, n_groups, topk_groups, routing, drift, engine,
                    samples, seed, progress: bool = False) -> RoutingStats:
    pb = build_problem(num_experts, top_k, tokens, ep=ep, ranks_per_node=ranks_per_node, skew=skew,
                       capacity_factor=capacity_factor, overflow=overflow, placement=placement,
                       redundant_experts=redundant_experts, n_groups=n_groups, topk_groups=topk_groups,
                       routing=routing, drift=drift, seed=seed)
    return _ENGINES[engine](pb, samples, seed, progress)


_route_cached = functools.lru_cache(maxsize=4096)(_route_uncached)


def route(num_experts: int, top_k: int, tokens: int, *, ep: int = 1, ranks_per_node: int = 8,
          skew: str = "uniform", capacity_factor: float | None = None, overflow: str = "drop",
          placement: str = "contiguous", redundant_experts: int = 0, n_groups: int = 1,
          topk_groups: int = 1, routing: str = "token_choice", drift: float = 0.0,
          engine: Engine = "analytic", samples: int = 64, seed: int = 0,
          progress: bool = False) -> RoutingStats:
    """Expected routing of one step of ``tokens`` tokens, each to ``top_k`` of ``num_experts``.

    ``engine='analytic'`` computes expectations and order statistics without sampling
    (about a millisecond for uniform/balanced popularity, tenths of a second to seconds for
    skewed popularity; results are cached by argument; a skewed step too expensive to
    integrate raises SpecError pointing to ``engine='montecarlo'``);
    ``engine='montecarlo'`` averages ``samples`` sampled steps (Numba, seeded by ``seed``).
    ``seed`` also draws Dirichlet popularities and drift. Bad input raises SpecError.
    ``progress`` (Monte Carlo): a bar on stderr over the samples; such a call computes afresh and
    neither reads nor fills the cache (the numbers are the same; the bar is only drawn once).
    Returns a :class:`RoutingStats` with read-only arrays (results are cached).
    """
    if engine not in _ENGINES:
        raise SpecError("engine", engine, f"allowed: {', '.join(_ENGINES)}")
    if engine == "montecarlo" and samples < 1:
        raise SpecError("samples", samples, "must be >= 1")
    cf = None if capacity_factor is None else float(capacity_factor)
    run = functools.partial(_route_uncached, progress=True) if progress and engine == "montecarlo" else _route_cached
    return run(int(num_experts), int(top_k), int(tokens), int(ep), int(ranks_per_node),
                         str(skew), cf, overflow, placement, int(redundant_experts), int(n_groups),
                         int(topk_groups), routing, float(drift), engine, int(samples), int(seed))


def route_model(model: ModelSpec, tokens: int, **kwargs) -> RoutingStats:
    """:func:`route` with E, k and the group limit (n_groups, topk_groups) of a model preset."""
    if model.moe is None:
        raise SpecError("model", model.name, "is dense: it has no routed experts")
    moe = model.moe
    return route(moe.num_experts, moe.top_k, tokens, n_groups=moe.n_groups,
                 topk_groups=moe.topk_groups, **kwargs)


def step_sampler(num_experts: int, top_k: int, tokens: int, **kwargs) -> StepSampler:
    """A sampler of single steps for the DES: ``sampler.sample(rng)`` returns a StepSample with
    ``rank_expert_counts_RL`` (copies per expert slot on each rank, R x L) and ``traffic_RR``.
    Takes the keyword arguments of :func:`build_problem` (those of :func:`route` less engine)."""
    return StepSampler(build_problem(num_experts, top_k, tokens, **kwargs))


def sample_routing_step(sampler: StepSampler, rng: np.random.Generator):
    """One step from ``sampler`` with randomness from ``rng`` (numpy Generator)."""
    return sampler.sample(rng)


__all__ = ["route", "route_model", "step_sampler", "sample_routing_step", "RoutingProblem", "RoutingStats"]
