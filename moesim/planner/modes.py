"""Serving modes side by side: the disaggregated plan (search + DES check) and which mode wins.

``plan_disaggregated`` runs :func:`moesim.planner.disagg.search` and verifies the cheapest pair
with the serving DES (:mod:`moesim.planner.disagg_verify`; ``verify.top_n = 0`` skips it). The
comparison prices each mode by its answer: the DES-verified count when there is one, else the
analytic count; ``ratio`` is the loser's $/h over the winner's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModeComparison:
    """Which serving mode is cheaper for the scenario, and by how much."""

    winner: str
    colocated_usd_per_hour: float | None
    disaggregated_usd_per_hour: float | None
    ratio: float | None  # the other mode's $/h over the winner's (None when only one mode is feasible)
    colocated_verified: bool = False
    disaggregated_verified: bool = False

    def text(self) -> str:
        if self.ratio is None:
            return f"only the {self.winner} mode meets the target"
        co, dis = self.colocated_usd_per_hour, self.disaggregated_usd_per_hour
        win, lose = (co, dis) if self.winner == "colocated" else (dis, co)
        other = "disaggregated" if self.winner == "colocated" else "co-located"
        return (f"{self.winner} wins: ${win:,.2f}/h vs {other} ${lose:,.2f}/h "
                f"({(self.ratio - 1) * 100:.0f}% more for {other})")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def facts_for(scenario, evaluator, facts: dict) -> dict:
    """``facts`` extended by the pool hardware that is not among the scenario's (prices applied)."""
    from moesim.planner.rank import with_price

    out = dict(facts)
    ds = scenario.disaggregated
    for hw in ds.prefill_hardware + ds.decode_hardware:
        if hw not in out:
            out[hw] = with_price(evaluator.hardware(hw), scenario)
    return out


def verify_targets(ranked, n: int) -> list:
    """The cheapest pair of each of the ``n`` cheapest (prefill hardware, decode hardware) combinations."""
    out, seen = [], set()
    for c in ranked:
        if len(out) >= n:
            break
        key = (c.prefill.layout.hardware, c.decode.layout.hardware)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def plan_disaggregated(scenario, model, evaluator, facts: dict):
    """The disaggregated search of ``scenario`` and the DES check of the cheapest pair of each of the
    ``verify.top_n`` cheapest hardware combinations; the answer is the cheapest verified one."""
    from moesim.planner.disagg_sweep import search
    from moesim.planner.disagg_verify import verify_disaggregated
    from moesim.planner.pool_cost import PoolCosts

    facts = facts_for(scenario, evaluator, facts)
    # NOTE: one PoolCosts for the search and its DES check, on the evaluator's content-keyed cache:
    # the pools' layer setups, prefill-overlap choices and step-model nodes the co-located sweep
    # already priced are reused, and the check reuses the search's iteration costs (same values).
    costs = PoolCosts(scenario, model, getattr(evaluator, "cache", None))
    result = search(scenario, model, facts, costs)
    if result.best is None or scenario.verify.top_n < 1:
        return result
    t = time.perf_counter()
    checks = tuple(verify_disaggregated(c, costs, facts) for c in verify_targets(result.ranked, scenario.verify.top_n))
    met = [v for v in checks if v.met]
    chosen = min(met, key=lambda v: (v.usd_per_hour, v.candidate_key)) if met else checks[0]
    return replace(result, verification=chosen, verifications=checks,
                   timings_s={**result.timings_s, "verify_s": time.perf_counter() - t})


def compare(answer, disagg) -> ModeComparison | None:
    """Compare the co-located ``answer`` (plan.Answer or None) with the disaggregated result."""
    if disagg is None:
        return None
    co = answer.usd_per_hour if answer is not None else None
    v = disagg.verification
    dis = None
    if disagg.best is not None:
        dis = v.usd_per_hour if v is not None and v.met else disagg.best.usd_per_hour
    if co is None and dis is None:
        return None
    if dis is None or (co is not None and co <= dis):
        return ModeComparison("colocated", co, dis, dis / co if dis is not None else None,
                              bool(answer and answer.verified), bool(v and v.met))
    return ModeComparison("disaggregated", co, dis, co / dis if co is not None else None,
                          bool(answer and answer.verified), bool(v and v.met))
