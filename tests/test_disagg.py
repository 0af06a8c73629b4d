"""Prefill/decode-disaggregated planning (moesim/planner/disagg.py) and the serving features.

The search logic is checked on a planted scenario whose iteration costs are affine (a stub of
the ``PoolCosts`` seam), so the answer is derived by hand below; the seam itself is checked
against the step model's ``estimate`` at one point; properties (looser SLO, finer grid, MTP at
acceptance 0, hit rate 0) are checked on the stub and on the real models.
"""
from __future__ import annotations

import math

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_profile
from moesim.des.serving.arrivals import LengthDist, synthetic
from moesim.des.serving.deployment import kv_transfer
from moesim.des.serving.system import simulate
from moesim.errors import InfeasibleError, MoesimError
from moesim.planner import disagg, disagg_sweep
from moesim.planner.disagg_verify import fleet
from moesim.planner.plan import _facts, default_evaluator, plan
from moesim.planner.pool_cost import PoolCosts, PoolLayout, speculative_step_s
from moesim.planner.scenario import scenario_from_dict, scenario_model
from moesim.specs import Deployment
from moesim.specs.serving_features import ServingFeatures, SpeculativeDecoding, inflight_context

A_S, C_S = 0.010, 1e-4     # stub decode step: a + c x (sequences per device)   [s, s/sequence]
F_S, G_S = 0.05, 2e-5      # stub prefill: f + g x (new tokens per device)        [s, s/token]


class LinearPoolCosts:
    """The PoolCosts interface with affine iteration times (hand-derivable answers)."""

    def __init__(self, scenario, model):
        self.scenario, self.model, self.spec = scenario, model, scenario.features.speculative

    def decode_step_s(self, layout, batch, context, overlap=None):
        return speculative_step_s(self.spec, self.model, lambda b, c: A_S + C_S * b, batch, context)

    def decode_overlap(self, layout, batch, context):
        return "none"

    def tokens_per_step(self):
        return 1.0 if self.spec is None else self.spec.tokens_per_step

    def decode_info(self, layout, batch, context):
        return "HBM", 1.0

    def prefetch_decode(self, layout, batch_B, context):
        pass

    def prefill_s(self, layout, new_tokens_per_device, context):
        return F_S + G_S * new_tokens_per_device

    def kv_capacity(self, layout):
        return 10**9


def _planted(**over):
    data = {
        "kind": "serving", "name": "planted", "model": "deepseek-v3", "hardware": ["h100-sxm", "h200-sxm"],
        "prices_usd_per_device_hour": {"h100-sxm": 2.0, "h200-sxm": 3.0}, "modes": ["disaggregated"],
        "workload": {"prompt_len": 2000, "output_len": 500, "target_output_tokens_per_s": 100000},
        "slo": {"tpot_s": 0.05, "ttft_s": 0.17},
        "search": {"tp": [1], "attention_layouts": ["dp"]},
        "disaggregated": {"decode_devices_per_replica": [8, 16], "prefill_devices_per_replica": [8],
                          "prefill_token_budget_per_rank": [8192], "redundant_slots_per_rank": [0],
                          "decode_batch_per_device": [16, 64, 256, 512]},
        "verify": {"top_n": 0},
    }
    for path, value in over.items():
        node = data
        *head, last = path.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return scenario_from_dict(data)


def _stub_search(sc):
    model = scenario_model(sc)
    return disagg_sweep.search(sc, model, _facts(sc, default_evaluator()), costs=LinearPoolCosts(sc, model))


