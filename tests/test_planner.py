"""Planner search, ranking, frontier, rejections, what-if, training, pilot: with the closed-form evaluator.

Expected values are worked by hand from the formulas in moesim/planner/testing.py.
"""
from __future__ import annotations

import pytest

from moesim.errors import InfeasibleError, MoesimError
from moesim.planner.compare import compare
from moesim.planner.evaluation import Candidate, Evaluation
from moesim.planner.plan import plan
from moesim.planner.rank import Ranked, pareto_frontier
from moesim.planner.scenario import scenario_from_dict, scenario_model
from moesim.planner.testing import ClosedFormEvaluator
from moesim.planner.whatif import apply_changes, parse_sets, what_if

FAKE = ClosedFormEvaluator()


def serving(**changes) -> object:
    data = {
        "name": "planted", "model": "deepseek-v3", "hardware": ["slow-gpu", "fast-gpu"],
        "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 20000},
        "slo": {"tpot_s": 0.05, "ttft_s": 2.0},
        "search": {"devices_per_replica": [8, 16, 32], "batch_per_device": [16, 32, 64], "tp": [1],
                   "attention_layouts": ["dp"]},
        "verify": {"top_n": 2},
        "limits": {"max_drop_fraction": 0.01},  # the users' quality limit: 1% of routed copies may drop
    }
    s = scenario_from_dict(data)
    return apply_changes(s, changes) if changes else s


def test_planted_serving_answer_is_found():
    # Hand derivation (testing.py formulas): slow-gpu x8 does not fit (640/8 + 0.25 b > 80 GiB);
    # slow-gpu x16 b64: iteration = 0.010 + 0.0005*64 + 0.001*log2(16) = 0.046 s,
    # 64*16/0.046 = 22,261 tok/s >= 20,000 -> one replica, 16 devices x $1 = $16/h.
    # fast-gpu x8 b64: (0.010 + 0.032)/2 + 0.003 = 0.024 s -> 21,333 tok/s, 8 x $2.5 = $20/h (second).
    r = plan(serving(), FAKE, executor="inline")
    best = r.ranked[0]
    assert best.candidate.key() == "slow-gpu|n16|tp1|pp1|dp16|ep16|dp|b64|cfnone|r0"
    assert best.usd_per_hour == pytest.approx(16.0, rel=1e-12)
    assert best.evaluation.tpot_s == pytest.approx(0.046, rel=1e-12)
    assert r.ranked[1].candidate.hardware == "fast-gpu" and r.ranked[1].usd_per_hour == pytest.approx(20.0)
    # $/M tokens = 16 $/h / (20,000 tok/s x 3600 s/h) x 1e6 = 0.2222
    assert best.usd_per_million_tokens == pytest.approx(16 / 72e6 * 1e6, rel=1e-12)
    # verified answer: DES stand-in sustains 0.9 x 22,261 / 500 = 40.07 req/s >= 40 req/s -> 1 replica
    assert r.answer.verified and r.answer.total_devices == 16 and r.answer.devices_ci == (16, 32)


def test_rejections_summarized_by_reason():
    r = plan(serving(**{"slo.tpot_s": 0.03}), FAKE, executor="inline")
    reasons = {g.reason: g.count for g in r.rejected}
    # slow-gpu x8 (3 batches) does not fit; every candidate is counted once
    assert reasons["does_not_fit"] == 3
    assert sum(reasons.values()) + len(r.ranked) == r.space_size == 18
    assert reasons["misses_slo_tpot"] >= 1


@pytest.mark.parametrize("tight, loose", [(0.025, 0.05), (0.03, 0.04), (0.04, 0.1)])
def test_tighter_slo_never_needs_fewer_devices(tight, loose):
    a = plan(serving(**{"slo.tpot_s": tight}), FAKE, executor="inline", ).ranked[0]
    b = plan(serving(**{"slo.tpot_s": loose}), FAKE, executor="inline").ranked[0]
    assert a.usd_per_hour >= b.usd_per_hour
    assert a.total_devices >= b.total_devices or a.candidate.hardware != b.candidate.hardware


@pytest.mark.parametrize("rate", [5000, 20000, 40000, 90000])
def test_higher_rate_never_costs_less(rate):
    low = plan(serving(**{"workload.target_output_tokens_per_s": rate}), FAKE, executor="inline").ranked[0]
    high = plan(serving(**{"workload.target_output_tokens_per_s": rate * 1.5}), FAKE, executor="inline").ranked[0]
    assert high.usd_per_hour >= low.usd_per_hour


