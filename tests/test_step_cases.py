"""The training/serving/moe_layer predictors (the case-file callers of the step model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.catalog import load_model, load_profile
from moesim.step_cases import predict_moe_layer_case, predict_serving_case, predict_training_case
from moesim.validate import UnsupportedCase

DSV3 = load_model("deepseek-v3")
H800 = load_profile("h800-sxm")
CASES = Path(__file__).resolve().parents[1] / "validation" / "data" / "published-calibration.json"


INLINE = {"hidden": 1024, "expert_ffn": 512, "num_experts": 16, "top_k": 2, "num_shared_experts": 1}


def test_moe_layer_predictor_inline_and_preset():
    base = {"metric": "time_s", "ranks": 8, "ranks_per_node": 8, "tokens_per_rank": 512, "dtype": "bf16"}
    fwd = predict_moe_layer_case({**base, "model": INLINE, "phase": "forward"}, H800)
    fb = predict_moe_layer_case({**base, "model": INLINE, "phase": "forward_backward"}, H800)
    assert 0 < fwd < fb < 3 * fwd
    assert predict_moe_layer_case({**base, "model": "mixtral-8x7b", "phase": "forward"}, H800) > fwd
    with pytest.raises(UnsupportedCase):
        predict_moe_layer_case({**base, "model": INLINE, "metric": "bandwidth_GBps"}, H800)
    with pytest.raises(UnsupportedCase):
        predict_moe_layer_case({**base, "model": {"hidden": 64}}, H800)


@pytest.mark.skipif(not CASES.is_file(), reason="repository copy of the published calibration set missing")
def test_published_training_and_serving_cases_predict():
    from moesim.cases import load_cases
    from moesim.validate import case_inputs

    cases = [c for c in load_cases(CASES).cases if c.kind in ("training", "serving")]
    assert len(cases) == 9
    for c in cases:
        predict = predict_training_case if c.kind == "training" else predict_serving_case
        value = predict(case_inputs(c), load_profile(c.hardware))
        # no accuracy bound asserted here: the errors are reported by `moesim validate`
        assert np.isfinite(value) and value > 0, c.id