def test_planted_answer_matches_hand_derivation():
    best = _stub_search(_planted()).best
    # decode: t(b) = 0.010 + 1e-4 b; TPOT <= 50 ms allows b <= 400, so b = 256: t = 35.6 ms;
    # one 16-device replica emits 256 x 16 / 0.0356 = 115,056 tok/s >= 100,000 -> R_d = 1 (16 devices; 2 x 8
    # costs the same and loses the tie on the key), cheapest on h100 ($2): $32/h.
    assert (best.decode.layout.hardware, best.decode.layout.devices, best.decode.batch, best.decode.replicas) == \
        ("h100-sxm", 16, 256, 1)
    assert_allclose(best.decode.tpot_s, 0.0356, rtol=1e-12)
    # prefill: lambda = 200 req/s x 2000 = 400,000 prompt tok/s; budget B' = 8192 x 8 ranks = 65,536 tokens,
    # G(x) = 0.05 + 2e-5 x / 8. Capacity B'/G(B') = 306,472 tok/s -> at least ceil(400000 / (0.9 x 306472)) = 2.
    # R = 2: a = 200,000 tok/s, T* = 0.05 + 0.5 T* -> 0.1 s, TTFT = 1.99 x 0.1 + xfer = 0.199 s + xfer > 0.17;
    # R = 3: T* = 0.05 + T*/3 -> 0.075 s, TTFT = 0.14925 s + xfer <= 0.17 -> 3 x 8 h100 = $48/h.
    hw = load_profile("h100-sxm")
    tr = kv_transfer(Deployment(hardware=hw, devices=8, dp=8, ep=8, attention_layout="dp"))
    xfer = tr.latency_s + 2000 * 70272 / tr.bandwidth_Bps  # DeepSeek-V3 MLA KV: (512 + 64) x 61 layers x 2 B
    p = best.prefill
    assert (p.layout.hardware, p.layout.devices, p.replicas) == ("h100-sxm", 8, 3)
    assert_allclose(p.step_s, 0.075, rtol=1e-6)  # fixed-point iteration converged (tolerance 1e-9 relative)
    assert_allclose(p.ttft_s, 1.99 * 0.075 + xfer, rtol=1e-6)
    assert_allclose(best.usd_per_hour, 32.0 + 48.0, rtol=1e-12)
    assert not best.heterogeneous


def test_heterogeneous_pairs_and_their_switch():
    sc = _planted(**{"disaggregated.prefill_hardware": ["h200-sxm"], "disaggregated.decode_hardware": ["h100-sxm"]})
    best = _stub_search(sc).best
    assert best.heterogeneous and best.prefill.layout.hardware == "h200-sxm"
    assert_allclose(best.usd_per_hour, 32.0 + 3 * 8 * 3.0, rtol=1e-12)  # same counts, h200 prefill at $3
    off = _stub_search(_planted(**{"disaggregated.prefill_hardware": ["h200-sxm"],
                                   "disaggregated.decode_hardware": ["h100-sxm"],
                                   "disaggregated.heterogeneous": False}))
    assert off.best is None and "heterogeneous = false" in off.lacks()


def test_looser_slo_never_costs_more():
    for field, limits in (("slo.tpot_s", (0.02, 0.03, 0.04, 0.05, 0.08)), ("slo.ttft_s", (0.12, 0.15, 0.17, 0.5, 2.0))):
        costs = []
        for limit in limits:
            best = _stub_search(_planted(**{field: limit})).best
            costs.append(best.usd_per_hour if best else math.inf)
        assert all(b <= a for a, b in zip(costs, costs[1:])), (field, costs)
        assert math.isfinite(costs[-1])


def test_finer_batch_grid_moves_the_answer_by_at_most_one_step():
    coarse_grid, fine_grid = [16, 64, 256], [16, 32, 64, 128, 192, 256, 320, 384]
    coarse = _stub_search(_planted(**{"disaggregated.decode_batch_per_device": coarse_grid})).best
    fine = _stub_search(_planted(**{"disaggregated.decode_batch_per_device": fine_grid})).best
    assert fine.usd_per_hour <= coarse.usd_per_hour  # a superset of candidates never costs more
    # the coarse answer is no worse than the fine answer's batch rounded down to the coarse grid
    below = max(b for b in coarse_grid if b <= fine.decode.batch)
    at_below = _stub_search(_planted(**{"disaggregated.decode_batch_per_device": [below]})).best
    assert coarse.usd_per_hour <= at_below.usd_per_hour


