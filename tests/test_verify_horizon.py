"""The serving-DES probe runs until every request that could still be on time has finished."""
import numpy as np
import pytest

from moesim.des.serving.arrivals import Requests
from moesim.planner.verify import simulated_time_s
from moesim.specs import SLO


def _reqs(outputs):
    n = len(outputs)
    return Requests(np.linspace(0.0, 60.0, n), np.full(n, 1000), np.asarray(outputs))


def test_long_requests_get_time_to_finish_on_time():
    # d = 60 s, the longest request 28,000 tokens at a 20 ms TPOT limit: it may finish on time as late
    # as 60 + 3 + 27,999 x 0.02 = 622.98 s; the old fixed 3 d + 60 = 240 s counted it as late
    slo = SLO(ttft_s=3.0, tpot_s=0.02)
    t = simulated_time_s(60.0, slo, _reqs([100, 28_000]))
    assert t == pytest.approx(60.0 + 3.0 + 27_999 * 0.02 + 1.0, rel=1e-12)


def test_short_requests_keep_the_old_floor_and_e2e_bounds():
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    assert simulated_time_s(60.0, slo, _reqs([100, 200])) == 240.0  # 3 d + 60 s dominates
    assert simulated_time_s(60.0, SLO(), _reqs([10**6])) == 240.0  # no latency limit: the floor
    # an e2e limit bounds the finish time when tighter than ttft + L tpot
    both = SLO(ttft_s=3.0, tpot_s=0.02, e2e_s=400.0)
    assert simulated_time_s(60.0, both, _reqs([28_000])) == pytest.approx(60.0 + 400.0 + 1.0)
