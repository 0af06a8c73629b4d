"""One serving replica: a SimPy iteration loop with continuous batching and a KV-cache budget.

Per iteration (Sarathi/vLLM-style continuous batching with chunked prefill):

1. every running sequence decodes one token (``d`` tokens of the budget); if the KV cache cannot
   hold those ``d`` new tokens, the most recently admitted sequence is preempted (recompute: its
   KV is freed and it re-enters the queue front with prompt + generated tokens to prefill again);
2. the remaining token budget ``B - d`` goes to prompt chunks: first the partly prefilled
   requests, then requests admitted from the FCFS queue while their whole context fits in the
   KV cache (admission control) and the sequence limit allows;
3. the iteration lasts ``cost.mixed_time_s(...)``; at its end finished sequences free their KV
   and completed prompts emit their first token and join the decode set (co-located), or are
   handed to ``on_prefilled`` (disaggregated prefill role).

No per-token events: decode progress is one step counter. A sequence that joins the decode set
at step s with R tokens still to produce finishes at step s + R; its KV holds
``ctx0 + (step - s)`` tokens, so the batch's total context is ``sum(ctx0 - s) + n x step``,
kept as one running sum. Preemption uses lazy deletion from the finish heap (an epoch per
request).

Roles: ``colocated`` (prefill + decode), ``prefill`` (prefill only, then hand off; KV held
until the transfer ends), ``decode`` (requests arrive with their KV; only recompute prefills).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import simpy

from moesim.des.serving.cost import ReplicaCost
from moesim.errors import SpecError

Role = Literal["colocated", "prefill", "decode"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits of a replica.

    ``token_budget``: tokens per iteration (prefill chunk tokens + one per decoding sequence).
    ``max_seqs``: sequences in flight (decoding + partly prefilled).
    ``chunked_prefill``: False = a prompt is never split (it waits for an iteration whose
    remaining budget holds it whole, or runs alone when longer than the budget).
    ``decode_steps_per_prefill`` (K >= 1): while sequences are decoding, prompt chunks are
    scheduled at most once every K iterations (after an iteration carrying prefill, K - 1
    decode-only iterations run first); with nothing decoding a prompt is scheduled at once.
    K = 1 (the default) is plain continuous batching. A larger K batches prompts into fewer,
    larger prefills: what a deployment whose eager prefill pass pays a fixed host (CPU) time
    wants (moesim/step/host.py), at the price of TTFT; SGLang's ``--num-continuous-decode-steps``
    (decode steps run back to back before the scheduler looks at new prompts) is the same knob.
    """

    token_budget: int = 8192
    max_seqs: int = 256
    chunked_prefill: bool = True
    decode_steps_per_prefill: int = 1

    def __post_init__(self):
        if self.max_seqs < 1:
            raise SpecError("max_seqs", self.max_seqs, "must be >= 1")
        if self.decode_steps_per_prefill < 1:
            raise SpecError("decode_steps_per_prefill", self.decode_steps_per_prefill, "must be >= 1")
        if self.token_budget < self.max_seqs:
            raise SpecError("token_budget", self.token_budget,
                            f"must be >= max_seqs = {self.max_seqs} (each decoding sequence takes one token)")


class RequestState:
    """Mutable per-request bookkeeping shared by the replicas of one simulation (not global).

    ``ctx``: tokens whose KV the request needs (prompt, plus generated tokens after a
    preemption); ``left``: output tokens still to produce (the first one included until emitted).
    """

    __slots__ = ("ctx", "left", "preemptions")

    def __init__(self, prompt: list[int], output: list[int]):
        self.ctx = list(prompt)
        self.left = list(output)
        self.preemptions = [0] * len(prompt)