def test_mtp_at_acceptance_zero_never_better_and_acceptance_helps():
    base = _stub_search(_planted()).best.decode
    for d in (1, 2, 3):
        spec = {"draft_tokens": d, "acceptance_rate": 0.0}
        sc = _planted(**{"features.speculative": spec})
        zero = _stub_search(sc).best.decode
        assert zero.usd_per_hour >= base.usd_per_hour
        stub, plain = LinearPoolCosts(sc, scenario_model(sc)), LinearPoolCosts(_planted(), scenario_model(sc))
        for b in (16, 64, 256):  # at every batch the per-token time is no better
            assert stub.decode_step_s(None, b, 2250) / stub.tokens_per_step() >= plain.decode_step_s(None, b, 2250)
    good = _stub_search(_planted(**{"features.speculative": {"draft_tokens": 1, "acceptance_rate": 0.85}})).best
    assert good.decode.usd_per_hour <= base.usd_per_hour


def test_speculative_closed_forms():
    s = SpeculativeDecoding(draft_tokens=2, acceptance_rate=0.8)
    assert_allclose(s.tokens_per_step, 1 + 0.8 + 0.64, rtol=1e-12)  # 1 + a + a^2
    assert SpeculativeDecoding(draft_tokens=3, acceptance_rate=0.0).tokens_per_step == 1.0
    assert SpeculativeDecoding(draft_tokens=3, acceptance_rate=1.0).tokens_per_step == 4.0
    # verify step of an affine decode t = a + c b: t(2b, 1) + t(b, C) - t(b, 1) = a + 2 c b, plus one draft
    # pass of mtp_layers / num_layers = 1 / 61 of the step (DeepSeek-V3)
    model = scenario_model(_planted())
    t = speculative_step_s(SpeculativeDecoding(draft_tokens=1, acceptance_rate=0.5), model,
                           lambda b, c: A_S + C_S * b, 100, 3000)
    assert_allclose(t, (A_S + 2 * C_S * 100) + (A_S + C_S * 100) / 61, rtol=1e-12)
    # lognormal lengths: in-flight context P + L e^(s^2) / 2 (length-biased sampling)
    w = _planted(**{"workload.length_distribution": "lognormal", "workload.length_sigma": 0.5}).workload
    assert_allclose(inflight_context(w), 2000 + 500 * math.exp(0.25) / 2, rtol=1e-12)


@pytest.mark.parametrize("field, value, name", [
    ("features.prefix_cache_hit_rate", 1.0, "prefix_cache_hit_rate"),
    ("features.prefix_cache_hit_rate", -0.1, "prefix_cache_hit_rate"),
    ("features.speculative", {"acceptance_rate": 1.5}, "acceptance_rate"),
    ("features.speculative", {"acceptance_rate": -0.5}, "acceptance_rate"),
])
def test_bad_features_name_the_field(field, value, name):
    with pytest.raises(MoesimError) as err:
        _planted(**{field: value})
    assert name in str(err.value) and "\n" not in str(err.value).strip()


def test_disaggregated_fleet_tpot_insensitive_to_prompt_bursts():
    # The fleet the DES checks (planted answer) against a co-located replica of the same cost model when
    # the prompts grow 8x: the decode pool's p99 TPOT barely moves (a decode step is 10 ms + 0.1 ms per
    # sequence per device); the co-located replica's mixed iterations carry the prompts, so its TPOT grows.
    sc = _planted()
    model = scenario_model(sc)
    stub = LinearPoolCosts(sc, model)
    best = _stub_search(sc).best
    system = fleet(best, stub, best.prefill.replicas, best.decode.replicas)
    from moesim.des.serving.replica import SchedulerConfig
    from moesim.des.serving.system import Pool, ServingSystem

    co = ServingSystem(colocated=Pool(system.decode.cost, 1, SchedulerConfig(8192, 1024)))
    out = {}
    for name, prompt in (("steady", 1000), ("burst", 8000)):  # the same requests, prompts 8x longer
        reqs = synthetic("poisson", 10.0, 40.0, LengthDist.fixed(prompt), LengthDist.fixed(200), 3)
        out[name] = (simulate(system, reqs, warmup_s=4.0, window_end_s=40.0).tpot_s.p99,
                     simulate(co, reqs, warmup_s=4.0, window_end_s=40.0).tpot_s.p99)
    (d0, c0), (d1, c1) = out["steady"], out["burst"]
    assert d1 / d0 < 1.10 and c1 / c0 > 1.10 and d1 < c1


