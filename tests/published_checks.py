"""Checks shared by the published case-file tests (not a test module: no test_ functions)."""
from __future__ import annotations

import pytest


def check_vllm_bench_block(c: dict) -> None:
    """A row transcribed from one printed `vllm bench serve` result block: total token throughput
    = (input + generated) / duration and output throughput = generated / duration within the
    duration's rounding (printed to 0.01 s, >= 4.04 s: rtol 2e-3); measured = the printed output
    throughput / the instance's GPUs; output_len = the printed mean generated length, rounded;
    prompt_len within re-tokenisation drift of the printed mean input."""
    also = {p["metric"]: p["value"] for p in c["also_published"]}
    dur, inp, out, n = (also["benchmark_duration"], also["total_input_tokens"], also["total_generated_tokens"],
                        also["successful_requests"])
    i = c["inputs"]
    assert also["total_token_throughput"] == pytest.approx((inp + out) / dur, rel=2e-3), c["id"]
    assert c["published"]["value"] == pytest.approx(out / dur, rel=2e-3), c["id"]
    assert c["measured"]["value"] == pytest.approx(c["published"]["value"] / i["devices"], rel=1e-6), c["id"]
    assert i["output_len"] == round(out / n), c["id"]
    assert abs(inp / n - i["prompt_len"]) <= 0.01 * i["prompt_len"] + 2, c["id"]  # re-tokenisation drift
