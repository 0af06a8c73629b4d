"""A serving system and its simulation: pools of replicas, a load balancer, arrivals, KV transfer.

``simulate(system, requests, ...)`` builds one SimPy environment (all state lives in it and in
the objects made for this run), runs it until every request is done (or ``max_time_s``), and
summarizes the observer's records into a ``ServingResult`` (see ``metrics.py``).

Co-located: arrivals -> balancer -> replica (chunked prefill + decode).
Disaggregated: arrivals -> balancer -> prefill replica -> first token -> KV transfer over the
prefill replica's scale-out links (``KVTransfer``: each link carries one transfer at a time,
FIFO; time = latency + bytes / bandwidth; the prefill KV is freed when the transfer ends) ->
balancer -> decode replica.

A request whose prompt + output can never fit in a replica's KV cache is rejected at arrival
(counted, never silently dropped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from moesim.des.serving.arrivals import Requests
from moesim.des.serving.balancer import BalancerName, make_balancer
from moesim.des.serving.cost import ReplicaCost
from moesim.des.serving.metrics import ServingResult, summarize
from moesim.des.serving.observer import Observer
from moesim.des.serving.replica import Replica, RequestState, SchedulerConfig
from moesim.errors import SpecError
from moesim.specs import SLO


@dataclass(frozen=True)
class Pool:
    """``replicas`` identical replicas, each with ``cost`` and scheduler limits ``sched``."""

    cost: ReplicaCost
    replicas: int = 1
    sched: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self):
        if self.replicas < 1:
            raise SpecError("replicas", self.replicas, "must be >= 1")

    @property
    def devices(self) -> int:
        return self.replicas * self.cost.devices


@dataclass(frozen=True)
class KVTransfer:
    """KV-cache transfer from a prefill replica: ``links`` parallel FIFO links per replica, each
    ``bandwidth_Bps`` bytes/s one direction after ``latency_s``."""

    bandwidth_Bps: float
    latency_s: float = 0.0
    links: int = 1

    def __post_init__(self):
        if not self.bandwidth_Bps > 0 or self.latency_s < 0 or self.links < 1:
            raise SpecError("kv_transfer", (self.bandwidth_Bps, self.latency_s, self.links),
                            "bandwidth > 0, latency >= 0, links >= 1")


@dataclass(frozen=True)
class ServingSystem:
    """Either ``colocated`` alone, or ``prefill`` + ``decode`` (+ ``transfer``): disaggregated."""

    colocated: Pool | None = None
    prefill: Pool | None = None
    decode: Pool | None = None
    transfer: KVTransfer | None = None
    balancer: BalancerName = "least_loaded"

    def __post_init__(self):
        if (self.colocated is None) == (self.prefill is None or self.decode is None):
            raise SpecError("mode", (self.colocated, self.prefill, self.decode),
                            "give a colocated pool, or both prefill and decode pools")

    @property
    def mode(self) -> str:
        return "colocated" if self.colocated is not None else "disaggregated"

    @property
    def devices(self) -> int:
        pools = [self.colocated] if self.colocated else [self.prefill, self.decode]
        return sum(p.devices for p in pools)


class _Run:
    """The objects of one simulation run (the environment, replicas, balancers, links)."""

    def __init__(self, system: ServingSystem, requests: Requests, obs: Observer, env: simpy.Environment):
        self.env, self.system, self.requests, self.obs = env, system, requests, obs
        self.req = RequestState(requests.prompt_Q.tolist(), requests.output_Q.tolist())
        if system.mode == "colocated":
            self.front = self._make("replica", system.colocated, "colocated")
            self.back = None
        else:
            self.front = self._make("prefill", system.prefill, "prefill", self._prefilled)
            self.back = self._make("decode", system.decode, "decode")
            tr = system.transfer
            self.links = {r.name: [0.0] * (tr.links if tr else 1) for r in self.front}
        self.bal_front = make_balancer(system.balancer)
        self.bal_back = make_balancer(system.balancer)
        self.limit = min(r.capacity for r in self.front + (self.back or []))

    def _make(self, prefix: str, pool: Pool, role: str, hook=None) -> list[Replica]:
        reps = [Replica(self.env, f"{prefix}{i}", i, role, pool.cost, pool.sched, self.req, self.obs, hook)
                for i in range(pool.replicas)]
        for r in reps:
            self.env.process(r.run())
        return reps

    def arrivals(self):
        env, obs, req = self.env, self.obs, self.req
        for rid, t in enumerate(self.requests.arrival_s_Q.tolist()):
            if t > env.now:
                yield env.timeout(t - env.now)
            obs.on_arrival(rid)
            if req.ctx[rid] + req.left[rid] > self.limit:
                obs.on_reject(rid)
                continue
            self.bal_front.pick(self.front).submit(rid, req.ctx[rid])

    def _prefilled(self, rep: Replica, rid: int) -> None:
        """A prefill replica finished ``rid``'s prompt: send its KV to a decode replica."""
        tr, env = self.system.transfer, self.env
        ctx = self.req.ctx[rid]
        if tr is None:
            return self._arrive_decode(rep, rid, ctx)
        links = self.links[rep.name]
        i = min(range(len(links)), key=links.__getitem__)
        end = max(env.now, links[i]) + tr.latency_s + ctx * rep.cost.kv_bytes_per_token / tr.bandwidth_Bps
        links[i] = end
        env.timeout(end - env.now).callbacks.append(lambda _ev: self._arrive_decode(rep, rid, ctx))

    def _arrive_decode(self, rep: Replica, rid: int, ctx: int) -> None:
        rep.release(ctx)
        self.bal_back.pick(self.back).submit(rid, 0)

    def pools(self) -> dict[str, list[Replica]]:
        if self.back is None:
            return {"colocated": self.front}
        return {"prefill": self.front, "decode": self.back}