# ---- the seam against the step model -------------------------------------------------------------
def _small(**over):
    data = {"kind": "serving", "name": "small", "model": "deepseek-v3", "hardware": ["h200-sxm"],
            "modes": ["colocated", "disaggregated"],
            "workload": {"prompt_len": 1000, "output_len": 400, "target_output_tokens_per_s": 5000},
            "slo": {"tpot_s": 0.13, "ttft_s": 3.0},  # the sglang device fraction (0.635) slows compute
            "search": {"devices_per_replica": [8], "batch_per_device": [16, 64], "tp": [1],
                       "attention_layouts": ["dp"]},
            "disaggregated": {"decode_devices_per_replica": [8], "prefill_devices_per_replica": [8],
                              "prefill_token_budget_per_rank": [8192], "redundant_slots_per_rank": [0]},
            "verify": {"top_n": 0}}
    for path, value in over.items():
        node = data
        *head, last = path.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return scenario_from_dict(data)


def test_seam_equals_the_step_model():
    from moesim.planner.costs import PlanCache
    from moesim.planner.serving_policy import prefill_overlap
    from moesim.step import Decode, Prefill, estimate

    sc = _small()
    model = scenario_model(sc)
    w = sc.workload
    costs = PoolCosts(sc, model)
    lay = PoolLayout("h200-sxm", 8, 1, 8, "dp", 0)
    # the reference deployment written out by hand (dropless, the scenario's dtypes, MoE decode overlap)
    dep = Deployment(hardware=load_profile("h200-sxm"), devices=8, dp=8, ep=8, attention_layout="dp",
                     dtype=w.dtype, kv_dtype=w.kv_dtype, overlap="two_microbatch")
    refs = {o: estimate(model, dep.with_(overlap=o), Decode(16, 1200, sc.routing.skew), check_memory=False
                        ).step_time_s[0] for o in ("two_microbatch", "none")}
    for o, ref in refs.items():  # one array call == one point, under each mode
        assert_allclose(costs.decode_step_s(lay, 16, 1200, o), ref, rtol=1e-9)
    # search.overlap = auto: the pool's decode step is the faster mode's (serving_policy.faster_overlap)
    assert costs.decode_overlap(lay, 16, 1200) == min(refs, key=refs.get)
    assert_allclose(costs.decode_step_s(lay, 16, 1200), min(refs.values()), rtol=1e-9)
    mode = prefill_overlap(lay.candidate(), sc, model, PlanCache())
    ref = estimate(model, dep.with_(prefill_overlap=mode), Prefill(1000, 2.0), check_memory=False).step_time_s[0]
    assert_allclose(costs.prefill_s(lay, 2000.0, (1000 + 1) / 2), ref, rtol=1e-9)
    # a cached prefix is attended: the same new tokens over a longer context cost more (once the pass is
    # GPU-bound; at 1,000 tokens per device the eager host issue time, ~0.59 s, hides it)
    assert costs.prefill_s(lay, 8000.0, 4000 + 2001) > costs.prefill_s(lay, 8000.0, 2001)


def test_small_plan_both_modes_and_features():
    r0 = plan(_small())
    assert r0.disaggregated.best is not None and r0.modes is not None
    # hit rate 0 given explicitly is today's plan, to the last number
    r_zero = plan(_small(**{"features.prefix_cache_hit_rate": 0.0}))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("timings_s", "scenario")}  # noqa: E731
    assert strip(r_zero.to_dict()) == {**strip(r0.to_dict()), "disaggregated": {
        **r0.to_dict()["disaggregated"], "timings_s": r_zero.to_dict()["disaggregated"]["timings_s"]}}
    # MTP at acceptance 0 never beats no MTP, in either mode
    rz = plan(_small(**{"features.speculative": {"draft_tokens": 2, "acceptance_rate": 0.0}}))
    assert rz.answer.usd_per_hour >= r0.answer.usd_per_hour
    assert rz.disaggregated.best.usd_per_hour >= r0.disaggregated.best.usd_per_hour
    # a prefix-cache hit rate never costs more
    rh = plan(_small(**{"features.prefix_cache_hit_rate": 0.5}))
    assert rh.disaggregated.best.usd_per_hour <= r0.disaggregated.best.usd_per_hour
    assert rh.answer.usd_per_hour <= r0.answer.usd_per_hour


