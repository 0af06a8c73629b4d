"""Layer-level discrete-event simulation (SimPy) of a stack of MoE layers over EP ranks.

Each EP rank runs two SimPy processes, its *compute* and *comm* streams, each executing its
program in order (as a CUDA stream does): per layer and micro-batch b, compute runs P_b
(attention + router) and X_b (this rank's experts + shared experts), comm runs D_b (dispatch)
and C_b (combine). With ``two_microbatch`` the programs are P0 P1 X0 X1 / D0 D1 C0 C1 per layer
(the order of ``moesim.step.layer.two_microbatch_time``); with ``none`` one micro-batch P X / D C.
An op also waits for its micro-batch's previous op. Dispatch and combine are *barriers*: they
start when every rank has reached them and last the time the comm model gives for that step's
sampled traffic matrix. Each step draws its routing (per micro-batch; ``draw="layer"``: per
layer and micro-batch) from the routing engine's sampler, so expert time differs per rank and
per step and stragglers emerge; the step ends when every rank has finished its last combine
and the LM head.

SM sharing: while a rank's comm stream has a dispatch/combine kernel launched (from its arrival
at the barrier to the barrier's end: a launched kernel holds its SMs while it waits for the other
ranks), that rank's compute ops progress at the rate the kernel leaves them (its SMs and its HBM
share) and otherwise at the idle rate (the GEMMs' fixed grid): the fluid model of
moesim/step/sharing.py eqs. 1-5, as ``two_microbatch_time``.

NOTE: the host that issues the operators (moesim/step/host.py), and its wait for the token
counts at a normal-mode dispatch (moesim/step/schedule.py), are not simulated: in eager phases
(prefill) where the host is on the critical path the analytic time is longer than the DES's;
decode (CUDA graphs, no host time) and host time 0 compare exactly.

``balanced`` routing is deterministic (no draws): every rank gets the analytic counts and
traffic, so the DES must reproduce the analytic step time (tests: within 1%).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from moesim.des.trace import Span
from moesim.errors import SpecError
from moesim.progress import bar
from moesim.step import pricing
from moesim.step.layer import OVERLAPS, LayerSetup, expert_layout, layer_ops, sampled_a2a
from moesim.step.sharing import op_rates


@dataclass(frozen=True)
class DesResult:
    """Step times of a simulated run (seconds) and, when recorded, the timeline spans."""

    step_times_s: np.ndarray
    overlap: str
    ranks: int
    layers: int
    spans: tuple[Span, ...] = field(default=(), repr=False)

    @property
    def mean_step_s(self) -> float:
        return float(np.mean(self.step_times_s))

    def percentile_step_s(self, q: float) -> float:
        return float(np.percentile(self.step_times_s, q))

    def to_dict(self) -> dict:
        return {"mean_step_s": self.mean_step_s, "p50_step_s": self.percentile_step_s(50),
                "p99_step_s": self.percentile_step_s(99), "steps": int(self.step_times_s.size),
                "step_times_s": self.step_times_s.tolist(), "overlap": self.overlap,
                "ranks": self.ranks, "layers": self.layers}


@dataclass
class _Plan:
    """Durations of one step: P[l], X[l][b] (per rank), D[l][b], C[l][b], head."""

    P: list
    X: list
    D: list
    C: list
    head: float
    mix: list = field(default_factory=list)  # per layer: P's and X's op mixes (step/sharing.py eqs. 4-5)
    comm: list = field(default_factory=list)  # per layer: (SM share, HBM share of D, of C)


class _CommState:
    """The resident comm kernel of one rank as (SM share, HBM share), None when there is none;
    ``changed`` fires whenever it changes."""

    def __init__(self, env: simpy.Environment):
        self.env, self.kernel, self.changed = env, None, env.event()

    def set(self, kernel: tuple[float, float] | None) -> None:
        if kernel != self.kernel:
            self.kernel = kernel
            old, self.changed = self.changed, self.env.event()
            old.succeed()

    def rate(self, mix: tuple[float, float, float]) -> float:
        """Speed of an op of mix (fixed-grid GEMM share, memory-bound share, GEMM SM share)."""
        g, m, gemm = mix
        idle, comm = op_rates(1.0, g, m, gemm, *(self.kernel or (1.0, 0.0)))
        return float(idle if self.kernel is None else comm)


class _Barrier:
    """A collective: runs ``duration`` once all ``ranks`` have arrived; ``done`` fires after."""

    def __init__(self, env: simpy.Environment, ranks: int, duration: float, name: str, spans: list | None):
        self.env, self.ranks, self.duration, self.name, self.spans = env, ranks, duration, name, spans
        self.arrived = 0
        self.done = env.event()

    def arrive(self) -> simpy.Event:
        self.arrived += 1
        if self.arrived == self.ranks:
            self.env.process(self._run())
        return self.done

    def _run(self):
        start = self.env.now
        yield self.env.timeout(self.duration)
        if self.spans is not None and self.duration > 0:
            for r in range(self.ranks):
                self.spans.append(Span(f"rank {r}", "comm", self.name, start, self.duration, "a2a"))
        self.done.succeed()


def _draw(setup: LayerSetup, tokens: float, sampler, rng, cache: dict) -> tuple[np.ndarray, float, float]:
    """One routing draw: (routed-expert seconds per rank, dispatch s, combine s)."""
    R = max(setup.ep, 1)
    layout = expert_layout(setup, setup.moe_tokens(tokens))
    sample = sampler.sample(rng)
    x_R = np.empty(R)
    for r, counts in enumerate(sample.rank_expert_counts_RL):
        key = np.sort(counts).tobytes()  # NOTE: a grouped GEMM's time does not depend on group order
        if key not in cache:
            cache[key] = pricing.expert_ffn_s(setup.hw, setup.model, counts, setup.expert_dtype, setup.expert_ffn,
                                              layout=layout, weight_dtype=setup.expert_weight_dtype) / (
                setup.device_fraction * setup.expert_fraction)
        x_R[r] = cache[key]
    d, c = sampled_a2a(setup, setup.moe_tokens(tokens), sample.traffic_RR, sample.dedup_RN) if R > 1 else (0.0, 0.0)
    return x_R, d, c


def _plan(setup: LayerSetup, layers: list[int], tokens: float, context: float, mbs: int, head: float,
          sampler, rng, cache: dict, per_layer: bool) -> _Plan:
    """Draw one step: per layer and micro-batch, expert time per rank and all-to-all times."""
    R = max(setup.ep, 1)
    P, X, D, C, mix, comm = [], [], [], [], [], []
    step_draws = None
    for l in layers:
        ops = layer_ops(setup, l, tokens, context)
        P.append(ops.pre_s)
        p, x = max(ops.pre_s, 1e-300), max(ops.ffn_s, 1e-300)
        gemm = ops.gemm_share if mbs > 1 else 1.0  # the fixed grid is set by the overlapped program only
        mix.append(((ops.pre_gemm_s / p, ops.pre_memory_s / p, gemm),
                    (1.0 - ops.ffn_memory_s / x, ops.ffn_memory_s / x, gemm)))
        comm.append((ops.compute_share, ops.dispatch_hbm_share, ops.combine_hbm_share))
        fixed = ops.shared_experts_s + ops.dense_ffn_s
        if sampler is None or not setup.model.layer_is_moe(l):
            X.append([np.full(R, fixed + ops.experts_s)] * mbs)
            D.append([ops.dispatch_s] * mbs)
            C.append([ops.combine_s] * mbs)
            continue
        if per_layer or step_draws is None:
            step_draws = [_draw(setup, tokens, sampler, rng, cache) for _ in range(mbs)]
        X.append([fixed + x_R for x_R, _, _ in step_draws])
        D.append([d for _, d, _ in step_draws])
        C.append([c for _, _, c in step_draws])
    return _Plan(P, X, D, C, head, mix, comm)


def _run_step(env: simpy.Environment, plan: _Plan, R: int, mbs: int, spans: list | None):
    """Start both streams of every rank for one step; returns the event of the step's end."""
    L = len(plan.P)
    disp = [[_Barrier(env, R, plan.D[l][b], f"dispatch L{l} mb{b}", spans) for b in range(mbs)] for l in range(L)]
    comb = [[_Barrier(env, R, plan.C[l][b], f"combine L{l} mb{b}", spans) for b in range(mbs)] for l in range(L)]

    def busy(r, name, dur, mix=(0.0, 0.0, 1.0)):
        """Run ``dur`` seconds of full-speed work at the speed rank r's comm stream leaves an op
        of ``mix`` (moesim/step/sharing.py eqs. 4-5)."""
        start, work, state = env.now, dur, states[r]
        while work > 1e-12 * dur:
            t0, rate, changed = env.now, state.rate(mix), state.changed
            done = env.timeout(work / rate)
            if done in (yield done | changed):
                break
            work -= (env.now - t0) * rate
        if spans is not None and dur > 0:
            spans.append(Span(f"rank {r}", "compute", name, start, dur, "compute"))

    def compute(r, p_done, x_done):
        for l in range(L):
            for b in range(mbs):
                if l > 0:
                    yield comb[l - 1][b].done
                yield from busy(r, f"attention L{l} mb{b}", plan.P[l], *plan.mix[l][:1])
                p_done[l][b].succeed()
            for b in range(mbs):
                yield disp[l][b].done
                yield from busy(r, f"experts L{l} mb{b}", plan.X[l][b][r], *plan.mix[l][1:])
                x_done[l][b].succeed()
        yield comb[L - 1][mbs - 1].done
        yield from busy(r, "lm_head", plan.head)

    def comm(r, p_done, x_done):
        state = states[r]
        for l in range(L):
            share, h_dispatch, h_combine = plan.comm[l]
            for b in range(mbs):
                yield p_done[l][b]
                state.set((share, h_dispatch))
                yield disp[l][b].arrive()
                state.set(None)
            for b in range(mbs):
                yield x_done[l][b]
                state.set((share, h_combine))
                yield comb[l][b].arrive()
                state.set(None)

    states = [_CommState(env) for _ in range(R)]
    ends = []
    for r in range(R):
        p_done = [[env.event() for _ in range(mbs)] for _ in range(L)]
        x_done = [[env.event() for _ in range(mbs)] for _ in range(L)]
        ends.append(env.process(compute(r, p_done, x_done)))
        ends.append(env.process(comm(r, p_done, x_done)))
    return env.all_of(ends)


