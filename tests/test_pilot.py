"""Staged pilot (moesim/planner/pilot.py): stages at their true load, gates, rollback, runbook.

A small real plan (deepseek-v3 on 8 x h200-sxm, serving DES verified); the 1% stage's expected
p99 TPOT is checked against an independent serving-DES run at that load (other seeds): the two
95% intervals overlap (second engine = the same DES with independent randomness), and it differs
from the full-load value by more than both intervals (a full-load number would be wrong there).
"""
from __future__ import annotations

import json
import math

import pytest

from moesim.cli import run
from moesim.planner.costs import PlanCache
from moesim.planner.pilot import MIN_REQUESTS, _des_at, staged_pilot
from moesim.planner.plan import plan
from moesim.planner.scenario import scenario_from_dict, scenario_model
from moesim.planner.verify import _lengths, _system
from moesim.planner.whatif import apply_changes

SCENARIO = {
    "kind": "serving", "name": "pilot-small", "model": "deepseek-v3", "hardware": ["h200-sxm"],
    "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
    "slo": {"tpot_s": 0.08, "ttft_s": 3.0},
    "search": {"devices_per_replica": [8], "batch_per_device": [8, 32], "tp": [1], "attention_layouts": ["dp"]},
    "verify": {"top_n": 1, "duration_s": 30, "seeds": 2},
}


@pytest.fixture(scope="module")
def pilot():
    s = scenario_from_dict(SCENARIO)
    r = plan(s, executor="inline")
    return s, r, staged_pilot(s, r, error=0.2, error_source="test")


def test_stages_run_the_answer_at_their_own_load(pilot):
    s, r, p = pilot
    a = r.answer
    assert p.hardware == a.ranked.candidate.hardware and p.layout == a.ranked.candidate.layout()
    assert [st.share for st in p.stages] == [0.01, 0.1, 0.5, 1.0]
    target = 5000 / 400  # requests/s
    for st in p.stages:
        assert st.replicas == max(1, math.ceil(st.share * a.replicas))
        assert st.request_rate_per_replica == pytest.approx(st.share * target / st.replicas, rel=1e-12)
        tok = st.watch("output tokens/s per replica")
        assert tok.expected == pytest.approx(st.request_rate_per_replica * 400, rel=1e-12)  # offered load
        assert tok.rollback_value < tok.gate_value <= tok.expected


def test_one_percent_matches_an_independent_des_and_differs_from_full_load(pilot):
    s, r, p = pilot
    st = p.stages[0]
    t = st.watch("p99 TPOT")
    ev = r.answer.ranked.evaluation
    system = _system(ev, s, scenario_model(s), PlanCache())
    dur = MIN_REQUESTS / st.request_rate_per_replica
    own, own_h = _des_at(system, apply_changes(s, {"verify.duration_s": dur}), st.request_rate_per_replica,
                         _lengths(s.workload))["tpot"]
    assert own == pytest.approx(t.expected, rel=1e-12)  # the pilot's expectation is this DES run
    other = apply_changes(s, {"verify.seed": 100, "verify.duration_s": dur})
    ind, ind_h = _des_at(system, other, st.request_rate_per_replica, _lengths(s.workload))["tpot"]
    assert abs(own - ind) <= own_h + ind_h, (own, own_h, ind, ind_h)  # the 95% intervals overlap
    full = r.answer.verification.tpot_p99_s
    lo, hi = r.answer.verification.tpot_p99_ci
    assert t.expected < lo - ind_h and t.expected < 0.5 * full  # light load: a much smaller decode batch


def test_gates_and_rollbacks_per_metric(pilot):
    s, _, p = pilot
    for st in p.stages:
        tp = st.watch("p99 TPOT")
        assert tp.rollback_value == s.slo.tpot_s and tp.gate_value <= s.slo.tpot_s
        assert tp.band_low <= tp.expected <= tp.band_high
        assert tp.band_high - tp.expected >= 0.2 * tp.expected * (1 - 1e-12)  # the forecast error is in the band
        assert st.watch("drop fraction (quality proxy)").rollback_value == s.limits.max_drop_fraction
        im = st.watch("expert imbalance (max/mean)")
        assert im.gate_value < im.rollback_value
    text = p.checklist()
    assert text.count("## Stage") == 4 and text.count("ROLL BACK if") == 4 * 5


def test_cli_pilot_json_and_checklist(tmp_path, capsys):
    sc = tmp_path / "s.toml"
    import tomli_w
    sc.write_text(tomli_w.dumps(SCENARIO))
    md = tmp_path / "runbook.md"
    assert run(["pilot", str(sc), "--stages", "0.01,1", "--json", "--checklist", str(md)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [st["share"] for st in data["stages"]] == [0.01, 1.0] and data["provenance"]["answer_band"]
    assert md.read_text().startswith("# Pilot runbook")
    assert run(["pilot", str(sc), "--stages", "0.5,0.1"]) == 2
    assert "--stages" in capsys.readouterr().err