def test_redundant_experts_lower_the_imbalance_the_routing_engine_reports():
    sc = _small(**{"routing.skew": "zipf:1.0"})
    costs = PoolCosts(sc, scenario_model(sc))
    plain = costs.decode_info(PoolLayout("h200-sxm", 8, 1, 8, "dp", 0), 64, 1200)[1]
    spare = costs.decode_info(PoolLayout("h200-sxm", 8, 1, 8, "dp", 8), 64, 1200)[1]
    assert plain > 1.05 and spare < plain


def test_des_verifies_the_disaggregated_answer():
    r = plan(_small(**{"verify.top_n": 1, "verify.duration_s": 20.0}))
    v = r.disaggregated.verification
    assert v is not None and v.met, v
    slo = r.scenario.slo
    assert v.ttft_p99_s <= slo.ttft_s and v.tpot_p99_s <= slo.tpot_s


def test_no_mode_meets_the_slo_names_both_closest():
    r = plan(_small(**{"slo.tpot_s": 0.001}))
    with pytest.raises(InfeasibleError) as err:
        r.require_feasible()
    msg = str(err.value)
    assert "co-located: closest" in msg and "disaggregated:" in msg and "TPOT" in msg and "\n" not in msg


def test_pool_that_does_not_fit_is_one_line():
    r = plan(_small(**{"modes": ["disaggregated"], "disaggregated.decode_devices_per_replica": [1],
                       "disaggregated.prefill_devices_per_replica": [1]}))
    with pytest.raises(InfeasibleError) as err:
        r.require_feasible()
    assert "does not fit" in str(err.value) or "no room" in str(err.value)


def test_features_defaults():
    f = ServingFeatures()
    assert f.prefix_cache_hit_rate == 0 and f.speculative is None and f.tokens_per_step == 1.0


def test_redundant_slots_against_a_recorded_trace(tmp_path):
    # A recorded routing trace (4 steps, 8 of 256 experts 6x hotter): the routing engine's rank imbalance
    # of EP8 decode falls from ~2.5 to ~1.1 once each rank has a redundant slot for a hot expert
    # (load-aware placement); whether the slot pays is the search's call (memory-bound decode reads one
    # more expert's weights per rank).
    import numpy as np

    from moesim.routing.trace import write_trace

    rng = np.random.default_rng(0)
    p = np.ones(256)
    p[:8] = 6.0
    path = tmp_path / "hot.npz"
    write_trace(path, 256, 8, counts_SE=np.stack([rng.multinomial(8 * 4096, p / p.sum()) for _ in range(4)]))
    sc = _small(**{"routing.skew": f"trace:{path}"})
    costs = PoolCosts(sc, scenario_model(sc))
    plain = costs.decode_info(PoolLayout("h200-sxm", 8, 1, 8, "dp", 0), 64, 1200)
    spare = costs.decode_info(PoolLayout("h200-sxm", 8, 1, 8, "dp", 8), 64, 1200)
    assert plain[0] == "imbalance" and plain[1] > 2.0 and spare[1] < 1.2


def test_queue_wait_closed_form():
    # Kingman: rho = 0.5, c_s^2 = 0, E[P] / capacity = 0.1 s -> mean W = 1 x 0.5 x 0.1 = 0.05 s; heavy-traffic
    # tail at q = 0.99: (0.05 / 0.5) ln(0.5 / 0.01) = 0.1 ln 50 s.
    assert_allclose(disagg.queue_wait_s(5000.0, 10000.0, 1000.0, 0.0, 0.99), 0.1 * math.log(50.0), rtol=1e-12)
    assert_allclose(disagg.queue_wait_s(5000.0, 10000.0, 1000.0, 1.0, 0.99), 0.2 * math.log(50.0), rtol=1e-12)
    assert disagg.queue_wait_s(50.0, 10000.0, 1000.0, 0.0, 0.99) == 0.0      # rho <= 1 - q: no queue at p99
    assert disagg.queue_wait_s(1e4, 1e4, 1000.0, 0.0, 0.99) == math.inf      # saturated
