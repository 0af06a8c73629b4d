"""Hand-worked routing cases (asserted exactly), closed forms, placement and bad input."""
import numpy as np
import pytest
from scipy import stats

from moesim.cli import run
from moesim.errors import SpecError
from moesim.routing import build_problem, place, route, write_trace
from moesim.routing.montecarlo import route_choices

# 2 ranks x 4 experts: E=4, EP=2, contiguous -> rank 0 holds experts {0, 1}, rank 1 {2, 3};
# ranks_per_node=1 -> node = rank. T=4 tokens, k=2; token i sits on source rank i % 2.
# Preference lists (first 2 = choices, the rest = reroute order):
PREFS = np.array([
    [0, 1, 2, 3],  # t0 on rank 0
    [0, 2, 1, 3],  # t1 on rank 1
    [0, 1, 3, 2],  # t2 on rank 0
    [3, 0, 2, 1],  # t3 on rank 1
])


def _case(overflow):
    # capacity_factor 1 -> C = ceil(1 * T * k / E) = ceil(4 * 2 / 4) = 2 copies per expert
    pb = build_problem(4, 2, 4, ep=2, ranks_per_node=1, capacity_factor=1.0, overflow=overflow)
    assert pb.capacity == 2
    return route_choices(pb, PREFS)


def test_hand_worked_drop():
    # t0: e0 (load 1), e1 (1)           -> rank 0 twice: traffic[0,0] = 2, node 0 gets t0
    # t1: e0 (2) -> rank 0, e2 (1) -> rank 1: traffic[1,0] = 1, traffic[1,1] = 1, both nodes get t1
    # t2: e0 full -> dropped; e1 (2) -> rank 0: traffic[0,0] = 3, node 0 gets t2
    # t3: e3 (1) -> rank 1: traffic[1,1] = 2, node 1 gets t3; e0 full -> dropped
    st = _case("drop")
    assert st.load_P.tolist() == [2, 2, 1, 1]
    assert st.traffic_RR.tolist() == [[3, 0], [1, 2]]
    assert st.dedup_RN.tolist() == [[2, 0], [1, 2]]
    assert st.counters_C.tolist() == [2, 0, 0, 2]  # dropped, rerouted, shared, overflowed
    assert st.rank_expert_counts_RL.tolist() == [[2, 2], [1, 1]]


def test_hand_worked_reroute():
    # t0, t1 as in the drop case: loads [2, 1, 1, 0]
    # t2: e0 full -> next preferred beyond its choices: e3 (room) -> rank 1 (rerouted 1),
    #     traffic[0,1] = 1; e1 (2) -> rank 0, traffic[0,0] = 3; t2 reaches nodes 1 and 0
    # t3: e3 (2) -> rank 1, traffic[1,1] = 2; e0 full -> next preferred e2 (load 1 < 2) -> rank 1
    #     (rerouted 2), traffic[1,1] = 3; t3 reaches node 1 once
    st = _case("reroute")
    assert st.load_P.tolist() == [2, 2, 2, 2]
    assert st.traffic_RR.tolist() == [[3, 1], [1, 3]]
    assert st.dedup_RN.tolist() == [[2, 1], [1, 2]]
    assert st.counters_C.tolist() == [0, 2, 0, 2]


def test_hand_worked_shared():
    # as "drop", but the 2 overflowing copies are served by the shared experts (no traffic)
    st = _case("shared")
    assert st.traffic_RR.tolist() == [[3, 0], [1, 2]]
    assert st.counters_C.tolist() == [0, 0, 2, 2]


def test_closed_form_binomial_drops():
    # Uniform routing: each expert's load is Binomial(T, k/E); expected drops = E * E[(X - C)+].
    # Computed here with scipy, independently of the library.
    T, E, k, cf = 4096, 64, 2, 1.0
    C = int(np.ceil(cf * T * k / E))
    x = np.arange(T + 1)
    expected = E * np.sum(np.clip(x - C, 0, None) * stats.binom.pmf(x, T, k / E)) / (T * k)
    got = route(E, k, T, ep=8, capacity_factor=cf).drop_fraction
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # same formula, exact pmf: rounding only
    mc = route(E, k, T, ep=8, capacity_factor=cf, engine="montecarlo", samples=200, seed=3).drop_fraction
    np.testing.assert_allclose(mc, expected, rtol=0.05)  # Monte Carlo: 200 steps, ~1.5% s.e.


