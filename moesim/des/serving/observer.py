"""The observer: what the simulation records while it runs (the replicas call it; it never steers).

Per request: first-token, decode-start and finish times (plain lists indexed by request id;
decoding starts with the first token on a co-located replica, when a decode replica admits the
request after its KV transfer when disaggregated). Over the
measurement window [w0, w1]: output and prompt tokens processed (counted per iteration at its
end, so exact), the time integral of requests in the system (for Little's law), busy time.
Over time: KV utilization and queue length sampled every ``sample_interval_s`` by a SimPy
process. Optionally the iterations as spans for a Chrome trace.
"""
from __future__ import annotations

import math

import simpy

from moesim.des.trace import Span


class Observer:
    """Collects per-request times and windowed counters of one simulation run."""

    def __init__(self, env: simpy.Environment, num_requests: int, window_s: tuple[float, float],
                 keep_spans: bool = False):
        self.env = env
        self.n = num_requests
        self.w0, self.w1 = window_s
        self.first_s = [math.nan] * num_requests
        self.finish_s = [math.nan] * num_requests
        self.decode_start_s = [math.nan] * num_requests
        self.rejected: list[int] = []
        self.preemptions = 0
        self.iterations = 0
        self.out_tokens = 0
        self.in_tokens = 0
        self.busy_s: dict[str, float] = {}
        self.in_system = 0
        self._area = 0.0
        self._last = 0.0
        self.done_count = 0
        self.all_done = env.event()
        self.samples: list[tuple[float, str, float, int]] = []  # (time, pool, KV utilization, queued)
        self.spans: list[Span] | None = [] if keep_spans else None

    # ---- Little's law integral ------------------------------------------------------------
    def _advance(self) -> None:
        now = min(max(self.env.now, self.w0), self.w1)
        self._area += self.in_system * (now - self._last)
        self._last = now

    def close_window(self, end_s: float) -> None:
        """Fix the window's end at ``end_s`` (a window left open until the run ended)."""
        self._advance()
        self.w1 = end_s

    @property
    def mean_in_system(self) -> float:
        """Time-average number of requests in the system over the window (so far)."""
        self._advance()
        return self._area / (self.w1 - self.w0) if self.w1 > self.w0 else math.nan

    # ---- events ---------------------------------------------------------------------------
    def on_arrival(self, rid: int) -> None:
        self._advance()
        self.in_system += 1

    def on_reject(self, rid: int) -> None:
        self.rejected.append(rid)
        self._advance()
        self.in_system -= 1
        self._count_done()

    def on_first_token(self, replica, rid: int) -> None:
        if self.first_s[rid] != self.first_s[rid]:  # NaN: the first time only (not a recompute)
            self.first_s[rid] = self.env.now
        if replica.role != "prefill":
            self.on_decode_start(replica, rid)

    def on_decode_start(self, replica, rid: int) -> None:
        if self.decode_start_s[rid] != self.decode_start_s[rid]:  # the first time only
            self.decode_start_s[rid] = self.env.now

    def on_finish(self, replica, rid: int) -> None:
        self.on_decode_start(replica, rid)  # a one-token answer finishes at its prefill
        self.finish_s[rid] = self.env.now
        self._advance()
        self.in_system -= 1
        self._count_done()

    def _count_done(self) -> None:
        self.done_count += 1
        if self.done_count == self.n and not self.all_done.triggered:
            self.all_done.succeed()

    def on_preempt(self, replica, rid: int) -> None:
        self.preemptions += 1

    def on_iteration(self, replica, start_s: float, dt_s: float, prefill_tokens: int,
                     decode_batch: int, tokens_out: int, finished: int) -> None:
        self.iterations += 1
        end = start_s + dt_s
        if self.w0 <= end <= self.w1:
            self.out_tokens += tokens_out
            self.in_tokens += prefill_tokens
        lo, hi = max(start_s, self.w0), min(end, self.w1)
        if hi > lo:
            self.busy_s[replica.name] = self.busy_s.get(replica.name, 0.0) + hi - lo
        if self.spans is not None:
            kind = "mixed" if prefill_tokens and decode_batch else ("prefill" if prefill_tokens else "decode")
            self.spans.append(Span(replica.name, "iterations", kind, start_s, dt_s, "serving", {
                "prefill_tokens": prefill_tokens, "decode_batch": decode_batch,
                "kv_used_tokens": replica.kv_used, "queued": replica.queue_len}))

    # ---- sampling over time ---------------------------------------------------------------
    def sampler(self, pools: dict[str, list], interval_s: float):
        """SimPy process: every ``interval_s`` record, per pool, the mean KV utilization of its
        replicas and their total queue length."""
        while not self.all_done.triggered:
            for pool, reps in pools.items():
                util = sum(r.kv_used / r.capacity for r in reps) / len(reps)
                self.samples.append((self.env.now, pool, util, sum(r.queue_len for r in reps)))
            yield self.env.timeout(interval_s)
