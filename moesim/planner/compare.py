"""MoE vs dense: the same serving target and SLO planned for both models, side by side.

"Same quality target" is the user's call (which dense model matches the MoE's quality); moesim
plans both at the same rate and SLO on the same candidate hardware and compares devices, cost per
token and latency. The dense model is planned with the scenario's search space (EP is 1 for it).
"""
from __future__ import annotations

from dataclasses import dataclass

from moesim.catalog import load_model
from moesim.planner.plan import PlanResult, default_evaluator, plan
from moesim.planner.scenario import Scenario, scenario_from_dict
from moesim.planner.whatif import Delta, side_by_side


@dataclass(frozen=True)
class Comparison:
    moe: PlanResult
    dense: PlanResult
    deltas: tuple[Delta, ...]

    def to_dict(self) -> dict:
        return {"moe_model": self.moe.scenario.model, "dense_model": self.dense.scenario.model,
                "deltas": [d.to_dict() for d in self.deltas],
                "moe": self.moe.to_dict(top=5), "dense": self.dense.to_dict(top=5)}


def dense_scenario(scenario: Scenario, dense_model: str) -> Scenario:
    """``scenario`` with its model replaced by ``dense_model`` (model overrides dropped)."""
    load_model(dense_model)  # unknown names fail here, naming the model
    data = scenario.to_dict()
    data.update(model=dense_model, model_overrides={}, name=f"{scenario.name} ({dense_model})")
    return scenario_from_dict(data, source=f"{scenario.name} with model={dense_model}")


def compare(scenario: Scenario, dense_model: str, *, evaluator=None, executor: str = "inline") -> Comparison:
    """Plan the MoE scenario and the same scenario with ``dense_model``; deltas are dense minus MoE."""
    evaluator = evaluator or default_evaluator()
    moe = plan(scenario, evaluator, executor=executor)
    dense = plan(dense_scenario(scenario, dense_model), evaluator, executor=executor)
    return Comparison(moe, dense, side_by_side(moe, dense))
