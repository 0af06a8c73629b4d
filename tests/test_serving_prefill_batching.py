"""The scheduler's prefill batching (``SchedulerConfig.decode_steps_per_prefill`` = K), worked by
hand with a closed-form cost: every iteration lasts exactly 1 s (LinearCost(1, 0))."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moesim.des.serving.arrivals import Requests
from moesim.des.serving.cost import LinearCost
from moesim.des.serving.replica import SchedulerConfig
from moesim.des.serving.system import Pool, ServingSystem, simulate
from moesim.errors import SpecError


def _ttfts(k: int) -> np.ndarray:
    # request 0 at t = 0 (prompt 10, 20 outputs: decoding throughout); request 1 at t = 1.5
    reqs = Requests(np.array([0.0, 1.5]), np.array([10, 10]), np.array([20, 2]))
    sys = ServingSystem(colocated=Pool(LinearCost(1.0, 0.0), 1, SchedulerConfig(64, 8, decode_steps_per_prefill=k)))
    r = simulate(sys, reqs, keep_spans=True)
    return np.asarray(r.ttft_s.mean), r


@pytest.mark.parametrize("k, expected", [
    # iterations [0,1) prefill r0; r1 arrives at 1.5 during [1,2) (decode-only, count 1)
    (1, 1.5),  # K = 1: [2,3) carries r1's prompt -> first token at 3, TTFT 1.5
    (2, 1.5),  # K = 2: one decode-only iteration since the prefill -> [2,3) may prefill
    (3, 2.5),  # K = 3: [2,3) decode-only (count 2), [3,4) carries r1 -> TTFT 4 - 1.5
])
def test_prefill_waits_k_minus_1_decode_iterations(k, expected):
    # mean TTFT of the two requests: r0 = 1 (alone: prefilled at once), r1 = expected
    mean, _ = _ttfts(k)
    assert_allclose(mean, (1.0 + expected) / 2, rtol=1e-12)


def test_bad_k_is_a_spec_error():
    with pytest.raises(SpecError, match="decode_steps_per_prefill"):
        SchedulerConfig(64, 8, decode_steps_per_prefill=0)
