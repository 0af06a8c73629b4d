"""The engine limits a run states (moesim/planner/scenario.py ``EngineSettings``: trtllm-bench's
--max_batch_size, --max_num_tokens, --kv_cache_free_gpu_mem_fraction, --concurrency and the CUDA-graph
batch list) replace TensorRT-LLM's own choice (moesim/planner/trtllm_engine.py ``trtllm_limits``),
are honoured by the benchmark replay, and are flagged as ignored under any other scheduler.

Tolerances: the limits are integer arithmetic, compared exactly; the KV share is one product of
the footprint, compared to the last request (floor)."""
from __future__ import annotations

import math

import pytest

from moesim.catalog import load_model
from moesim.compute.memory import memory_footprint
from moesim.errors import MoesimError
from moesim.planner import trtllm_engine as te
from moesim.planner.bench_replay import replay_candidate, trtllm_graph_batches
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict

DSV3 = load_model("deepseek-v3")
DEP8 = Candidate("b200", 8, tp=1, dp=8, ep=8, batch=64, attention_layout="dp")


def _scenario(engine: dict | None = None, prompt: int = 1024, output: int = 2048, stack: str = "trtllm"):
    data = {
        "kind": "serving", "name": "engine", "model": "deepseek-v3", "hardware": ["b200"], "max_devices": 8,
        "workload": {"prompt_len": prompt, "output_len": output, "target_output_tokens_per_s": 1.0, "dtype": "fp4",
                     "kv_dtype": "fp8"},
        "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6},
        "search": {"devices_per_replica": [8], "batch_per_device": [64], "tp": [1], "pp": [1],
                   "attention_layouts": ["dp"]},
        "verify": {"top_n": 0}, "stack": stack}
    if engine is not None:
        data["engine"] = engine
    return scenario_from_dict(data)


def test_stated_batch_and_tokens_replace_the_heuristic():
    own = te.trtllm_limits(DEP8, _scenario(), DSV3, PlanCache())
    lim = te.trtllm_limits(DEP8, _scenario({"max_batch_size": 896, "max_num_tokens": 2048}), DSV3, PlanCache())
    assert (lim.max_batch_size, lim.max_num_tokens) == (896, 2048)
    assert (own.max_batch_size, own.max_num_tokens) != (896, 2048)
    # the token bound follows the stated budget: n P + S <= max_num_tokens, n = S / L
    assert lim.max_seqs == min(896, lim.kv_seqs, 2048 * 2048 // (1024 + 2048))


def test_the_kv_fraction_scales_the_cache_it_leaves():
    c, sc = DEP8, _scenario({"kv_cache_free_gpu_mem_fraction": 0.5})
    lim = te.trtllm_limits(c, sc, DSV3, PlanCache())
    dep = PlanCache().deployment(c, sc, DSV3)
    fp = memory_footprint(DSV3, dep.hardware, dep.parallelism, mode="serve", weight_dtype="fp4", kv_dtype="fp8",
                          kv_tokens=0)
    want = int(0.5 * (fp.capacity_bytes - fp.weight_bytes) / fp.kv_bytes_per_token // (1024 + 2048))
    assert lim.kv_seqs == want
    assert te.trtllm_limits(c, _scenario(), DSV3, PlanCache()).kv_seqs > want  # the default 0.95 holds more


def test_concurrency_caps_the_busiest_rank_at_its_share():
    lim = te.trtllm_limits(DEP8, _scenario({"max_batch_size": 896, "concurrency": 1001}), DSV3, PlanCache())
    assert lim.concurrency_seqs == math.ceil(1001 / 8) == 126
    assert lim.admitted_seqs == 126 and lim.max_seqs <= 126
    assert lim.bound in ("concurrency", "kv_cache", "max_num_tokens")
    unset = te.trtllm_limits(DEP8, _scenario({"max_batch_size": 896}), DSV3, PlanCache())
    assert unset.concurrency_seqs is None and unset.admitted_seqs == 896


def test_the_replay_never_holds_more_than_the_concurrency():
    sc = _scenario({"max_batch_size": 896, "max_num_tokens": 2048, "concurrency": 800}, prompt=1024, output=256)
    r = replay_candidate(DEP8, sc, DSV3, PlanCache(), 4000)
    assert r.peak_batch <= 8 * 100  # ceil(800 / 8) per rank
    free = replay_candidate(DEP8, _scenario({"max_batch_size": 896, "max_num_tokens": 2048}, prompt=1024,
                                            output=256), DSV3, PlanCache(), 4000)
    assert free.peak_batch > r.peak_batch and free.output_tokens_per_s > r.output_tokens_per_s


def test_stated_graph_batches_replace_the_perf_overview_list():
    assert trtllm_graph_batches(_scenario()) == te.TRTLLM_GRAPH_BATCHES
    assert trtllm_graph_batches(_scenario({"cuda_graph_batch_sizes": [896, 1, 512]})) == (1, 512, 896)
    assert trtllm_graph_batches(_scenario({"cuda_graph_batch_sizes": [128]}, stack="trtllm-engine")) == ()


@pytest.mark.parametrize("field,value", [("max_batch_size", 0), ("max_num_tokens", -1), ("concurrency", 0),
                                         ("kv_cache_free_gpu_mem_fraction", 1.5),
                                         ("kv_cache_free_gpu_mem_fraction", 0.0), ("cuda_graph_batch_sizes", [0, 8])])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(MoesimError, match=field):
        _scenario({field: value})


def test_a_case_under_another_scheduler_lists_them_as_ignored():
    from moesim.cases import Case
    from moesim.catalog import load_profile
    from moesim.validate import predict_case

    inputs = {"model": "qwen3-30b-a3b", "phase": "end_to_end", "devices": 1, "attention_layout": "tp", "tp": 1,
              "ep": 1, "dtype": "bf16", "prompt_len": 1024, "output_len": 256, "max_load": True,
              "framework": "vLLM 0.11", "max_batch_size": 256, "concurrency": 512}
    case = Case(id="vllm-engine-limits", kind="serving", hardware="h200-sxm", inputs=inputs,
                metric="tokens_per_s_per_device", measured=1000.0, source="test")
    p = predict_case(case, load_profile("h200-sxm"))
    assert p.status == "ok", p.reason
    ignored = dict(p.ignored_inputs)
    assert "TensorRT-LLM" in ignored["max_batch_size"] and "TensorRT-LLM" in ignored["concurrency"]


def test_the_plan_line_says_which_limits_are_stated():
    from moesim.planner.serving_policy import engine_summary

    line = engine_summary(DEP8, _scenario({"max_batch_size": 896, "concurrency": 1001}), DSV3, PlanCache())
    assert "max_batch_size 896 (stated)" in line and "(trtllm-bench's choice)" in line
    assert "concurrency 1001 (126 per rank, stated)" in line and line.endswith("bound: concurrency")
    other = engine_summary(DEP8, _scenario({"max_batch_size": 896}, stack="sglang"), DSV3, PlanCache())
    assert other.startswith("engine settings not used: max_batch_size") and "batched_prefill" in other
    assert engine_summary(DEP8, _scenario(stack="sglang"), DSV3, PlanCache()) is None
