"""`moesim plan` with serving modes: --emit launch settings, JSON of both modes, one-line errors (exit 2)."""
from __future__ import annotations

import json

import pytest

from moesim.cli import run


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sc") / "s.toml"
    p.write_text(
        'kind = "serving"\nname = "modes"\nmodel = "deepseek-v3"\nhardware = ["h200-sxm"]\n'
        'modes = ["colocated", "disaggregated"]\n'
        "[workload]\nprompt_len = 1000\noutput_len = 400\ntarget_output_tokens_per_s = 5000\n"
        "[slo]\ntpot_s = 0.08\nttft_s = 3.0\n"
        "[search]\ndevices_per_replica = [8]\nbatch_per_device = [16, 64]\ntp = [1]\nattention_layouts = [\"dp\"]\n"
        "[disaggregated]\ndecode_devices_per_replica = [8]\nprefill_devices_per_replica = [8]\n"
        "prefill_token_budget_per_rank = [8192]\nredundant_slots_per_rank = [0]\n"
        "[features]\nprefix_cache_hit_rate = 0.5\nspeculative = { draft_tokens = 1, acceptance_rate = 0.8 }\n"
        "[verify]\ntop_n = 0\n"
    )
    return p


def _run(capsys, *argv):
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_both_modes_and_the_launch_settings(capsys, scenario_file):
    code, out, _ = _run(capsys, "plan", str(scenario_file), "--json", "--emit", "vllm")
    assert code == 0
    data = json.loads(out)
    assert data["modes"]["winner"] in ("colocated", "disaggregated")
    best = data["disaggregated"]["ranked"][0]
    assert best["prefill"]["replicas"] >= 1 and best["decode"]["replicas"] >= 1
    assert data["launch"]["version"].startswith("vLLM")
    text = "\n".join(c["command"] for c in data["launch"]["commands"])
    assert "vllm serve" in text and "deepseek_mtp" in text and "--max-num-seqs" in text


def test_emit_sglang_for_each_mode(capsys, scenario_file):
    for mode, needles in (("disaggregated", ("--disaggregation-mode prefill", "--disaggregation-mode decode",
                                             "sglang_router.launch_router --pd-disaggregation")),
                          ("colocated", ("--chunked-prefill-size", "--enable-dp-attention"))):
        code, out, _ = _run(capsys, "plan", str(scenario_file), "--set", f"modes=[\"{mode}\"]", "--emit", "sglang")
        assert code == 0, out
        assert "SGLang 0.5 launch settings" in out and "--speculative-num-draft-tokens 2" in out
        for n in needles:
            assert n in out, (mode, n)


@pytest.mark.parametrize("change, needle", [
    ("features.prefix_cache_hit_rate=1.0", "prefix_cache_hit_rate"),
    ("features.speculative={acceptance_rate=1.5}", "acceptance_rate"),
    ("slo.tpot_s=0.001", "disaggregated:"),
    ("disaggregated.decode_devices_per_replica=[1]", "does not fit"),
])
def test_bad_input_one_line_exit_2(capsys, scenario_file, change, needle):
    argv = ["plan", str(scenario_file), "--set", change]
    if change.startswith("disaggregated."):
        argv += ["--set", 'modes=["disaggregated"]', "--set", "disaggregated.prefill_devices_per_replica=[1]"]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and needle in line, line


def test_emit_refuses_a_tpu_answer():
    from moesim.errors import MoesimError
    from moesim.planner.launch import Role, sglang
    from moesim.planner.scenario import default_scenario

    role = Role("colocated", "tpu-v5p", 1, 16, 1, 16, 0, 8192, 64)
    with pytest.raises(MoesimError, match="for GPUs"):
        sglang(role, default_scenario())
