"""TensorRT-LLM's limits for a checkpoint trtllm-bench does not tune (GPT-OSS's MXFP4 experts) and
the weight bytes it loads as stored (moesim/planner/trtllm_engine.py ``untuned_checkpoint``,
``stored_weight_bytes``), checked by hand against the BuildConfig defaults and the parameter counts."""
from __future__ import annotations

import pytest

from moesim.catalog import load_model
from moesim.compute.counts import param_counts
from moesim.planner import trtllm_engine as te
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate
from moesim.planner.scenario import scenario_from_dict


def _scenario(model: str, hw: str, dtype: str, kv: str, prompt: int = 1000, output: int = 1000):
    return scenario_from_dict({
        "kind": "serving", "name": "ckpt", "model": model, "hardware": [hw], "max_devices": 8,
        "workload": {"prompt_len": prompt, "output_len": output, "target_output_tokens_per_s": 1.0, "dtype": dtype,
                     "kv_dtype": kv},
        "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6},
        "search": {"devices_per_replica": [1], "batch_per_device": [64], "tp": [1], "pp": [1],
                   "attention_layouts": ["tp"]},
        "verify": {"top_n": 0}, "scheduler": "trtllm", "stack": "trtllm"})


def test_only_mxfp4_expert_checkpoints_are_untuned():
    assert te.untuned_checkpoint(load_model("gpt-oss-120b"))
    assert te.untuned_checkpoint(load_model("gpt-oss-20b"))
    for name in ("qwen3-30b-a3b", "deepseek-v3", "llama4-maverick", "mixtral-8x7b"):
        assert not te.untuned_checkpoint(load_model(name))


@pytest.mark.parametrize("prompt,tokens", [(1000, 8192), (8192, 8192 + 2048), (32768, 32768 + 2048)])
def test_untuned_checkpoint_runs_the_build_config_defaults(prompt, tokens):
    # bench/build/build.py: quant_algo outside TUNED_QUANTS -> BuildConfig max_batch_size 2048,
    # max_num_tokens 8192; general.py get_settings without chunking: max(8192, ISL + 2048)
    m = load_model("gpt-oss-20b")
    sc = _scenario("gpt-oss-20b", "h200-sxm", "fp8", "bf16", prompt=prompt, output=1024)
    lim = te.trtllm_limits(Candidate("h200-sxm", 1, tp=1, dp=1, ep=1, batch=64), sc, m, PlanCache())
    assert (lim.max_batch_size, lim.max_num_tokens) == (2048, tokens)


def test_tuned_checkpoint_keeps_the_heuristic():
    m = load_model("qwen3-30b-a3b")
    sc = _scenario("qwen3-30b-a3b", "b200", "fp4", "fp8")
    c = Candidate("b200", 1, tp=1, dp=1, ep=1, batch=64)
    lim = te.trtllm_limits(c, sc, m, PlanCache())
    dep = PlanCache().deployment(c, sc, m)
    want = te.trtllm_bench_settings(te._heuristic_requests(m, dep, 1, 1000, 1000, 0.95), 1000, 1000)  # the stack's share
    assert (lim.max_batch_size, lim.max_num_tokens) == want


def test_gpt_oss_weights_as_stored_by_hand():
    # gpt-oss-120b on one H200 served at fp8: the footprint counts the released checkpoint as it
    # stores it, experts MXFP4 (0.5 + 1/32 byte), the rest BF16 (2 bytes), not 1 byte per parameter.
    from moesim.catalog import load_profile
    from moesim.compute.memory import memory_footprint
    from moesim.specs import Parallelism

    m = load_model("gpt-oss-120b")
    pc = param_counts(m)
    fp = memory_footprint(m, load_profile("h200-sxm"), Parallelism(), mode="serve", weight_dtype="fp8",
                          kv_dtype="bf16", kv_tokens=0)
    experts = pc.routed_experts
    one_byte = memory_footprint(m, load_profile("h200-sxm"), Parallelism(), mode="train", weight_dtype="fp8",
                                kv_dtype="bf16", micro_batch=1, seq_len=1).weight_bytes  # training: no stored format
    rest = one_byte - experts  # 1 byte per parameter at fp8
    want = experts * (0.5 + 1 / 32) + rest * 2.0
    assert fp.weight_bytes == pytest.approx(want, rel=1e-12)
    assert fp.expert_weight_bytes == pytest.approx(experts * (0.5 + 1 / 32), rel=1e-12)
    assert 60e9 < want < 70e9  # ~65 GB: 4.25-bit experts of 117B parameters plus ~2B BF16 ones
    # a model without its own expert format keeps the footprint's bytes
    q = load_model("qwen3-30b-a3b")
    fq = memory_footprint(q, load_profile("h200-sxm"), Parallelism(), mode="serve", weight_dtype="fp8",
                          kv_dtype="fp8", kv_tokens=0)
    assert fq.weight_bytes == memory_footprint(q, load_profile("h200-sxm"), Parallelism(), mode="train",
                                               weight_dtype="fp8", micro_batch=1, seq_len=1).weight_bytes


def test_stored_weights_raise_the_kv_capacity():
    # H200 TP1 gpt-oss-120b: KV for 0.95 x (150.8 GB - 65 GB) instead of 0.95 x (150.8 GB - 117 GB)
    # (150.8 GB: the driver's 143,771 MiB, hardware-specs.md s2a): 2.5x the sequences
    m = load_model("gpt-oss-120b")
    sc = _scenario("gpt-oss-120b", "h200-sxm", "fp8", "bf16")
    c = Candidate("h200-sxm", 1, tp=1, dp=1, ep=1, batch=64)
    cache = PlanCache()
    lim = te.trtllm_limits(c, sc, m, cache)
    from moesim.compute.memory import memory_footprint

    dep = cache.deployment(c, sc, m)
    fp = memory_footprint(m, dep.hardware, dep.parallelism, mode="serve", weight_dtype="fp8", kv_dtype="bf16",
                          kv_tokens=0)
    free = fp.capacity_bytes - fp.weight_bytes
    assert lim.kv_seqs == int(0.95 * free / fp.kv_bytes_per_token // 2000)
    one_byte = param_counts(m).total  # the weights at 1 byte per parameter, had fp8 been applied to all
    assert lim.kv_seqs > 2.4 * int(0.95 * (fp.capacity_bytes - one_byte) / fp.kv_bytes_per_token // 2000)


def test_nvfp4_checkpoint_param_count_counts_packed_ffn_elements():
    """trtllm-bench sums the safetensors element counts: an NVFP4 FFN weight is half an element
    per parameter (two FP4 values per uint8) plus one E4M3 scale per 16 (closed form)."""
    from moesim.catalog import load_model
    from moesim.compute.counts import param_counts
    from moesim.planner.trtllm_engine import checkpoint_param_count

    model = load_model("deepseek-v3")
    pc = param_counts(model)
    ffn = pc.routed_experts + pc.shared_experts + pc.dense_ffn
    assert checkpoint_param_count(model, "fp4") == pytest.approx(pc.total - ffn * (1 - 0.5 - 1 / 16), rel=1e-12)
    assert checkpoint_param_count(model, "fp8") == pc.total  # FP8 stores one element per parameter
    # DeepSeek-V3's FFNs are ~97% of its 671B parameters: the count the benchmark sees is ~57% of it
    assert 0.55 < checkpoint_param_count(model, "fp4") / pc.total < 0.60
