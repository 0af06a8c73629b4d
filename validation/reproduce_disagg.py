"""Reproduce published per-node throughput of disaggregated DeepSeek-V3 deployments from the models.

``python -m validation.reproduce_disagg [FILE]`` reads validation/data/published-disagg.json and,
for each figure, prices the published layout (DP attention, EP over every device, the published
redundant experts) with the disaggregated planner's seam (:mod:`moesim.planner.pool_cost`):

- prefill: the replica's prompt-token capacity at the token budget, B' / G(B') (prompt tokens,
  cached ones included, per iteration over its time; moesim/planner/disagg.py), per 8-GPU node;
- decode: the largest output rate b n E / t over the assumed batches whose TPOT t / E meets the
  published per-user speed and whose KV fits, per node.
Nothing is fitted: the error per figure is reported as predicted / published - 1.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path(__file__).with_name("data") / "published-disagg.json"
GPUS_PER_NODE = 8  # H800 / H100 HGX nodes in both sources


@dataclass(frozen=True)
class Reproduced:
    id: str
    role: str
    published: float
    predicted: float
    detail: str

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1.0


def _scenario(fig: dict):
    from moesim.planner.scenario import scenario_from_dict

    inp, asm = fig.get("inputs", {}), fig.get("assumed", {})
    prompt = inp.get("prompt_len", asm.get("prompt_len", inp.get("context", asm.get("context", 2000))))
    features = {"prefix_cache_hit_rate": inp.get("prefix_cache_hit_rate", 0.0)}
    if "mtp_draft_tokens" in inp:
        features["speculative"] = {"draft_tokens": inp["mtp_draft_tokens"], "acceptance_rate": inp["mtp_acceptance_rate"]}
    return scenario_from_dict({
        "kind": "serving", "name": fig["id"], "model": "deepseek-v3", "hardware": [fig["hardware"]],
        "workload": {"prompt_len": int(prompt), "output_len": 1, "target_output_tokens_per_s": 1.0},
        "slo": {"tpot_s": inp.get("tpot_limit_s", 1.0)}, "features": features, "verify": {"top_n": 0}})


def reproduce(fig: dict) -> Reproduced:
    from moesim.planner.disagg import prefill_grid
    from moesim.planner.pool_cost import PoolCosts, PoolLayout
    from moesim.planner.scenario import scenario_model
    from moesim.specs.serving_features import new_prompt_tokens

    sc = _scenario(fig)
    costs = PoolCosts(sc, scenario_model(sc))
    n = fig["devices"]
    lay = PoolLayout(fig["hardware"], n, 1, n, "dp", fig["redundant_experts"])
    nodes = n / GPUS_PER_NODE
    asm, inp = fig.get("assumed", {}), fig.get("inputs", {})
    if fig["role"] == "prefill":
        w = sc.workload
        share = new_prompt_tokens(w.prompt_len, sc.features.prefix_cache_hit_rate) / w.prompt_len
        budget = asm["token_budget_per_rank"] * n / share
        grid = prefill_grid(costs, lay)
        t = grid.prefill_time_s(round(budget))
        return Reproduced(fig["id"], "prefill", fig["published"]["value"], budget / t / nodes,
                          f"iteration of {budget:,.0f} prompt tokens in {t:.3f} s")
    ctx = int(inp.get("context", asm.get("context")))
    cap, e, best = costs.kv_capacity(lay), costs.tokens_per_step(), (0.0, "")
    for b in asm["batches"]:
        t = costs.decode_step_s(lay, b, ctx)
        if t / e <= inp["tpot_limit_s"] and b * n * ctx <= cap:
            rate = b * n * e / t / nodes
            if rate > best[0]:
                best = (rate, f"batch {b}/GPU, TPOT {t / e * 1e3:.1f} ms")
    return Reproduced(fig["id"], "decode", fig["published"]["value"], best[0], best[1] or "no batch meets the TPOT")


def reproduce_all(path: str | Path = DEFAULT) -> list[Reproduced]:
    data = json.loads(Path(path).read_text())
    return [reproduce(f) for f in data["figures"]]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m validation.reproduce_disagg", description=(
        "Reproduce published disaggregated per-node throughput from the models (nothing fitted)."))
    ap.add_argument("figures", nargs="?", default=str(DEFAULT), help="figures file (default: %(default)s)")
    rows = reproduce_all(ap.parse_args(sys.argv[1:] if argv is None else argv).figures)
    print(f"{'figure':34s} {'published':>10s} {'predicted':>10s} {'error':>7s}  how")
    for r in rows:
        print(f"{r.id:34s} {r.published:10,.0f} {r.predicted:10,.0f} {r.error:+7.1%}  {r.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
