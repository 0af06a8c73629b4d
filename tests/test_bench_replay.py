"""The finite maximum-load benchmark replay (moesim/planner/bench_replay.py) against closed forms,
the steady-state closed form of serving_policy, and a brute-force per-request loop written here."""
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from moesim.des.serving.cost import GridCost, LinearCost
from moesim.errors import SpecError
from moesim.planner.bench_replay import replay


@dataclass(frozen=True)
class ConstantCost:
    """Every iteration with a prompt costs ``mixed_s``, every decode-only one ``decode_s``."""

    mixed_s: float
    decode_s: float

    def mixed_time_s(self, prefill_tokens, prefill_seqs, decode_batch, mean_context):
        return self.mixed_s

    def decode_time_s(self, batch, mean_context):
        return self.decode_s


def test_all_admitted_at_once_is_one_prompt_iteration_then_osl_minus_one_decodes():
    # N <= the batch limit and a budget that holds every prompt: iteration 0 runs all prompts and
    # yields each request's first token, then L - 1 decode iterations: T = t_mix + (L - 1) t_d exactly.
    L, P = 37, 100
    for ranks, n in ((1, 20), (4, 10)):  # 4 ranks: the busiest holds ceil(10 / 4) = 3
        r = replay(ConstantCost(0.5, 0.01), num_requests=n, prompt_len=P, output_len=L, max_batch_size=64,
                   max_num_tokens=64 * P + 64, kv_seqs=10**6, ranks=ranks)
        assert r.total_time_s == pytest.approx(0.5 + (L - 1) * 0.01, rel=1e-12)
        assert r.iterations == L
        assert r.output_tokens == n * L
        assert r.output_tokens_per_s == pytest.approx(n * L / r.total_time_s, rel=1e-12)
        assert r.peak_batch == ranks * math.ceil(n / ranks)
        assert r.ramp_s == pytest.approx(0.5) and r.steady_s == 0.0
        assert r.drain_s == pytest.approx((L - 1) * 0.01)


def test_budget_bound_ramp_admits_m_prompts_per_iteration():
    # budget m P + N (N < P): every iteration admits exactly m prompts until the queue is empty
    # (q = N / m iterations), the last cohort finishes L - 1 iterations later: q + L - 1 iterations.
    P, L, m, n = 100, 25, 3, 30
    r = replay(ConstantCost(0.02, 0.02), num_requests=n, prompt_len=P, output_len=L, max_batch_size=1000,
               max_num_tokens=m * P + n, kv_seqs=1000)
    q = n // m
    assert r.iterations == q + L - 1
    assert r.total_time_s == pytest.approx((q + L - 1) * 0.02, rel=1e-12)
    assert r.peak_batch == n


def test_batch_limit_makes_waves_of_uniform_requests():
    # limit 8 (KV for 8 whole requests), 24 requests, budget ample: three waves of L iterations.
    L = 10
    r = replay(ConstantCost(0.3, 0.01), num_requests=24, prompt_len=50, output_len=L, max_batch_size=64,
               max_num_tokens=10**6, kv_seqs=8)
    assert r.iterations == 3 * L
    assert r.total_time_s == pytest.approx(3 * (0.3 + (L - 1) * 0.01), rel=1e-12)
    assert r.peak_batch == 8


def brute_force(cost, n, P, L, max_bs, budget, kv_seqs, ranks):
    """Independent per-request, per-iteration loop: ``ranks`` lock-step schedulers, request i on
    rank i % ranks; returns (total time, iterations, peak in flight, mean in flight)."""
    queues = [[i for i in range(n) if i % ranks == k] for k in range(ranks)]
    running = [[] for _ in range(ranks)]  # [tokens produced so far] per request in flight
    limit = min(max_bs, kv_seqs)
    t, it, peak, total_in_flight = 0.0, 0, 0, 0
    while True:
        running = [[x for x in rk if x[0] < L] for rk in running]  # finished last iteration: freed
        if not any(queues) and not any(running):
            break
        new_tokens = new_seqs = gen = 0
        ctx_sum = 0
        for k in range(ranks):
            g = len(running[k])
            gen += g
            ctx_sum += sum(P + x[0] for x in running[k])
            used, admitted = g, []
            while queues[k] and len(running[k]) + len(admitted) < limit and used + P <= budget:
                queues[k].pop(0)
                admitted.append([0])
                used += P
            new_tokens += P * len(admitted)
            new_seqs += len(admitted)
            for x in running[k]:
                x[0] += 1
            for x in admitted:
                x[0] = 1  # the context iteration yields the first token
            running[k].extend(admitted)
        ctx = ctx_sum / gen if gen else float(P)
        if new_seqs:
            t += cost.mixed_time_s(new_tokens, new_seqs, gen, ctx)
        else:
            t += cost.decode_time_s(gen, ctx)
        it += 1
        in_flight = sum(len(r) for r in running)
        peak = max(peak, in_flight)
        total_in_flight += in_flight
    return t, it, peak, total_in_flight / it


