"""DualPipe (DeepSeek-V3 report s3.2.1, Table 2): forward-backward pairs that hide each other's
communication, and the (PP/2 - 1)(F&B + B - 3W) bubble (moesim/step/training.py)."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.errors import SpecError
from moesim.specs import Deployment
from moesim.step import Training
from moesim.step.cache import StepCache
from moesim.step.training import dualpipe_bubble, dualpipe_pair, training_estimate
from moesim.step_cases import predict_training_case
from moesim.validate import CaseInputs

H800 = load_profile("h800-sxm")
DSV3 = load_model("deepseek-v3")


def test_pair_hand_values():
    # F 3 (comm 1), B 5 (comm 1), extra compute 0.5, P2P 0.2: C = 2 + 4 + 0.5 = 6.5, M = 2.2
    pair, exposed = dualpipe_pair(3.0, 5.0, 1.0, 1.0, 0.5, 0.2)
    assert (float(pair), float(exposed)) == (6.5, 0.0)
    # compute at 0.8 of its speed while the 2.2 s of comm run: 6.5 + 0.2 x 2.2 = 6.94
    pair, exposed = dualpipe_pair(3.0, 5.0, 1.0, 1.0, 0.5, 0.2, share=0.8)
    assert_allclose([pair, exposed], [6.94, 0.44], rtol=1e-12)
    # communication-bound: C = 0.5 + 0.5 = 1, M = 2 > 1 + 0.2 x 2 -> the pair is the communication
    pair, exposed = dualpipe_pair(1.0, 2.0, 0.5, 1.5, 0.0, 0.0, share=0.8)
    assert_allclose([pair, exposed], [2.0, 1.0], rtol=1e-12)


def test_bubble_hand_values():
    assert dualpipe_bubble(2, 6.5, 5.0, 2.0) == 0.0                 # PP/2 - 1 = 0
    assert dualpipe_bubble(16, 6.5, 5.0, 2.0) == 7 * (6.5 + 5.0 - 6.0)


def _dep(pp=16, vpp=1, comm_sms=20):
    return Deployment(hardware=H800, devices=2048, devices_per_domain=8, pp=pp, vpp=vpp, dp=2048 // pp, ep=64,
                      dtype="fp8", comm_sms=comm_sms, stack="megatron")


def test_step_is_pairs_plus_bubble_and_never_slower_than_1f1b():
    dep, work = _dep(), Training(15360, 4096, 1, "balanced")
    m = 15360 // dep.dp
    d = training_estimate(DSV3, dep, work, check_memory=False, cache=StepCache(), schedule="dualpipe").breakdown()
    o = training_estimate(DSV3, dep, work, check_memory=False, cache=StepCache(), schedule="1f1b").breakdown()
    # step = m x pair + bubble + DP + optimizer: the steady part is m pairs, each at most the 1F1B
    # micro-batch (F + B with every collective exposed) and at least its compute
    pairs = d.step_time_s - d.pipeline_bubble_s - d.dp_comm_s - d.optimizer_s
    ideal_1f1b = o.step_time_s - o.pipeline_bubble_s - o.dp_comm_s - o.optimizer_s
    assert pairs <= ideal_1f1b
    assert pairs >= ideal_1f1b - o.exposed_comm_s + o.dp_comm_s - 1e-9
    # the bubble per the report's formula is below 1F1B's (PP - 1)(F + B)
    assert d.pipeline_bubble_s < o.pipeline_bubble_s
    assert_allclose(d.tokens_per_s_per_device * d.step_time_s, 15360 * 4096 / 2048, rtol=1e-12)
    assert m % 2 == 0


@pytest.mark.parametrize("kw,field", [({"pp": 1}, "pp"), ({"pp": 8, "vpp": 2}, "vpp")])
def test_layout_requirements_name_the_field(kw, field):
    with pytest.raises(SpecError, match=f"^{field}:"):   # 16384: whole micro-batches on every layout
        training_estimate(DSV3, _dep(**kw), Training(16384, 4096, 1, "balanced"), check_memory=False,
                          cache=StepCache(), schedule="dualpipe")


def test_odd_micro_batches_and_unknown_schedule_are_refused():
    with pytest.raises(SpecError, match="global_batch"):   # 128 x 121: an odd m per pipeline
        training_estimate(DSV3, _dep(), Training(128 * 121, 4096, 1, "balanced"), check_memory=False,
                          cache=StepCache(), schedule="dualpipe")
    with pytest.raises(SpecError, match="schedule"):
        training_estimate(DSV3, _dep(), Training(15360, 4096, 1, "balanced"), check_memory=False,
                          cache=StepCache(), schedule="zero-bubble")


def test_case_input_selects_the_schedule():
    from moesim.case_inputs import training_schedule

    assert training_schedule({}) == "1f1b" and training_schedule({"dualpipe": False}) == "1f1b"
    assert training_schedule({"dualpipe": True}) == "dualpipe"
    with pytest.raises(SpecError, match="dualpipe"):
        training_schedule({"dualpipe": "yes"})
    base = {"metric": "tokens_per_s_per_device", "model": "deepseek-v3", "devices": 2048, "devices_per_node": 8,
            "tp": 1, "pp": 16, "ep": 64, "global_batch": 15360, "seq_len": 4096, "dtype": "fp8", "num_sms": 20,
            "framework": "HAI-LLM"}
    dual, plain = CaseInputs({**base, "dualpipe": True}, "training"), CaseInputs(base, "training")
    assert predict_training_case(dual, H800) > predict_training_case(plain, H800)
    assert "dualpipe" not in dual.ignored()
