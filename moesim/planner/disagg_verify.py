"""Serving-DES check of a disaggregated answer: the whole fleet (R_p prefill + R_d decode replicas
and the KV links) simulated at the scenario's request rate.

The system is the one the analytic stage priced (:mod:`moesim.planner.disagg`): each pool's
``GridCost`` of the same seam (``prefill_grid``: prompt tokens, cached ones not recomputed;
decode steps of the speculative-decoding step time / E tokens, so a DES token step lasts what
one emitted token costs on average; the decode pool's steps under the overlap chosen at its
planned batch, ``PoolChoice.overlap``), the prefill token budget in prompt tokens
(``B_r x ranks / (P_new / P)``), the decode sequence limit ``SEQ_HEADROOM x b x n``, and the KV
transfer links of the prefill replica (``moesim.des.serving.system.KVTransfer``).

Walk (at most ``MAX_PROBES`` probes; each probe is :func:`moesim.planner.verify.probe`: seeds
added while the SLO-percentile's 95% interval straddles a limit): start at the analytic
(R_p, R_d). While the SLO is met, try one prefill replica fewer, then one decode replica fewer;
while it is missed, add a prefill replica when TTFT misses and a decode replica when TPOT
misses. The answer is the cheapest count met; ``None`` when none is met within the probes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.planner import serving_policy
from moesim.planner.disagg import DisaggCandidate, prefill_grid, transfer_links
from moesim.planner.pool_cost import PoolCosts

MAX_PROBES = 6


@dataclass(frozen=True)
class DisaggVerification:
    """DES verdict: the replica counts met (None when none), p99 TTFT/TPOT with 95% intervals."""

    candidate_key: str
    prefill_replicas: int | None
    decode_replicas: int | None
    usd_per_hour: float | None
    ttft_p99_s: float | None
    tpot_p99_s: float | None
    ttft_p99_ci: tuple[float, float] | None
    tpot_p99_ci: tuple[float, float] | None
    probes: tuple[dict, ...]
    notes: tuple[str, ...] = ()

    @property
    def met(self) -> bool:
        return self.prefill_replicas is not None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def fleet(cand: DisaggCandidate, costs: PoolCosts, prefill_replicas: int, decode_replicas: int):
    """The ServingSystem of ``cand`` with the given replica counts (module docstring)."""
    from moesim.des.serving.replica import SchedulerConfig
    from moesim.des.serving.system import KVTransfer, Pool, ServingSystem
    from moesim.specs.serving_features import new_prompt_tokens

    sc = costs.scenario
    w = sc.workload
    p, d = cand.prefill, cand.decode
    share = new_prompt_tokens(w.prompt_len, sc.features.prefix_cache_hit_rate) / w.prompt_len
    budget = max(1, math.ceil(p.batch * p.layout.attention_ranks / share))
    seqs = serving_policy.SEQ_HEADROOM * d.batch * d.layout.devices
    d_budget = max(seqs, serving_policy.PER_RANK_TOKEN_BUDGET * d.layout.attention_ranks)
    links = transfer_links(p.layout, d.layout.hardware)
    return ServingSystem(
        prefill=Pool(prefill_grid(costs, p.layout), prefill_replicas, SchedulerConfig(token_budget=budget,
                                                                                      max_seqs=budget)),
        decode=Pool(prefill_grid(costs, d.layout, d.overlap or None), decode_replicas, SchedulerConfig(token_budget=d_budget,
                                                                                    max_seqs=seqs)),
        transfer=KVTransfer(bandwidth_Bps=links.bandwidth_Bps, latency_s=links.latency_s, links=links.links),
    )


def _missed(probe, slo) -> set[str]:
    return {name for name, v in probe.estimate.items() if v > getattr(slo, name)}


def verify_disaggregated(cand: DisaggCandidate, costs: PoolCosts, facts: dict) -> DisaggVerification:
    """Walk the replica counts with the serving DES (module docstring)."""
    from moesim.planner.verify import _lengths, probe

    sc = costs.scenario
    w = sc.workload
    rate = sc.target_output_tokens_per_s / w.output_len
    lengths = _lengths(w)
    # NOTE: the decode pool fills over one request lifetime (L x TPOT); the simulated span covers two
    life = w.output_len * (sc.slo.tpot_s or cand.decode.tpot_s)
    sc = sc.model_copy(update={"verify": sc.verify.model_copy(update={"duration_s": max(sc.verify.duration_s,
                                                                                        2.0 * life)})})
    probes: dict[tuple[int, int], object] = {}

    def at(rp: int, rd: int):
        if (rp, rd) not in probes:
            probes[(rp, rd)] = probe(fleet(cand, costs, rp, rd), sc, rp + rd, rate, lengths)
        return probes[(rp, rd)]

    rp, rd = cand.prefill.replicas, cand.decode.replicas
    best = None
    if at(rp, rd).point_met(sc.slo):
        best = (rp, rd)
        for axis in (0, 1):
            while len(probes) < MAX_PROBES:
                nxt = (best[0] - 1, best[1]) if axis == 0 else (best[0], best[1] - 1)
                if min(nxt) < 1 or not at(*nxt).point_met(sc.slo):
                    break
                best = nxt
    else:
        while len(probes) < MAX_PROBES:
            miss = _missed(at(rp, rd), sc.slo)
            rp += 1 if "ttft_s" in miss or "e2e_s" in miss else 0
            rd += 1 if "tpot_s" in miss or "e2e_s" in miss or not miss else 0
            if at(rp, rd).point_met(sc.slo):
                best = (rp, rd)
                break
    trials = tuple({"prefill_replicas": k[0], "decode_replicas": k[1], **v.to_dict()} for k, v in sorted(probes.items()))
    if best is None:
        return DisaggVerification(cand.key(), None, None, None, None, None, None, None, trials,
                                  (f"SLO missed in every probe (up to {max(k[0] for k in probes)} prefill and "
                                   f"{max(k[1] for k in probes)} decode replicas)",))
    pr = probes[best]
    usd = (best[0] * cand.prefill.layout.devices * facts[cand.prefill.layout.hardware].usd_per_device_hour
           + best[1] * cand.decode.layout.devices * facts[cand.decode.layout.hardware].usd_per_device_hour)

    def ci(p99):
        return (p99[0] - p99[1], p99[0] + p99[1]) if p99 and math.isfinite(p99[1]) else None

    return DisaggVerification(cand.key(), best[0], best[1], usd, pr.ttft_p99[0] if pr.ttft_p99 else None,
                              pr.tpot_p99[0] if pr.tpot_p99 else None, ci(pr.ttft_p99), ci(pr.tpot_p99), trials)