@pytest.mark.parametrize("n,P,L,max_bs,budget,kv,ranks", [
    (99, 50, 20, 16, 200, 12, 3),     # KV-bound, budget-bound ramp (4 prompts at most), 3 ranks
    (40, 30, 7, 64, 10**5, 10**5, 1),  # everything at once
    (150, 64, 33, 40, 64 + 40, 100, 2),  # one prompt per iteration at most
    (17, 10, 1, 4, 100, 100, 1),       # one output token: each request lives one iteration
])
def test_replay_matches_a_per_request_loop(n, P, L, max_bs, budget, kv, ranks):
    # LinearCost is exactly affine in context, as the replay's decode stretches assume: equal to
    # rounding (1e-9), and the same iteration count, peak and mean batch.
    cost = LinearCost(fixed_s=2e-3, per_token_s=3e-6, per_context_token_s=1e-8)
    r = replay(cost, num_requests=n, prompt_len=P, output_len=L, max_batch_size=max_bs, max_num_tokens=budget,
               kv_seqs=kv, ranks=ranks)
    t, it, peak, mean = brute_force(cost, n, P, L, max_bs, budget, kv, ranks)
    assert r.total_time_s == pytest.approx(t, rel=1e-9)
    assert r.iterations == it
    assert r.peak_batch == peak
    assert r.mean_batch == pytest.approx(mean, rel=1e-9)


def test_grid_cost_decode_stretch_is_exact():
    # the GridCost is affine in context at a fixed batch: a decode stretch's closed sum equals the
    # brute-force sum of its iterations (batches off the grid nodes, interpolated)
    grid = GridCost(prefill_fn=lambda tok: 1e-3 + 2e-6 * tok + 1e-10 * tok * tok,
                    decode_fn=lambda b, c: 1e-3 + 5e-6 * b ** 0.9 + 2e-9 * b * c,
                    kv_capacity_tokens=10**9, kv_bytes_per_token=1.0, devices=1)
    args = dict(num_requests=300, prompt_len=40, output_len=45, max_batch_size=70, max_num_tokens=400,
                kv_seqs=10**6, ranks=1)
    r = replay(grid, **args)
    t, it, *_ = brute_force(grid, 300, 40, 45, 70, 400, 10**6, 1)
    assert r.total_time_s == pytest.approx(t, rel=1e-9) and r.iterations == it


def test_long_runs_converge_to_the_steady_state_closed_form():
    # S = 64 sequences, L = 64, P = 128, budget S - 1 + P: one prompt per iteration, the engine's
    # K = L / S = 1 steady state of serving_policy.estimate. The replay's steady iteration carries
    # S - 1 generating sequences and one prompt against the closed form's S (1/S = 1.6%), and the
    # ramp and drain (2 L of N iterations) fade with N: within 1% at N = 20,000 (measured -0.27%;
    # -11% at N = 500, -1.2% at 5,000, -0.03% at 100,000).
    from moesim.planner.evaluation import Candidate
    from moesim.planner.serving_policy import estimate
    from moesim.planner.trtllm_engine import EngineLimits

    S, L, P = 64, 64, 128
    grid = GridCost(prefill_fn=lambda tok: 4e-3 + 1e-6 * tok,
                    decode_fn=lambda b, c: 4e-3 + 1e-6 * b + 5e-10 * b * c,
                    kv_capacity_tokens=10**9, kv_bytes_per_token=1.0, devices=1)
    lim = EngineLimits(max_batch_size=S, max_num_tokens=S - 1 + P, kv_seqs=10**6, max_seqs=S,
                       bound="max_batch_size")
    c = Candidate(hardware="h100-sxm", devices=1, batch=S)
    scenario = SimpleNamespace(workload=SimpleNamespace(prompt_len=P, output_len=L, length_distribution="fixed",
                                                        length_sigma=0.0), slo=SimpleNamespace(percentile=50))
    closed = estimate(grid, c, scenario, grid.decode_time_s(S, P + L / 2), 1, lim)
    runs = [replay(grid, num_requests=n, prompt_len=P, output_len=L, max_batch_size=S, max_num_tokens=S - 1 + P,
                   kv_seqs=10**6).output_tokens_per_s for n in (500, 5000, 20000)]
    errors = [abs(x / closed.output_tokens_per_s - 1) for x in runs]
    assert errors[-1] < 0.01
    assert errors[0] > errors[1] > errors[2]  # the finite dataset's ramp and drain fade


