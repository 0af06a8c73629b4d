"""Capacity planner: search deployments, rank by cost to meet the target, what-if, MoE vs dense, pilot.

Entry points: :func:`plan` (a scenario -> ranked deployments, frontier, rejections, answer),
:func:`what_if`, :func:`compare`, :func:`staged_pilot`; scenarios via :func:`load_scenario`
(``None`` = the built-in default) and :func:`scenario_from_dict`.
"""
from moesim.planner.compare import compare
from moesim.planner.evaluation import Candidate, Evaluation, Evaluator, HardwareFacts, Verification
from moesim.planner.pilot import staged_pilot
from moesim.planner.plan import PlanResult, plan
from moesim.planner.scenario import (
    ServingScenario, TrainingScenario, default_scenario, load_scenario, scenario_from_dict,
)
from moesim.planner.whatif import apply_changes, what_if

__all__ = [
    "Candidate", "Evaluation", "Evaluator", "HardwareFacts", "PlanResult", "ServingScenario",
    "TrainingScenario", "Verification", "apply_changes", "compare", "default_scenario", "load_scenario",
    "plan", "staged_pilot", "scenario_from_dict", "what_if",
]