def simulate_layers(setup: LayerSetup, *, layers: list[int], tokens: float, context: float,
                    overlap: str = "none", steps: int = 10, seed: int = 0, head_s: float = 0.0,
                    draw: str = "step", record: bool = False, progress: bool = False) -> DesResult:
    """Simulate ``steps`` iterations of ``layers`` (0-based layer indices) on ``setup.ep`` ranks.

    ``tokens``: tokens per rank per iteration (split in two halves under two_microbatch).
    ``progress``: a bar on stderr over the iterations (an observer: no result changes).
    """
    if overlap not in OVERLAPS:
        raise SpecError("overlap", overlap, f"one of {', '.join(OVERLAPS)}")
    if steps <= 0:
        raise SpecError("steps", steps, "must be positive")
    if not layers:
        raise SpecError("layers", layers, "need at least one layer")
    if draw not in ("step", "layer"):
        raise SpecError("draw", draw, "step (one routing draw per step) or layer (one per layer)")
    mbs = 2 if overlap == "two_microbatch" else 1
    mb_tokens = tokens / mbs
    R = max(setup.ep, 1)
    rng = np.random.default_rng(seed)
    sampler = None
    if setup.model.is_moe and setup.skew != "balanced":
        sampler = pricing.step_sampler(setup.model, setup.deployment, setup.skew, setup.moe_tokens(mb_tokens) * R,
                                       seed=seed)
    env = simpy.Environment()
    spans: list | None = [] if record else None
    times = np.empty(steps)
    cache: dict = {}

    def driver():
        for s in bar(range(steps), total=steps, desc="layer DES steps", enabled=progress):
            plan = _plan(setup, layers, mb_tokens, context, mbs, head_s, sampler, rng, cache, draw == "layer")
            start = env.now
            yield _run_step(env, plan, R, mbs, spans)
            times[s] = env.now - start

    env.process(driver())
    env.run()
    return DesResult(times, overlap, R, len(layers), tuple(spans or ()))