@pytest.mark.parametrize("field,kwargs", [
    ("num_requests", dict(num_requests=0)),
    ("num_requests", dict(num_requests=2.5)),
    ("prompt_len", dict(prompt_len=0)),
    ("output_len", dict(output_len=-1)),
    ("max_batch_size", dict(max_batch_size=0)),
    ("kv_seqs", dict(kv_seqs=0)),
    ("ranks", dict(ranks=0)),
    ("max_num_tokens", dict(max_num_tokens=99)),  # shorter than the prompt: never admitted whole
])
def test_bad_inputs_name_the_field(field, kwargs):
    args = dict(num_requests=10, prompt_len=100, output_len=10, max_batch_size=8, max_num_tokens=1000,
                kv_seqs=8, ranks=1)
    args.update(kwargs)
    with pytest.raises(SpecError) as err:
        replay(ConstantCost(1.0, 1.0), **args)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_case_num_requests_checked_and_flagged():
    from moesim.step_cases import bench_requests
    from moesim.validate import CaseInputs

    scenario = SimpleNamespace(scheduler="trtllm", stack="trtllm")
    with pytest.raises(SpecError, match="num_requests"):
        bench_requests(CaseInputs({"num_requests": 0, "max_load": True}), scenario)
    assert bench_requests(CaseInputs({"num_requests": 3000, "max_load": True}), scenario) == 3000
    other = CaseInputs({"num_requests": 3000, "max_load": True})
    assert bench_requests(other, SimpleNamespace(scheduler="auto", stack="sglang")) is None
    assert "num_requests" in other.ignored()


# ---- CUDA-graph padding of generation-only iterations (PyTorch backend) ------------------------
def test_padded_batch_is_the_smallest_listed_graph_that_holds_the_batch():
    from moesim.planner.bench_replay import padded_batch
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES

    assert padded_batch(1100, TRTLLM_GRAPH_BATCHES) == 2048
    assert padded_batch(257, TRTLLM_GRAPH_BATCHES) == 384
    assert padded_batch(384, TRTLLM_GRAPH_BATCHES) == 384
    assert padded_batch(3, TRTLLM_GRAPH_BATCHES) == 4
    assert padded_batch(9000, TRTLLM_GRAPH_BATCHES) == 9000  # above the list: eager, unpadded
    assert padded_batch(1100, ()) == 1100  # no graphs listed: no padding


def test_the_executor_keeps_graphs_up_to_its_largest_decode_batch():
    # TensorRT-LLM model_engine.py _filter_cuda_graph_batch_sizes: sizes <= min(max_batch_size,
    # max_num_tokens) are kept and, with padding on, the first larger size becomes that bound
    from moesim.planner.bench_replay import executor_graph_batches, padded_batch
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES as full

    kept = executor_graph_batches(full, 640, 2048)
    assert kept == (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640)
    assert padded_batch(515, kept) == 640 and padded_batch(515, full) == 1024
    assert executor_graph_batches(full, 512, 8192)[-1] == 512 and 1024 not in executor_graph_batches(full, 512, 8192)
    assert executor_graph_batches(full, 4096, 1500)[-2:] == (1024, 1500)  # the token budget bounds it
    assert executor_graph_batches((1, 2, 4), 640, 2048) == (1, 2, 4)  # nothing listed above: nothing added
    assert executor_graph_batches((1024,), 640, 2048) == (640,)  # every size above: padded to the bound
    assert executor_graph_batches((), 640, 2048) == ()


def test_the_candidate_replay_pads_to_the_executor_graphs(monkeypatch):
    # replay_candidate hands replay the filtered list, bounded by the engine's own max_batch_size
    from moesim.catalog import load_model
    from moesim.planner import bench_replay, serving_policy
    from moesim.planner.costs import PlanCache
    from moesim.planner.evaluation import Candidate
    from moesim.planner.scenario import scenario_from_dict

    seen = {}
    monkeypatch.setattr(bench_replay, "replay", lambda cost, **kw: seen.update(kw) or kw)
    sc = scenario_from_dict({
        "kind": "serving", "name": "graphs", "model": "qwen3-30b-a3b", "hardware": ["b200"], "max_devices": 1,
        "workload": {"prompt_len": 1024, "output_len": 1024, "target_output_tokens_per_s": 1.0, "dtype": "fp4"},
        "slo": {"percentile": 50, "tpot_s": 1e3, "ttft_s": 1e6}, "engine": {"max_batch_size": 600},
        "search": {"devices_per_replica": [1], "batch_per_device": [64], "tp": [1], "pp": [1]},
        "verify": {"top_n": 0}, "stack": "trtllm"})
    c = Candidate("b200", 1, tp=1, dp=1, ep=1, batch=64)
    model = load_model("qwen3-30b-a3b")
    bench_replay.replay_candidate(c, sc, model, PlanCache(), 3000)
    lim = serving_policy.trtllm_limits(c, sc, model, PlanCache())
    assert lim.max_batch_size == 600
    assert seen["graph_batches"][-2:] == (512, 600)


