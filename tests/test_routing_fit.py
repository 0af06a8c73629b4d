"""moesim/routing/fit.py and validation/fit_traces.py: fits recover planted parameters from
traces the engine itself sampled, the held-out measurement matches the engine's definitions
on hand-worked cases, the quick evaluation runs on a real trace, and ``moesim route --trace``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.cli import run as cli_main
from moesim.errors import SpecError
from moesim.routing import build_problem, fit, route, write_trace
from moesim.routing.montecarlo import route_choices
from moesim.routing.popularity import zipf_probs

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "validation" / "data" / "traces" / "e32k2_aux0.01_z0_noise0.npz"


@pytest.mark.parametrize("s", [0.6, 1.2])
def test_zipf_recovered_within_5_percent(s):
    # 100 engine steps of 2048 tokens: 400k copies, so log p of even the coldest expert
    # (~1% of copies at s = 1.2) has ~1% noise; 5% on s leaves room for that and the
    # inversion tolerance. The recovered popularity is the planted one to a few percent.
    c_SE = fit.sample_counts(32, 2, 2048, f"zipf:{s}", 0.0, 100, seed=1)
    base = fit.fit_explicit(c_SE, 2)
    z = fit.fit_zipf(base)
    assert z.param == pytest.approx(s, rel=0.05)
    assert z.detail["r2_loglog"] > 0.99
    assert_allclose(base.p_E, zipf_probs(32, s), rtol=0.1)
    # the naive share (counts / copies) is biased for the hot expert: inclusion < k p
    share_E = c_SE.sum(0) / c_SE.sum()
    assert base.p_E[0] > share_E[0]


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_dirichlet_recovered_within_20_percent(alpha):
    # The engine draws ONE popularity vector of E = 128 values, so the MLE has an irreducible
    # spread: sd(alpha) = 1 / sqrt(E psi'(a) - E^2 psi'(E a)) (Fisher information), ~10% at
    # alpha 0.5 and ~11% at alpha 1; 20% is ~2 sd. 100 steps x 4096 tokens make the count
    # noise on top of that small.
    c_SE = fit.sample_counts(128, 2, 4096, f"dirichlet:{alpha}", 0.0, 100, seed=0)
    d = fit.fit_dirichlet(fit.fit_explicit(c_SE, 2))
    assert d.param == pytest.approx(alpha, rel=0.20)
    assert d.skew.startswith("dirichlet:")


def test_drift_recovered_and_zero_without_drift():
    # Planted log-normal drift 0.5 around a Zipf base; Q from 200 steps x 32 experts has
    # a few percent noise, the fit samples its own 100 steps per sigma: 15% on sigma.
    base_p = zipf_probs(32, 0.8)
    skew = fit.skew_string(base_p)
    c_SE = fit.sample_counts(32, 2, 2048, skew, 0.5, 200, seed=7)
    base = fit.fit_explicit(c_SE, 2)
    dr = fit.fit_drift(c_SE, base, 2, steps=100)
    assert dr.param == pytest.approx(0.5, rel=0.15)
    assert dr.detail["q_observed"] > 10 * dr.detail["q_sampling_only"]
    still_SE = fit.sample_counts(32, 2, 2048, skew, 0.0, 200, seed=8)
    assert fit.fit_drift(still_SE, fit.fit_explicit(still_SE, 2), 2, steps=100).param < 0.05


def test_measure_hand_worked_tiny_trace():
    # E = 4, K = 2, T = 4 tokens. Step 0: tokens pick (0,1) (0,1) (0,2) (0,3) -> counts
    # [4, 2, 1, 1]; step 1: (0,1) (2,3) (0,2) (1,3) -> [2, 2, 2, 2].
    # cf 1.0: C = ceil(1.0 * 4 * 2 / 4) = 2 -> step 0 drops 4 - 2 = 2 of 8, step 1 none
    #   -> drop = 2 / 16 = 0.125. cf 1.5: C = 3 -> 1 / 16. cf 2.0: C = 4 -> 0.
    # EP 2 (experts {0,1} | {2,3}): step 0 loads [6, 2], step 1 [4, 4], mean rank load 4
    #   -> imbalance = mean(6, 4) / 4 = 1.25. EP 4: max expert 4 and 2 over mean 2 -> 1.5.
    choices_STK = np.array([[[0, 1], [0, 1], [0, 2], [0, 3]], [[0, 1], [2, 3], [0, 2], [1, 3]]])
    counts_SE = np.array([np.bincount(c.ravel(), minlength=4) for c in choices_STK])
    assert counts_SE.tolist() == [[4, 2, 1, 1], [2, 2, 2, 2]]
    m = fit.measure_counts(counts_SE, 2, capacity_factors=(1.0, 1.5, 2.0), eps=(2, 4))
    assert m.drop_X == {1.0: 0.125, 1.5: 0.0625, 2.0: 0.0}
    assert m.imbalance_X == {2: 1.25, 4: 1.5}
    # the engine routing these exact choices drops the same copies (route_choices, drop policy)
    for cf, want in ((1.0, 0.125), (1.5, 0.0625)):
        pb = build_problem(4, 2, 4, capacity_factor=cf)
        dropped = sum(route_choices(pb, c).counters_C[0] for c in choices_STK)
        assert dropped / 16 == want


def test_measure_matches_analytic_engine_on_sampled_steps():
    # measure_counts on engine-sampled steps is the engine's own definition, so it must agree
    # with route() (analytic) for a static popularity up to Monte Carlo noise: 600 steps of
    # 2048 tokens -> drop noise ~1% relative, imbalance ~0.3%; rtol 4% / 1.5%.
    skew = fit.skew_string(zipf_probs(32, 0.7))
    static = fit.predict_static(32, 2, 2048, skew)
    sampled = fit.predict_sampled(32, 2, 2048, skew, 0.0, 600)
    for cf in (1.0, 1.25):
        assert_allclose(sampled.drop_X[cf], static.drop_X[cf], rtol=0.04)
    for R in (2, 4, 8):
        assert_allclose(sampled.imbalance_X[R], static.imbalance_X[R], rtol=0.015)
    assert static.drop_X[1.0] == route(32, 2, 2048, skew=skew, capacity_factor=1.0).drop_fraction


def test_bad_input_names_the_field():
    with pytest.raises(SpecError, match="ep"):
        fit.measure_counts(np.full((2, 6), 2), 2, eps=(4,))
    with pytest.raises(SpecError, match="counts_SE"):
        fit.tokens_per_step(np.array([[2, 2], [3, 2]]), 2)
    with pytest.raises(SpecError, match="counts_SE"):
        fit.fit_explicit(np.zeros((3, 4)), 2)


def test_quick_evaluation_on_a_real_trace(tmp_path):
    from validation import fit_traces

    assert fit_traces.main(["--quick", "--traces", str(TRACE), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "fit-report.json").read_text())
    md = (tmp_path / "fit-report.md").read_text()
    (tr,) = report["traces"]
    (ly,) = tr["layers"]
    assert tr["name"] == TRACE.stem and ly["tokens"] == 2048
    a, b = ly["fit_steps"]
    with np.load(TRACE) as z:
        held_SE = z["counts_SLE"][b:tr["steps"], 0]
    want = fit.measure_counts(held_SE, 2)
    assert ly["measured"]["drop"]["1.25"] == want.drop_X[1.25]
    assert set(ly["predictions"]) == set(fit_traces.MODELS)
    for m in fit_traces.MODELS:
        c = ly["predictions"][m]["imbalance"]["8"]
        assert c["rel_err"] == pytest.approx((c["predicted"] - c["measured"]) / c["measured"])
        assert 1.0 <= c["predicted"] <= 8.0  # at most every copy on one of the 8 ranks
    assert "Drop fraction at capacity factor 1.25" in md and TRACE.stem in md


def test_cli_route_trace_alias(tmp_path, capsys):
    path = tmp_path / "t.npz"
    rng = np.random.default_rng(0)
    counts_SE = np.array([np.bincount(rng.choice(8, size=(64, 2), replace=True)[:, 0], minlength=8) * 2
                          for _ in range(3)])
    write_trace(path, 8, 2, counts_SE=counts_SE)
    assert cli_main(["route", "--trace", str(path), "--tokens", "64", "--ep", "2", "--json"]) == 0
    via_alias = json.loads(capsys.readouterr().out)
    assert cli_main(["route", "--skew", f"trace:{path}", "--experts", "8", "--top-k", "2", "--tokens", "64",
                     "--ep", "2", "--json"]) == 0
    via_skew = json.loads(capsys.readouterr().out)
    assert via_alias["num_experts"] == 8 and via_alias["top_k"] == 2
    assert via_alias["rank_imbalance"] == via_skew["rank_imbalance"]
    assert cli_main(["route", "--trace", str(path), "--skew", "zipf:1", "--tokens", "64"]) == 2
