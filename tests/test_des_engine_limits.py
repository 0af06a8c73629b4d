"""The serving-DES checks run the scheduler the analytic priced: under TensorRT-LLM's scheduler
(``scheduler = "trtllm"``) its engine limits (moesim/planner/trtllm_engine.py), so a verified
replica never holds more sequences per rank than the engine sustains."""
from __future__ import annotations

from dataclasses import dataclass, field

from moesim.catalog import load_model
from moesim.des.serving.cost import LinearCost
from moesim.planner import serving_policy as sp
from moesim.planner import trtllm_engine as te
from moesim.planner import verify
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate, Evaluation
from moesim.planner.scenario import scenario_from_dict


def _scenario(**extra):
    data = {"kind": "serving", "name": "trt", "model": "qwen3-30b-a3b", "hardware": ["b200"], "max_devices": 64,
            "scheduler": "trtllm", "stack": "cuda_graphs",
            "workload": {"prompt_len": 1000, "output_len": 200, "target_output_tokens_per_s": 1.0, "dtype": "fp4",
                         "kv_dtype": "fp8"},
            "slo": {"percentile": 99, "tpot_s": 1e3, "ttft_s": 1e6},
            "search": {"devices_per_replica": [2], "batch_per_device": [64], "tp": [1], "pp": [1],
                       "attention_layouts": ["dp"]},
            "verify": {"top_n": 0, "duration_s": 20.0, "seeds": 1}}
    data.update(extra)
    return scenario_from_dict(data)


def test_des_scheduler_is_the_engine_limits_per_rank():
    sc, m, cache = _scenario(), load_model("qwen3-30b-a3b"), PlanCache()
    c = Candidate("b200", 2, tp=1, dp=2, ep=2, attention_layout="dp", batch=64)
    lim = te.trtllm_limits(c, sc, m, cache)
    ranks = sp.attention_ranks(c)
    ev = Evaluation(candidate=c, tokens_per_s=1.0, decode_steps_per_prefill=3)
    sched = verify._system(ev, sc, m, cache).colocated.sched
    assert (sched.max_seqs, sched.token_budget, sched.decode_steps_per_prefill) == \
        (lim.max_seqs * ranks, lim.max_num_tokens * ranks, 1)
    # the default scheduler keeps the per-rank budget and the planned headroom
    plain = verify._system(ev, _scenario(scheduler="batched_prefill"), m, cache).colocated.sched
    assert plain.max_seqs == sp.SEQ_HEADROOM * sp.planned_seqs(c) and plain.decode_steps_per_prefill == 3


@dataclass
class _Recording:
    """A LinearCost that remembers the largest decode batch the DES ran."""

    inner: LinearCost
    most: list = field(default_factory=lambda: [0])

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode_time_s(self, batch, ctx):
        self.most[0] = max(self.most[0], batch)
        return self.inner.decode_time_s(batch, ctx)

    def mixed_time_s(self, tokens, seqs, batch, ctx):
        self.most[0] = max(self.most[0], batch)
        return self.inner.mixed_time_s(tokens, seqs, batch, ctx)


def test_overloaded_trtllm_des_admits_no_more_than_the_limits(monkeypatch):
    """At a load far above what the replica serves, the DES fills to the engine's sequence limit
    (8 per rank here, well below the 2 x 64 x 2 the default headroom would admit) and not beyond."""
    sc, m, cache = _scenario(), load_model("qwen3-30b-a3b"), PlanCache()
    c = Candidate("b200", 2, tp=1, dp=2, ep=2, attention_layout="dp", batch=64)
    small = te.EngineLimits(max_batch_size=8, max_num_tokens=2048, kv_seqs=100, max_seqs=8, bound="max_batch_size")
    monkeypatch.setattr(sp, "trtllm_limits", lambda *a: small)
    rec = _Recording(LinearCost(fixed_s=0.01, per_token_s=1e-6, kv_capacity_tokens=10**7, devices=2))
    monkeypatch.setattr(sp, "replica_cost", lambda *a: rec)
    system = verify._system(Evaluation(candidate=c, tokens_per_s=1.0), sc, m, cache)
    verify._run(system, sc, 50.0, 0, verify._lengths(sc.workload))
    assert rec.most[0] == small.max_seqs * sp.attention_ranks(c)