class Replica:
    """A replica's queue, batch and KV cache, and its iteration loop (``env.process(r.run())``)."""

    def __init__(self, env: simpy.Environment, name: str, index: int, role: Role, cost: ReplicaCost,
                 sched: SchedulerConfig, req: RequestState, observer,
                 on_prefilled: Callable[["Replica", int], None] | None = None):
        self.env, self.name, self.index, self.role = env, name, index, role
        self.cost, self.sched, self.req, self.obs = cost, sched, req, observer
        self.on_prefilled = on_prefilled
        self.capacity = int(cost.kv_capacity_tokens)
        self.queue: deque[int] = deque()          # waiting for admission
        self.need: dict[int, int] = {}            # rid -> prompt tokens still to prefill (0 = none)
        self.prefilling: list[list[int]] = []     # [rid, tokens left] admitted, partly prefilled
        self.heap: list[tuple[int, int, int]] = []  # (finish step, rid, epoch) of decoding seqs
        self.live: dict[int, tuple[int, int]] = {}  # rid -> (join step, ctx at join), admission order
        self.epoch: dict[int, int] = {}
        self.step = 0
        self.ctx_sum0 = 0                         # sum over live of (ctx at join - join step)
        self.kv_used = 0
        self.outstanding = 0                      # requests assigned here and not yet gone
        self.decode_only = 0                      # decode-only iterations since the last prefill
        self._wake: simpy.Event | None = None

    # ---- inputs ---------------------------------------------------------------------------
    def submit(self, rid: int, prefill_tokens: int) -> None:
        """Queue ``rid`` needing ``prefill_tokens`` of prompt processing (0: KV already here)."""
        self.need[rid] = prefill_tokens
        self.queue.append(rid)
        self.outstanding += 1
        self.wake()

    def release(self, tokens: int) -> None:
        """Free ``tokens`` of KV (a finished disaggregated transfer)."""
        self.kv_used -= tokens
        self.wake()

    def wake(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    @property
    def queue_len(self) -> int:
        return len(self.queue)

    # ---- the loop -------------------------------------------------------------------------
    def run(self):
        env, cost = self.env, self.cost
        while True:
            self._make_room()
            may_prefill = not self.live or self.decode_only >= self.sched.decode_steps_per_prefill - 1
            budget = self.sched.token_budget - len(self.live) if may_prefill else 0
            chunks, p_tokens = self._schedule_prefill(budget)
            d = len(self.live)
            if d == 0 and p_tokens == 0:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            ctx = (self.ctx_sum0 + d * self.step) / d if d else 0.0
            if d == 0:
                dt = cost.prefill_time_s(p_tokens, len(chunks))
            elif p_tokens == 0:
                dt = cost.decode_time_s(d, ctx)
            else:
                dt = cost.mixed_time_s(p_tokens, len(chunks), d, ctx)
            start = env.now
            yield env.timeout(dt)
            self.step += 1
            self.decode_only = 0 if p_tokens else self.decode_only + 1
            self.kv_used += d
            done = self._finish_decodes()
            emitted = self._finish_prefills(chunks)
            self.obs.on_iteration(self, start, dt, p_tokens, d, d + emitted, done)

    def _make_room(self) -> None:
        """Preempt the newest sequences until the KV cache holds one more token for each.

        Recompute: the KV held (ctx0 + produced tokens) plus the last emitted token are
        prefilled again; that prefill emits the next token.
        """
        while self.live and self.kv_used + len(self.live) > self.capacity:
            rid = next(reversed(self.live))
            join, ctx0 = self.live.pop(rid)
            self.epoch[rid] = self.epoch.get(rid, 0) + 1
            self.ctx_sum0 -= ctx0 - join
            held = ctx0 + self.step - join
            self.kv_used -= held
            self.req.ctx[rid] = held + 1
            self.req.left[rid] -= self.step - join
            self.req.preemptions[rid] += 1
            self.need[rid] = held + 1
            self.queue.appendleft(rid)
            self.obs.on_preempt(self, rid)

    def _schedule_prefill(self, budget: int):
        """Prompt chunks for this iteration: continue partial prefills, then admit from the queue."""
        chunks: list[tuple[list[int], int]] = []
        used = 0
        for entry in self.prefilling:
            if used >= budget:
                break
            take = min(entry[1], budget - used)
            if not self.sched.chunked_prefill and take < entry[1]:
                break
            chunks.append((entry, take))
            used += take
        cap, req = self.capacity, self.req
        while self.queue and len(self.live) + len(self.prefilling) < self.sched.max_seqs:
            rid = self.queue[0]
            need = self.need[rid]
            if self.kv_used + req.ctx[rid] + len(self.live) + 1 > cap:
                break  # FCFS: the head waits for KV (its context + one token per decoding seq)
            if need and used >= budget:
                break
            if need and not self.sched.chunked_prefill and used + need > budget and used > 0:
                break
            self.queue.popleft()
            self.kv_used += req.ctx[rid]
            if need == 0:
                self._join(rid)
                self.obs.on_decode_start(self, rid)  # a disaggregated request's KV is here: it decodes
                budget -= 1
                continue
            entry = [rid, need]
            self.prefilling.append(entry)
            take = need if not self.sched.chunked_prefill else min(need, budget - used)
            chunks.append((entry, take))
            used += take
        return chunks, used

    def _join(self, rid: int) -> None:
        """Start decoding ``rid``: it produces its ``left`` remaining tokens, one per step."""
        ctx0 = self.req.ctx[rid]
        self.live[rid] = (self.step, ctx0)
        self.ctx_sum0 += ctx0 - self.step
        heapq.heappush(self.heap, (self.step + self.req.left[rid], rid, self.epoch.get(rid, 0)))

    def _finish_decodes(self) -> int:
        heap, step, n = self.heap, self.step, 0
        while heap and heap[0][0] <= step:
            _, rid, ep = heapq.heappop(heap)
            if ep != self.epoch.get(rid, 0) or rid not in self.live:
                continue  # stale entry of a preempted sequence
            join, ctx0 = self.live.pop(rid)
            self.ctx_sum0 -= ctx0 - join
            self.kv_used -= ctx0 + step - join
            self.req.left[rid] = 0
            self.outstanding -= 1
            self.obs.on_finish(self, rid)
            n += 1
        return n

    def _finish_prefills(self, chunks) -> int:
        """Apply this iteration's chunks; completed prompts emit a token. Returns tokens emitted."""
        emitted = 0
        for entry, take in chunks:
            entry[1] -= take
            if entry[1] > 0:
                continue
            rid = entry[0]
            self.prefilling.remove(entry)
            self.obs.on_first_token(self, rid)
            emitted += 1
            self.req.left[rid] -= 1
            if self.req.left[rid] <= 0:
                self.kv_used -= self.req.ctx[rid]
                self.outstanding -= 1
                self.obs.on_finish(self, rid)
            elif self.role == "prefill":
                self.outstanding -= 1
                self.on_prefilled(self, rid)
            else:
                self._join(rid)
        return emitted