def simulate(system: ServingSystem, requests: Requests, *, slo: SLO | None = None,
             warmup_s: float = 0.0, window_end_s: float | None = None, max_time_s: float | None = None,
             samples: int = 200, keep_spans: bool = False, ci_batches: int = 20,
             progress: bool = False) -> ServingResult:
    """Run ``requests`` through ``system``; metrics over the window [warmup_s, window_end_s].
    ``progress``: a bar of simulated seconds on stderr (moesim.progress; off by default).

    ``window_end_s`` defaults to the end of the run (the last completion); ``max_time_s`` (default: 4 x last arrival +
    10 min) stops an overloaded run, whose unfinished requests are reported and count as SLO
    misses. ``samples``: points of the KV-utilization / queue-length time series.
    """
    n = len(requests)
    if n == 0:
        raise SpecError("requests", 0, "need at least one request")
    end = math.inf if window_end_s is None else window_end_s
    if not 0 <= warmup_s < end:
        raise SpecError("warmup_s", warmup_s, f"must be in [0, window end {end:g} s)")
    env = simpy.Environment()
    obs = Observer(env, n, (warmup_s, end), keep_spans=keep_spans)
    run = _Run(system, requests, obs, env)
    env.process(run.arrivals())
    interval = (end if window_end_s is not None else max(requests.span_s, 1.0)) / samples
    env.process(obs.sampler(run.pools(), interval))
    horizon = max_time_s if max_time_s is not None else 4 * requests.span_s + 600.0
    if progress:
        env.process(_ticker(env, max(requests.span_s, 1.0)))
    env.run(until=simpy.AnyOf(env, [obs.all_done, env.timeout(horizon)]))
    if window_end_s is None:
        obs.close_window(env.now)
    return summarize(system, requests, obs, run.req, slo=slo, ci_batches=ci_batches)


def _ticker(env, span_s: float, ticks: int = 100):
    """Advance a progress bar over the arrival span in simulated seconds (observer only)."""
    from moesim.progress import bar

    for _ in bar(range(ticks), total=ticks, desc=f"serving DES ({span_s:,.0f} simulated s)", enabled=True):
        yield env.timeout(span_s / ticks)
