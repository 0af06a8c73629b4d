"""``moesim tradeoff``: the curve at a fixed layout (library), and the command end to end (JSON,
text, plot, one-line errors with exit code 2).

The library tests build the answer (a planner ``Ranked``) by hand so they run the routing engine,
one decode iteration per point and the quality model, but no plan.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.cli import run
from moesim.errors import SpecError
from moesim.planner.evaluation import Candidate, Evaluation
from moesim.planner.rank import Ranked
from moesim.planner.scenario import load_scenario
from moesim.quality import default_predictor
from moesim.quality.tradeoff import step_time_at_capacity, tradeoff_curve

REPO = Path(__file__).resolve().parents[1]
SCENARIO = (
    'kind = "serving"\nname = "tradeoff-cli"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm"]\n'
    "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
    "[slo]\ntpot_s = 0.13\nttft_s = 3.0\n"
    "[search]\ndevices_per_replica = [8]\nbatch_per_device = [32]\ntp = [1]\nattention_layouts = [\"dp\"]\n"
    "[verify]\ntop_n = 0\n"
)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("tradeoff") / "s.toml"
    p.write_text(SCENARIO)
    return p


@pytest.fixture(scope="module")
def predictor():
    return default_predictor()


@pytest.fixture(scope="module")
def curve(scenario_file, predictor):
    scenario = load_scenario(scenario_file)
    c = Candidate("h200-sxm", 8, tp=1, ep=8, dp=8, attention_layout="dp", batch=32)
    ev = Evaluation(candidate=c, tokens_per_s=4000.0, step_time_s=0.03, tpot_s=0.05)
    answer = Ranked(evaluation=ev, replicas=1, total_devices=8, nodes=1, usd_per_hour=40.0,
                    usd_per_million_tokens=2.0, latency_s=0.05)
    return tradeoff_curve(scenario, answer, predictor, max_loss_increase=0.005), answer


def test_curve_covers_the_grid_and_dropless_costs_nothing(curve):
    cv, answer = curve
    # two-microbatch overlap: each half of the 32 sequences per device routes over the 8 EP ranks
    assert len(cv.points) == 6 * 3 + 1 and cv.routed_tokens == 32 // 2 * 8
    dropless = cv.points[-1]
    assert dropless.capacity_factor is None and dropless.quality.loss_increase == 0.0
    # the answer is dropless: its own point reproduces its TPOT and cost exactly (ratio 1)
    assert dropless.tpot_s == pytest.approx(answer.evaluation.tpot_s, rel=1e-12)
    assert dropless.usd_per_million_tokens == pytest.approx(answer.usd_per_million_tokens, rel=1e-12)


def test_quality_cost_non_increasing_and_cost_non_decreasing_in_cf(curve):
    cv, _ = curve
    for policy in ("drop", "reroute", "shared"):
        pts = [p for p in cv.points if p.overflow == policy and p.capacity_factor is not None]
        loss = [p.quality.loss_increase for p in pts]
        assert all(b <= a + 1e-12 for a, b in zip(loss, loss[1:])), (policy, loss)
        fractions = [p.drop_fraction + p.reroute_fraction + p.backup_fraction for p in pts]
        assert all(b <= a + 1e-12 for a, b in zip(fractions, fractions[1:]))
    drop_pts = [p for p in cv.points if p.overflow == "drop" and p.capacity_factor is not None]
    steps = [p.step_time_s for p in drop_pts]
    assert all(b >= a - 1e-15 for a, b in zip(steps, steps[1:]))  # dropped rows cost nothing
    assert steps[-1] <= cv.points[-1].step_time_s + 1e-15


def test_limit_marks_points_and_picks_the_cheapest(curve):
    cv, _ = curve
    best = cv.cheapest_within()
    assert best.within_quality_limit and best.quality.loss_increase <= 0.005
    assert all(p.usd_per_million_tokens >= best.usd_per_million_tokens - 1e-12
               for p in cv.points if p.within_quality_limit)
    d = cv.to_dict()
    assert d["cheapest_within_limit"]["loss_increase"] == best.quality.loss_increase
    assert "proxy" in d["quality_limits"] and "capacity_factor" in d["step_basis"]


def test_step_at_capacity_is_the_estimator_on_the_capped_deployment(scenario_file, predictor):
    """Each point is ``moesim.step.estimate`` on the answer's Deployment with the point's capacity
    setting (no scaling of a dropless step), and its quality the prediction of that step's own
    fractions: the planner's loss increase of the same candidate (moesim/planner/quality_cost.py)."""
    from moesim.catalog import load_model, load_profile
    from moesim.planner.analytic import AnalyticEvaluator
    from moesim.planner.costs import deployment_of
    from moesim.quality.tradeoff import _quality
    from moesim.specs.serving_features import inflight_context_tokens
    from moesim.step import Decode, estimate

    scenario = load_scenario(scenario_file)
    model, hw = load_model("deepseek-v3"), load_profile("h200-sxm")
    c = Candidate("h200-sxm", 8, ep=8, dp=8, attention_layout="dp", batch=32, capacity_factor=1.0)
    work = Decode(32, inflight_context_tokens(scenario.workload), scenario.routing.skew)
    for cf, policy in ((None, "drop"), (1.0, "drop"), (0.75, "reroute"), (1.0, "shared")):
        s = step_time_at_capacity(model, hw, c, scenario, cf, policy)
        dep = deployment_of(c, scenario, model, hw=hw, capacity_factor=cf, overflow=policy)
        bd = min((estimate(model, dep.with_(overlap=o), work, check_memory=False).breakdown(0)
                  for o in ("none", "two_microbatch")), key=lambda b: b.step_time_s)  # auto: the faster decode
        assert s.step_time_s == bd.step_time_s and s.drop_fraction == bd.drop_fraction  # exact: same call
        assert s.backup_fraction == bd.backup_fraction and s.reroute_fraction == bd.reroute_fraction
    capped = step_time_at_capacity(model, hw, c, scenario, 1.0, "drop")
    ev = AnalyticEvaluator().evaluate([c], scenario)[0]
    assert ev.drop_fraction == capped.drop_fraction > 0
    assert ev.loss_increase == _quality(predictor, capped, 8).loss_increase > 0


