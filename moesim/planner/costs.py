"""The planner's one bridge to the step model: a candidate's ``Deployment``, and ``PlanCache``.

A ``Candidate`` (moesim/planner/evaluation.py) is a point of the search: hardware name, layout,
batch and capacity factor. ``deployment_of`` turns it, with the scenario's dtypes, overlap,
overflow policy, software stack and training settings, into the ``Deployment`` every model takes; nothing else
in the planner re-packs a deployment.

``PlanCache`` is the planner's memo, owned by the evaluator (``AnalyticEvaluator.cache``): the
caller sees it and may clear it. Every entry is keyed by content: the model's hash and
``Deployment.content_key`` (hardware profile content included), never a profile name, so a
profile recalibrated in-process prices anew. It holds the step model's ``StepCache`` (layer
setups, memory footprints) and the serving policy's replica costs and prefill choices. It
travels empty to worker processes (a memo, not state).
"""
from __future__ import annotations

from moesim.catalog import load_profile
from moesim.planner.scenario import overlap_mode
from moesim.specs import Deployment, ModelSpec
from moesim.step.cache import StepCache


def deployment_of(c, scenario, model: ModelSpec, *, hw=None, capacity: bool = True, **changes) -> Deployment:
    """The ``Deployment`` of candidate ``c`` under ``scenario`` (``capacity`` False: dropless)."""
    hw = load_profile(c.hardware) if hw is None else hw
    w = scenario.workload
    kw = dict(hardware=hw, devices=c.devices, tp=c.tp, pp=c.pp, dp=c.dp, ep=c.ep, etp=c.etp,
              attention_layout=c.attention_layout, redundant_experts=c.redundant_experts,
              overlap=overlap_mode(scenario, model), dtype=w.dtype,
              capacity_factor=c.capacity_factor if capacity and model.moe is not None else None,
              overflow=scenario.routing.overflow, placement=scenario.routing.placement, stack=scenario.stack)
    if scenario.kind == "serving":
        kw.update(kv_dtype=w.kv_dtype, attention_dtype=getattr(scenario.search, "attention_dtype", None))
    else:
        kw.update(recompute=w.recompute, recompute_modules=w.recompute_modules,
                  distributed_optimizer=w.distributed_optimizer, mtp_layers=w.mtp_layers)
    kw.update(changes)
    return Deployment(**kw)


class PlanCache:
    """Content-keyed memo of one evaluator (module docstring)."""

    def __init__(self):
        self.step = StepCache()
        self._values: dict[tuple, object] = {}
        self._deployments: dict[tuple, Deployment] = {}

    def deployment(self, c, scenario, model: ModelSpec, *, capacity: bool = True, **changes) -> Deployment:
        """``deployment_of``, memoized per (candidate layout, profile object, scenario settings) so
        that its content key is computed once."""
        hw = load_profile(c.hardware)
        w = scenario.workload
        key = (id(hw), c.devices, c.tp, c.pp, c.dp, c.ep, c.etp, c.attention_layout, c.redundant_experts,
               c.capacity_factor if capacity else None, model.moe is not None, scenario.kind, w.dtype, getattr(w, "kv_dtype", None),
               getattr(w, "recompute", None), getattr(w, "recompute_modules", None), getattr(w, "distributed_optimizer", None),
               getattr(w, "mtp_layers", None),
               overlap_mode(scenario, model),
               scenario.routing.overflow, scenario.routing.placement, scenario.stack,
               getattr(scenario.search, "attention_dtype", None),
               tuple(sorted(changes.items())))
        hit = self._deployments.get(key)
        if hit is None or hit.hardware is not hw:  # NOTE: by identity only while the entry holds the objects
            hit = self._deployments[key] = deployment_of(c, scenario, model, hw=hw, capacity=capacity, **changes)
        return hit

    def get(self, key: tuple, make):
        """The value under content ``key``, made by ``make()`` on a miss."""
        if key not in self._values:
            self._values[key] = make()
        return self._values[key]

    def key(self, model: ModelSpec, deployment: Deployment, *parts) -> tuple:
        return self.step.key(model, deployment, *parts)

    def __len__(self) -> int:
        return len(self._values) + len(self.step)

    def clear(self) -> None:
        self.step.clear()
        self._values.clear()
        self._deployments.clear()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()