def padded_brute_force(cost: LinearCost, n, P, L, max_bs, budget, ranks, graphs):
    """Per-request loop (every rank holds n / ranks requests, KV ample) whose generation-only
    iterations run every rank at the graph size G of the largest rank batch: the GEMM term sees
    ranks x G rows, the attention the real requests' KV plus one token per dummy request."""
    per = n // ranks
    queue, running = per, []  # one rank's view; ranks run identical schedules
    t, it = 0.0, 0
    while True:
        running = [x for x in running if x < L]
        if not queue and not running:
            break
        g = len(running)
        ctx_sum = sum(P + x for x in running)
        new = min(queue, max_bs - g, (budget - g) // P)
        running = [x + 1 for x in running]
        if new > 0:
            queue -= new
            t += cost.mixed_time_s(ranks * new * P, ranks * new, ranks * g, ctx_sum / g if g else float(P))
            running += [1] * new
        else:
            G = min([b for b in graphs if b >= g] or [g])
            t += (cost.fixed_s + cost.per_token_s * ranks * G
                  + cost.per_context_token_s * ranks * (ctx_sum + (G - g)))
        it += 1
    return t, it


@pytest.mark.parametrize("n,P,L,max_bs,budget,ranks", [
    (300, 40, 30, 100, 40 * 3 + 100, 1),  # ramp of 3 prompts per iteration, batches padded to 128
    (120, 64, 17, 48, 64 + 48, 4),        # one prompt per iteration per rank, 4 lock-step ranks
    (3, 10, 9, 3, 100, 1),                # all at once: 3 requests replay the graph of 4
])
def test_padded_replay_matches_the_per_request_loop(n, P, L, max_bs, budget, ranks):
    # LinearCost is affine in context: the padded replay equals the loop to rounding (1e-9)
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES

    cost = LinearCost(fixed_s=2e-3, per_token_s=3e-6, per_context_token_s=1e-8)
    r = replay(cost, num_requests=n, prompt_len=P, output_len=L, max_batch_size=max_bs, max_num_tokens=budget,
               kv_seqs=10**6, ranks=ranks, graph_batches=TRTLLM_GRAPH_BATCHES)
    t, it = padded_brute_force(cost, n, P, L, max_bs, budget, ranks, TRTLLM_GRAPH_BATCHES)
    assert r.total_time_s == pytest.approx(t, rel=1e-9) and r.iterations == it
    plain = replay(cost, num_requests=n, prompt_len=P, output_len=L, max_batch_size=max_bs,
                   max_num_tokens=budget, kv_seqs=10**6, ranks=ranks)
    assert plain.total_time_s <= r.total_time_s  # padding only adds rows


def test_three_requests_pad_to_four_by_hand():
    # 3 requests at once (P = 10, L = 9): one mixed iteration, then 8 decode iterations of 3 real
    # requests replayed in the graph of 4: a + 4 b + c (3 (P + k) + 1) for k = 1..8.
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES

    a, b, c = 2e-3, 3e-6, 1e-8
    cost = LinearCost(fixed_s=a, per_token_s=b, per_context_token_s=c)
    r = replay(cost, num_requests=3, prompt_len=10, output_len=9, max_batch_size=3, max_num_tokens=100,
               kv_seqs=100, graph_batches=TRTLLM_GRAPH_BATCHES)
    mixed = a + b * 30
    by_hand = mixed + sum(a + 4 * b + c * (3 * (10 + k) + 1) for k in range(1, 9))
    assert r.total_time_s == pytest.approx(by_hand, rel=1e-12)


def test_graph_padding_only_under_the_pytorch_backend():
    from moesim.planner.bench_replay import trtllm_graph_batches
    from moesim.planner.trtllm_engine import TRTLLM_GRAPH_BATCHES
    from moesim.step.stacks import stack_table

    assert trtllm_graph_batches(SimpleNamespace(stack="trtllm")) == TRTLLM_GRAPH_BATCHES
    assert trtllm_graph_batches(SimpleNamespace(stack=stack_table().inline("trtllm", "decode"))) == TRTLLM_GRAPH_BATCHES
    assert trtllm_graph_batches(SimpleNamespace(stack="trtllm-engine")) == ()
    assert trtllm_graph_batches(SimpleNamespace(stack="sglang")) == ()
