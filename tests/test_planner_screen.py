"""Screening stage (moesim/planner/screen.py): the planner's answer and top candidates are the
exact path's; the bounds it relies on hold over the default space."""
from __future__ import annotations

import numpy as np
import pytest

from moesim.planner.analytic import AnalyticEvaluator
from moesim.planner.plan import _facts, plan
from moesim.planner.scenario import default_scenario, scenario_model
from moesim.planner.screen import MARGIN, decode_nodes, interpolate, node_bound, rate_bound, screen
from moesim.planner.space import serving_space


@pytest.fixture(scope="module")
def scenario():
    s = default_scenario()
    return s.model_copy(update={"verify": s.verify.model_copy(update={"top_n": 1, "seeds": 1, "duration_s": 10})})


def test_nodes_and_bounds_hand_worked():
    assert decode_nodes([4, 8, 16, 32, 64, 128, 256], 3) == [4, 32, 256]  # log-midpoint of 4..256 is 32
    assert decode_nodes([4, 8, 16], 1) == [16]
    assert decode_nodes([4, 8], 3) == [4, 8]
    # piecewise linear between nodes (exact); the step bound takes the node at or below (0 below the first)
    np.testing.assert_allclose(interpolate([4, 32], np.array([1.0, 8.0]), [4, 18, 32]), [1.0, 4.5, 8.0], rtol=0)
    np.testing.assert_array_equal(node_bound([4, 32], np.array([1.0, 8.0]), [2, 4, 18, 32, 64]),
                                  [0.0, 1.0, 1.0, 8.0, 8.0])
    # rates b / t at the nodes: 4 / 1 = 4, 32 / 4 = 8; bound = min(best node rate >= b, b / t(node <= b)):
    # b 4: min(8, 4 / 1) = 4;  b 18: min(8, 18 / 1) = 8;  b 32: min(8, 32 / 4) = 8
    np.testing.assert_array_equal(rate_bound([4, 32], np.array([1.0, 4.0]), [4, 18, 32]), [4.0, 8.0, 8.0])


def test_screened_plan_same_top_and_answer(scenario):
    exact = plan(scenario, executor="inline")
    fast = plan(scenario, executor="inline", screen=True, screen_keep=10)
    top = [(r.candidate.key(), r.usd_per_hour, r.evaluation.tpot_s, r.evaluation.ttft_s) for r in exact.ranked[:10]]
    assert [(r.candidate.key(), r.usd_per_hour, r.evaluation.tpot_s, r.evaluation.ttft_s)
            for r in fast.ranked[:10]] == top  # identical numbers: the same exact evaluator ran them
    assert fast.answer.to_dict() == exact.answer.to_dict()
    assert fast.timings_s["exact_layouts"] < len({r.candidate.layout() + r.candidate.hardware for r in exact.ranked}) + 40
    assert fast.evaluated < exact.evaluated  # screening set some aside


def _misses(e, scenario) -> bool:
    return e.tpot_s > scenario.slo.tpot_s or e.ttft_s > scenario.slo.ttft_s


def test_bounds_hold_over_default_space(scenario):
    """At every fitting candidate of the default space: exact TPOT >= decode step, TPOT and TTFT >=
    the screen's lower bounds, a candidate screened out on latency misses the SLO exactly, and
    exact decode step >= node bound x (1 - MARGIN)."""
    model = scenario_model(scenario)
    ev = AnalyticEvaluator()
    cands = serving_space(scenario, model).candidates
    facts = _facts(scenario, ev)
    exact = ev.evaluate(cands, scenario)
    checked = 0
    pairs = [(s, e) for nodes in (1, 3) for s, e in zip(screen(cands, scenario, model, facts, nodes=nodes), exact)]
    for s, e in pairs:
        assert s.fits == (e.reason != "does_not_fit")
        if not s.fits:
            continue
        assert s.decode_s is not None and e.step_time_s is not None
        if e.tpot_s is not None:
            assert e.tpot_s >= e.step_time_s  # T_mix >= t_d
            assert e.tpot_s >= s.tpot_lb_s and e.ttft_s >= s.ttft_lb_s  # the latency lower bounds
            checked += 1
        if s.detail.startswith(("screening: TPOT", "screening: TTFT")):  # the exact path rejects it too
            assert _misses(e, scenario)
    assert checked > 200
    # the bound itself, per layout, from the exact steps
    by_layout: dict = {}
    for e in exact:
        if e.step_time_s is not None:
            c = e.candidate
            by_layout.setdefault((c.hardware, c.devices, c.tp, c.attention_layout), {})[c.batch] = e.step_time_s
    for steps in by_layout.values():
        bs = sorted(steps)
        t = np.array([steps[b] for b in bs])
        for n in (1, 2, 3):
            nodes = decode_nodes(bs, n)
            t_nodes = np.array([steps[b] for b in nodes])
            assert (t >= node_bound(nodes, t_nodes, bs) * (1 - MARGIN)).all()
            assert (np.array(bs) / t <= rate_bound(nodes, t_nodes, bs) / (1 - MARGIN)).all()


def test_screen_keep_checked_and_other_evaluators_unscreened(scenario):
    from moesim.errors import SpecError
    from moesim.planner.testing import ClosedFormEvaluator

    with pytest.raises(SpecError, match="screen_keep"):
        plan(scenario, screen=True, screen_keep=0)
    s = scenario.model_copy(update={"hardware": ("slow-gpu", "fast-gpu")})
    ev = ClosedFormEvaluator()
    a, b = plan(s, ev, executor="inline", screen=True), plan(s, ev, executor="inline")
    assert a.to_dict()["candidates"] == b.to_dict()["candidates"] and "screen_s" not in a.timings_s
