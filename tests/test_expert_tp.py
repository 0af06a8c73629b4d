"""Expert tensor parallelism (``etp``) in the step model, the layer DES and the planner's space.

Under expert TP every rank of the group holds each expert at ``expert_ffn / etp`` width and works
on the tokens of the whole group; one all-reduce of the group's hidden states follows the MoE
block (vLLM and SGLang run MoE layers this way without expert parallelism enabled).
"""
from __future__ import annotations

import pytest

from moesim.catalog import load_model, load_profile
from moesim.compute.memory import stage_params
from moesim.des.layer import simulate_layers
from moesim.planner.space import serving_layouts, serving_space
from moesim.specs import Deployment
from moesim.step import pricing
from moesim.step.layer import layer_ops, make_setup, stack_time

QWEN = load_model("qwen3-30b-a3b")
H100 = load_profile("h100-sxm")
MOE_LAYER = 1


def _dep(ep: int, etp: int, tp: int = 8) -> Deployment:
    return Deployment(hardware=H100, devices=8, tp=tp, dp=8 // tp, ep=ep, etp=etp, dtype="bf16")


def test_expert_tp_prices_the_sliced_experts_on_the_group_tokens_and_one_all_reduce():
    """Closed form: the MoE block of TP8 + ETP8 at 64 owned tokens per device is the grouped GEMM
    of 512 tokens' copies, balanced over every expert, at width F/8, plus one all-reduce of the
    512 tokens' bf16 hidden states on top of the attention's (exact: the same pricing calls)."""
    setup = make_setup(QWEN, _dep(ep=1, etp=8), "decode", "balanced")
    ops = layer_ops(setup, MOE_LAYER, 64, 2048)
    m = QWEN.moe
    copies = 64 * 8 * m.top_k / m.num_experts
    expected = pricing.expert_ffn_s(H100, QWEN, [copies] * m.num_experts, "bf16", m.expert_ffn // 8,
                                    layout="token_tiled")
    assert ops.experts_s * setup.device_fraction == pytest.approx(expected, rel=1e-12)
    plain = make_setup(QWEN, _dep(ep=1, etp=1), "decode", "balanced")
    reduce = pricing.collective_s(setup.etp_topology, "all_reduce", 64 * 8 * QWEN.hidden * 2.0, 8)
    assert ops.attention_comm_s == pytest.approx(layer_ops(plain, MOE_LAYER, 64, 2048).attention_comm_s + reduce,
                                                 rel=1e-12)
    assert ops.dispatch_s == ops.combine_s == 0.0  # no expert parallelism: no all-to-all


def test_expert_tp_streams_the_same_expert_bytes_as_expert_parallel_and_holds_an_eighth():
    """Memory: ETP8 and EP8 hold the same routed-expert parameters per device, an eighth of ETP1 (ep = 1)."""
    per_device = {k: stage_params(QWEN, _dep(*k).parallelism)[0][1] for k in ((1, 8), (8, 1), (1, 1))}
    assert per_device[(1, 8)] == pytest.approx(per_device[(8, 1)], rel=1e-9)
    assert per_device[(1, 8)] == pytest.approx(per_device[(1, 1)] / 8, rel=1e-9)


@pytest.mark.parametrize("overlap", ["none", "two_microbatch"])
def test_layer_des_runs_the_expert_tp_schedule_of_the_analytic_model(overlap):
    """Second engine: balanced routing is deterministic, so the DES equals the analytic stack (1%);
    under uniform routing the DES samples each EP rank's loads at the group's tokens and F / etp
    width, and meets the analytic expected maximum within the 5% of tests/test_des_layer.py."""
    layers = [1, 2, 3]
    halves = 2 if overlap == "two_microbatch" else 1
    for skew, rel in (("balanced", 0.01), ("uniform", 0.05)):
        setup = make_setup(QWEN, _dep(ep=2, etp=4, tp=8), "decode", skew)
        res = simulate_layers(setup, layers=layers, tokens=64, context=2048, overlap=overlap, steps=8, seed=3)
        analytic = stack_time([layer_ops(setup, i, 64 / halves, 2048) for i in layers], overlap)[0]
        assert res.mean_step_s == pytest.approx(analytic, rel=rel), skew


def test_serving_space_offers_expert_tp_only_when_asked():
    grid = type("Grid", (), {"pp": (1,), "attention_layouts": ("tp",), "tp": (2, 8), "moe_layouts": ("ep", "tp")})
    layouts = set(serving_layouts(QWEN, 8, grid))
    assert layouts == {(2, 1, 4, 8, "tp", 1), (2, 1, 4, 1, "tp", 8), (8, 1, 1, 8, "tp", 1), (8, 1, 1, 1, "tp", 8)}
    grid.moe_layouts = ("ep",)
    assert all(etp == 1 for *_, etp in serving_layouts(QWEN, 8, grid))


def test_planner_candidates_carry_etp_into_their_key_layout_and_deployment():
    from moesim.planner.costs import deployment_of
    from moesim.planner.scenario import scenario_from_dict

    sc = scenario_from_dict({
        "kind": "serving", "name": "etp", "model": "qwen3-30b-a3b", "hardware": ["h100-sxm"], "max_devices": 8,
        "workload": {"prompt_len": 1000, "output_len": 1000, "target_output_tokens_per_s": 1.0},
        "slo": {"tpot_s": 0.1},
        "search": {"devices_per_replica": [8], "batch_per_device": [8], "tp": [8], "attention_layouts": ["tp"],
                   "moe_layouts": ["ep", "tp"]}}, source="test")
    cands = serving_space(sc, QWEN).candidates
    assert sorted((c.ep, c.etp) for c in cands) == [(1, 8), (8, 1)]
    assert len({c.key() for c in cands}) == 2
    etp = next(c for c in cands if c.etp == 8)
    assert "ETP8" in etp.layout() and "|etp8" in etp.key()
    assert deployment_of(etp, sc, QWEN).etp == 8


def test_end_to_end_rows_keep_the_moe_layout_they_ran():
    """ep = 1 on several devices ran without expert parallelism: the planner shards the experts
    (moe layout tp); ep = devices spreads them; any other ep is flagged as not honoured."""
    from moesim.validate import CaseInputs
    from moesim.step_cases import _moe_layout

    def layout(ep, devices=8):
        inputs = CaseInputs({"metric": "tokens_per_s_per_device", "ep": ep, "devices": devices}, "serving")
        return _moe_layout(inputs, QWEN, devices), "ep" in inputs.ignored()

    assert layout(1) == ("tp", False)
    assert layout(8) == ("ep", False)
    assert layout(1, devices=1) == ("ep", False)
    assert layout(4) == ("ep", True)
    assert _moe_layout({"ep": 1}, QWEN.model_copy(update={"moe": None}), 8) == "ep"  # dense: no MoE layout


def test_an_expert_tp_answer_launches_without_expert_parallel_flags(tmp_path, capsys):
    """The planner's answer on moe_layouts = ["tp"] runs MoE TP; its vLLM command says so by
    passing only the TP size (vLLM shards the experts over TP without --enable-expert-parallel)."""
    from moesim.cli import run

    path = tmp_path / "s.toml"
    path.write_text(
        'kind = "serving"\nname = "etp"\nmodel = "qwen3-30b-a3b"\nhardware = ["h100-sxm"]\nmax_devices = 8\n'
        '[workload]\nprompt_len = 1000\noutput_len = 1000\ntarget_output_tokens_per_s = 2000\ndtype = "bf16"\n'
        '[slo]\ntpot_s = 0.05\n'
        '[search]\ndevices_per_replica = [8]\nbatch_per_device = [8, 32]\ntp = [8]\nattention_layouts = ["tp"]\n'
        'moe_layouts = ["tp"]\n[verify]\ntop_n = 0\n')
    assert run(["plan", str(path), "--emit", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "TP8 EP1 ETP8" in out
    assert "--tensor-parallel-size 8" in out and "--enable-expert-parallel" not in out


def test_expert_tp_permutes_the_group_tokens_and_activates_one_slice():
    """Elementwise bytes per owned token under ETP e: the permute / unpermute terms 2 (1 + k) D
    grow e-fold (every rank moves the group's tokens), the gated activation 3 k F does not (each
    rank activates F / e of e x the tokens): the difference is exactly 2 (1 + k) D (e - 1) x 2 B."""
    from moesim.step.elementwise import ACT_BYTES, elementwise_bytes

    m, d = QWEN.moe, QWEN.hidden
    plain = elementwise_bytes(QWEN, True, 1.0, 8, "bf16", "decode")
    sliced = elementwise_bytes(QWEN, True, 1.0, 8, "bf16", "decode", etp=8)
    assert sliced - plain == pytest.approx(2.0 * (1 + m.top_k) * d * 7 * ACT_BYTES, rel=1e-12)


def test_disaggregated_pools_follow_the_moe_layouts_of_the_search():
    """Prefill and decode pools take the search's MoE layouts: with ["tp"] every pool layout is
    ETP over its replica (ep = 1, no redundant slots), and its Deployment carries the etp."""
    from collections import Counter

    from moesim.planner.disagg import pool_layouts
    from moesim.planner.scenario import scenario_from_dict

    def layouts(moe):
        sc = scenario_from_dict({
            "kind": "serving", "name": "pools", "model": "qwen3-30b-a3b", "hardware": ["h100-sxm"],
            "max_devices": 16, "modes": ["disaggregated"],
            "workload": {"prompt_len": 1000, "output_len": 500, "target_output_tokens_per_s": 1.0},
            "slo": {"tpot_s": 0.1, "ttft_s": 2.0},
            "search": {"tp": [8], "attention_layouts": ["tp"], "moe_layouts": moe}}, source="test")
        return pool_layouts(sc, QWEN, (8,), ("h100-sxm",), Counter())

    etp = layouts(["tp"])
    assert etp and all((lay.ep, lay.etp, lay.redundant_experts) == (1, 8, 0) for lay in etp)
    assert etp[0].candidate().parallelism().etp == 8 and "ETP8" in etp[0].describe()
    assert all(lay.etp == 1 and lay.ep == 8 for lay in layouts(["ep"]))


def test_bad_moe_layouts_and_etp_name_the_field_that_is_wrong():
    from moesim.errors import MoesimError
    from moesim.planner.scenario import scenario_from_dict

    base = {"kind": "serving", "name": "bad", "model": "qwen3-30b-a3b", "hardware": ["h100-sxm"],
            "workload": {"prompt_len": 100, "output_len": 100, "target_output_tokens_per_s": 1.0},
            "slo": {"tpot_s": 0.1}}
    with pytest.raises(MoesimError, match=r"search\.moe_layouts\.0 = 'xp': Input should be 'ep' or 'tp'$"):
        scenario_from_dict({**base, "search": {"moe_layouts": ["xp"]}}, source="s")
    with pytest.raises(MoesimError, match=r"search\.moe_layouts = \(\): allowed: one or more of ep, tp"):
        scenario_from_dict({**base, "search": {"moe_layouts": []}}, source="s")
    with pytest.raises(ValueError, match=r"etp: 3 is invalid; allowed: ep x etp \(here 3\) must divide"):
        _dep(ep=1, etp=3)