def test_training_scenarios_and_bad_limits_are_refused(predictor, curve):
    _, answer = curve
    with pytest.raises(SpecError, match="max_loss_increase"):
        tradeoff_curve(load_scenario(None), answer, predictor, max_loss_increase=-1.0)
    with pytest.raises(SpecError, match="serving"):
        tradeoff_curve(load_scenario(REPO / "examples" / "train_mixtral_8x22b.toml"), answer, predictor)
    with pytest.raises(SpecError, match="measured for"):
        tradeoff_curve(load_scenario(None), answer, predictor, policies=("drop", "renormalize"))


def _run(capsys, *argv):
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_text_and_plot(capsys, scenario_file, tmp_path):
    png = tmp_path / "t.png"
    code, out, _ = _run(capsys, "tradeoff", str(scenario_file), "--json", "--capacity-factors", "1.0,1.25,dropless",
                        "--policies", "drop,shared", "--max-loss-increase", "0.01", "--plot", str(png))
    assert code == 0 and png.stat().st_size > 1000
    data = json.loads(out)
    assert [(p["capacity_factor"], p["overflow"]) for p in data["points"]] == [
        (1.0, "drop"), (1.0, "shared"), (1.25, "drop"), (1.25, "shared"), (None, "drop")]
    assert data["points"][-1]["loss_increase"] == 0.0 and data["max_loss_increase"] == 0.01
    code, out, _ = _run(capsys, "tradeoff", str(scenario_file), "--capacity-factors", "1.25,dropless",
                        "--policies", "drop")
    assert code == 0 and "loss increase, nats (band)" in out and "proxy" in out


@pytest.mark.parametrize("argv, needle", [
    (["--max-loss-increase", "-0.1"], "--max-loss-increase"),
    (["--policies", "drop,renormalize"], "measured for drop, reroute, shared"),
    (["--capacity-factors", "0,1.0"], "--capacity-factors"),
    (["--capacity-factors", "fast"], "--capacity-factors"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, scenario_file, argv, needle):
    code, out, err = _run(capsys, "tradeoff", str(scenario_file), *argv)
    assert code == 2 and needle in err and err.count("\n") == 1 and out == ""


def test_compare_states_its_quality_assumption(capsys, scenario_file):
    code, out, _ = _run(capsys, "compare", str(scenario_file), "--dense", "llama3.1-70b", "--json")
    assert code == 0
    data = json.loads(out)
    assert "equal quality when the MoE routes dropless" in data["quality_assumption"]
    assert data["moe_quality"]["loss_increase"] == 0.0  # the scenario's answer is dropless


def test_answer_quality_at_a_capacity_factor(scenario_file, predictor, curve):
    from dataclasses import replace

    from moesim.quality.tradeoff import answer_quality

    _, answer = curve
    capped = replace(answer, evaluation=replace(answer.evaluation, candidate=replace(answer.candidate,
                                                                                  capacity_factor=1.0)))
    est, text = answer_quality(load_scenario(scenario_file), capped, predictor)
    point = next(p for p in curve[0].points if p.capacity_factor == 1.0 and p.overflow == "drop")
    assert est == point.quality  # the same routing and the same prediction as the curve's point
    assert "capacity factor 1" in text and "proxy" in text


def test_whatif_prices_a_top_k_change_against_the_trained_k(capsys, scenario_file, predictor):
    code, out, _ = _run(capsys, "whatif", str(scenario_file), "--set", "model.top_k=6", "--json")
    assert code == 0
    q = json.loads(out)["quality"]
    assert q["base"]["loss_increase"] == 0.0
    # dropless top-6 of the preset's 8: the model's top-k term, nothing else
    expected = predictor.predict(top_k=8, effective_top_k=6).loss_increase
    assert q["changed"]["loss_increase"] == pytest.approx(expected, rel=1e-12) and expected > 0
    assert "top-6 of 8" in q["changed"]["text"]