def test_balanced_is_exact():
    s = route(64, 8, 4096, ep=8, skew="balanced", capacity_factor=1.0)
    assert s.drop_fraction == 0 and s.rank_imbalance == pytest.approx(1.0)
    np.testing.assert_array_equal(s.expert_tokens_E, np.full(64, 4096 * 8 / 64))


def test_expert_choice_closed_form():
    # each expert takes a random C-subset: P(token unserved) = (1 - C/T)^E
    T, E, k = 512, 16, 2
    a = route(E, k, T, ep=4, routing="expert_choice")
    m = route(E, k, T, ep=4, routing="expert_choice", engine="montecarlo", samples=200)
    C = int(np.ceil(T * k / E))
    assert a.drop_fraction == pytest.approx((1 - C / T) ** E, rel=1e-12)
    np.testing.assert_allclose(m.drop_fraction, a.drop_fraction, rtol=0.1)  # MC, ~5% s.e.
    assert m.rank_imbalance == pytest.approx(1.0)


def test_ep72_redundant_load_aware():
    pl = place(256, 72, 8, "load_aware", 32, p_E=np.arange(256, 0, -1, dtype=float))
    assert pl.num_slots == 288 and pl.slots_per_rank == 4 and pl.num_nodes == 9
    assert pl.replicas_E.sum() == 288 and pl.replicas_E[0] > 1  # hottest expert replicated
    for r in range(72):  # no rank holds two replicas of one expert
        held = pl.slot_expert_P[pl.slot_rank_P == r]
        assert len(set(held.tolist())) == held.size
    s = route(256, 8, 4096, ep=72, redundant_experts=32, placement="load_aware", n_groups=8, topk_groups=4)
    m = route(256, 8, 4096, ep=72, redundant_experts=32, placement="load_aware", n_groups=8,
              topk_groups=4, engine="montecarlo", samples=32)
    np.testing.assert_allclose(s.rank_tokens_max, m.rank_tokens_max, rtol=0.03)  # second engine
    assert s.traffic_RR.shape == (72, 72)
    np.testing.assert_allclose(s.traffic_RR.sum(), 4096 * 8, rtol=1e-9)


@pytest.mark.parametrize("argv, needle", [
    (["--experts", "4", "--top-k", "8"], "top_k"),
    (["--experts", "256", "--top-k", "8", "--ep", "72"], "ep"),
    (["--experts", "256", "--top-k", "8", "--skew", "zipf:x"], "skew"),
    (["--experts", "256", "--top-k", "8", "--capacity-factor", "-1"], "capacity-factor"),
])
def test_cli_bad_input(capsys, argv, needle):
    assert run(["route", "--tokens", "64", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_cli_bad_trace_shape(tmp_path, capsys):
    path = tmp_path / "t.npz"
    write_trace(path, 64, 8, counts_SE=np.ones((3, 64), dtype=int))
    assert run(["route", "--experts", "256", "--top-k", "8", "--tokens", "64", "--skew", f"trace:{path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_experts" in err


def test_cli_json_and_model(capsys):
    import json

    assert run(["route", "--experts", "256", "--top-k", "8", "--tokens", "4096", "--ep", "32",
                "--ranks-per-node", "8", "--skew", "zipf:1.2", "--capacity-factor", "1.25",
                "--overflow", "reroute", "--engine", "analytic", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("drop_fraction", "reroute_fraction", "rank_imbalance", "expert_imbalance",
                "active_experts_per_rank", "internode_fraction"):
        assert key in d
    assert run(["route", "--model", "deepseek-v3", "--tokens", "1024", "--ep", "32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["num_experts"], d["top_k"], d["n_groups"], d["topk_groups"]) == (256, 8, 8, 4)


def test_trace_roundtrip(tmp_path):
    choices = np.array([[0, 1], [1, 2], [0, 3], [0, 1]])
    path = tmp_path / "t.json"
    write_trace(path, 4, 2, choices_TK=choices)
    s = route(4, 2, 64, skew=f"trace:{path}")
    # counts 0:3, 1:3, 2:1, 3:1 of 8 -> popularity (3, 3, 1, 1)/8; inclusion sums to k
    np.testing.assert_allclose(s.expert_tokens_E.sum(), 128, rtol=1e-9)
    assert s.expert_tokens_E[0] > s.expert_tokens_E[3]
    with pytest.raises(SpecError):
        route(8, 2, 64, skew=f"trace:{path}")
