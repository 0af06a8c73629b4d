"""A closed-form evaluator: a test double for the planner's search, ranking and executors.

It is NOT a performance model: its numbers are simple formulas chosen so tests can work answers
out by hand (and so the planner can be exercised without the step, memory and serving models).

Per replica of ``n`` devices at ``b`` sequences per device on hardware of relative ``speed``:
- memory per device (GiB)  = weights_GiB / n + kv_GiB_per_seq x b, fits when <= hbm_GiB;
- decode iteration (s)     = (t0_s + t_seq_s x b) / speed + comm_s x log2(n);
- output tokens/s          = b x n / iteration;  TPOT = iteration;
- TTFT (s)                 = prompt_len x t_prefill_token_s / (speed x n) + iteration;
- drop fraction            = max(0, drop_slope x (1.25 - capacity_factor)) (0 when dropless).
Training on ``n`` devices: tokens/s = n x train_tokens_per_s_per_device x speed / (1 + 0.05 x (pp - 1)
+ 0.02 x (tp - 1)); MFU = 0.4 x that divided by n x speed x per-device rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from moesim.errors import UnknownNameError
from moesim.planner.evaluation import Candidate, Evaluation, HardwareFacts, Verification

DEFAULT_TABLE: dict[str, tuple[float, int, float, float]] = {
    # name: (usd per device-hour, domain size, HBM GiB, relative speed) -- made-up test values
    "slow-gpu": (1.0, 8, 80.0, 1.0),
    "fast-gpu": (2.5, 8, 141.0, 2.0),
}


@dataclass(frozen=True)
class ClosedFormEvaluator:
    """Closed-form stand-in for the real evaluator (see the module docstring for every formula)."""

    table: dict = field(default_factory=lambda: dict(DEFAULT_TABLE))
    weights_GiB: float = 640.0
    kv_GiB_per_seq: float = 0.25
    t0_s: float = 0.010
    t_seq_s: float = 0.0005
    comm_s: float = 0.001
    t_prefill_token_s: float = 0.0002
    drop_slope: float = 0.1
    train_tokens_per_s_per_device: float = 1000.0
    fail_keys: tuple[str, ...] = ()
    name: str = "closed-form"

    def hardware(self, name: str) -> HardwareFacts:
        if name not in self.table:
            raise UnknownNameError("hardware profile", name, list(self.table))
        price, domain, hbm, _ = self.table[name]
        return HardwareFacts(name, price, domain, hbm)

    def _one(self, c: Candidate, scenario) -> Evaluation:
        if c.key() in self.fail_keys:
            raise RuntimeError(f"planted failure for {c.key()}")
        _, _, hbm, speed = self.table[c.hardware]
        if scenario.kind == "training":
            return self._train(c, scenario, hbm, speed)
        used = self.weights_GiB / c.devices + self.kv_GiB_per_seq * c.batch
        ev = Evaluation(candidate=c, memory_headroom_GiB=hbm - used)
        if used > hbm:
            return ev.rejected("does_not_fit", f"short of memory by {used - hbm:.1f} GiB per device")
        it = (self.t0_s + self.t_seq_s * c.batch) / speed + self.comm_s * math.log2(c.devices)
        cf = c.capacity_factor
        drop = 0.0 if cf is None else max(0.0, self.drop_slope * (1.25 - cf))
        ttft = scenario.workload.prompt_len * self.t_prefill_token_s / (speed * c.devices) + it
        return Evaluation(
            candidate=c, tokens_per_s=c.batch * c.devices / it, step_time_s=it, tpot_s=it,
            ttft_s=ttft, memory_headroom_GiB=hbm - used,
            bottleneck="HBM" if c.batch < 32 else "compute", drop_fraction=drop,
        )

    def _train(self, c: Candidate, scenario, hbm: float, speed: float) -> Evaluation:
        used = 16.0 * self.weights_GiB / c.devices / 8.0
        if used > hbm:
            return Evaluation(candidate=c, memory_headroom_GiB=hbm - used).rejected(
                "does_not_fit", f"short of memory by {used - hbm:.1f} GiB per device")
        eff = 1.0 / (1 + 0.05 * (c.pp - 1) + 0.02 * (c.tp - 1))
        tps = c.devices * self.train_tokens_per_s_per_device * speed * eff
        step = scenario.workload.tokens_per_step / tps
        return Evaluation(candidate=c, tokens_per_s=tps, step_time_s=step, memory_headroom_GiB=hbm - used,
                          bottleneck="compute", mfu=0.4 * eff)

    def evaluate(self, candidates: Sequence[Candidate], scenario) -> list[Evaluation]:
        return [self._one(c, scenario) for c in candidates]

    def verify(self, ev: Evaluation, scenario) -> Verification:
        candidate = ev.candidate
        rate = 0.9 * ev.tokens_per_s / scenario.workload.output_len
        return Verification(
            candidate=candidate, max_request_rate_per_s=rate, rate_ci_low=0.95 * rate,
            rate_ci_high=1.05 * rate, output_tokens_per_s=rate * scenario.workload.output_len,
            ttft_p99_s=ev.ttft_s, tpot_p99_s=ev.tpot_s, engine="closed-form",
        )