def test_pareto_frontier_hand_case():
    def rk(cost, lat, n):
        ev = Evaluation(candidate=Candidate("x", n))
        return Ranked(ev, 1, n, 1, cost, 0.0, lat)

    pts = [rk(1, 0.05, 1), rk(2, 0.04, 2), rk(2, 0.06, 3), rk(3, 0.045, 4), rk(4, 0.02, 5)]
    assert [r.total_devices for r in pareto_frontier(pts)] == [1, 2, 5]


def test_infeasible_names_closest_candidate():
    r = plan(serving(**{"slo.tpot_s": 0.005}), FAKE, executor="inline")
    assert not r.feasible
    with pytest.raises(InfeasibleError, match=r"closest is slow-gpu x8 .*, which does not fit: short of memory by 4.0 GiB"):
        r.require_feasible()


def test_whatif_no_change_has_zero_deltas():
    res = what_if(serving(), {}, evaluator=FAKE)
    numeric = [d for d in res.deltas if d.delta is not None]
    assert numeric and all(d.delta == 0 and d.relative == 0 for d in numeric)


def test_whatif_changes_model_and_hardware():
    s = serving()
    changed = apply_changes(s, parse_sets(["model.top_k=4", "routing.capacity_factor=1.0", "hardware=fast-gpu"]))
    assert scenario_model(changed).moe.top_k == 4 and scenario_model(s).moe.top_k == 8
    assert changed.hardware == ("fast-gpu",) and changed.capacity_factors == (1.0,)
    res = what_if(s, evaluator=FAKE, hardware="fast-gpu", routing__capacity_factor=1.2)
    d = {x.metric: x for x in res.deltas}
    # fast-gpu only: analytic $20/h (hand case above), but the verified rate (DES stand-in) is
    # 0.9 x 21,333 / 500 = 38.4 req/s < 40 -> 2 replicas, $40/h; base stays $16/h.
    # CF 1.2 drops 0.1 x 0.05 = 0.5% (<= 1% limit)
    assert (d["hardware"].base, d["hardware"].changed) == ("slow-gpu", "fast-gpu")
    assert d["usd_per_hour"].delta == pytest.approx(24.0) and d["drop_fraction"].changed == pytest.approx(0.005)
    # CF 1.0 drops 2.5% > 1%: every candidate is rejected, the changed side is infeasible
    res = what_if(s, evaluator=FAKE, routing__capacity_factor=1.0)
    assert {x.metric: x for x in res.deltas}["hardware"].changed == "infeasible"


def test_whatif_rejects_bad_model_change():
    with pytest.raises(MoesimError, match="top_k"):
        scenario_model(apply_changes(serving(), {"model.top_k": 999}))
    with pytest.raises(MoesimError, match="model.nonsense"):
        apply_changes(serving(), {"model.nonsense": 1})


def test_scenario_rejects_unknown_fields_and_missing_slo():
    with pytest.raises(MoesimError, match="workload.bogus_field = 1: Extra inputs"):
        apply_changes(serving(), {"workload.bogus_field": 1})
    with pytest.raises(MoesimError, match="slo: needs ttft_s or tpot_s"):
        apply_changes(serving(), {"slo.tpot_s": None, "slo.ttft_s": None})


def test_training_plan_meets_deadline_at_least_cost():
    data = {
        "kind": "training", "name": "train", "model": "mixtral-8x22b", "hardware": ["slow-gpu", "fast-gpu"],
        "workload": {"global_batch": 1024, "seq_len": 4096, "tokens_to_train": 2e12, "deadline_days": 30},
        "search": {"devices": [512, 1024, 2048], "tp": [1], "pp": [1], "ep": [8], "micro_batch": [1]},
    }
    r = plan(scenario_from_dict(data), FAKE, executor="inline")
    # tokens/s = n x 1000 x speed; 2e12 / 86400 / 30 = 771,605 tok/s needed:
    # slow 1024 -> 1.024e6 tok/s: 22.6 days, 1024 x $1 x 22.6 x 24 = $555,556 (= 2e12/1e3 s x $1/3600)
    # fast 512  -> 1.024e6 tok/s, same days at $2.5 -> dearer; slow 512 misses the deadline.
    best = r.ranked[0]
    assert (best.candidate.hardware, best.candidate.devices) == ("slow-gpu", 1024)
    assert best.total_usd == pytest.approx(2e12 / 1000 / 3600, rel=1e-9)
    assert {g.reason for g in r.rejected} >= {"misses_deadline"}


def test_compare_moe_vs_dense_side_by_side():
    c = compare(serving(), "llama3.1-405b", evaluator=FAKE)
    metrics = {d.metric for d in c.deltas}
    assert {"devices", "usd_per_hour", "usd_per_million_tokens", "tpot_s"} <= metrics
    assert c.dense.scenario.model == "llama3.1-405b"
