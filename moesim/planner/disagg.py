"""Prefill/decode-disaggregated serving: each pool sized on its own, the KV transfer priced.

Units: tokens, seconds, $/h. lambda = target output tokens/s / L requests/s; P prompt and L output
tokens (means); h the prefix-cache hit rate, P_new = ceil(P (1 - h)) the prompt tokens prefilled;
q = SLO percentile / 100; E the tokens one decode step emits (1, or speculative decoding's
expected accepted + 1: moesim/specs/serving_features.py). Iteration times come from ONE seam,
:mod:`moesim.planner.pool_cost`.

Decode pool (layout of n devices, b sequences per device, context C = the in-flight mean
``inflight_context``): step t = ``decode_step_s(b, C)`` under the overlap chosen at (b, C)
(``PoolCosts.decode_overlap``, the co-located rule; ``PoolChoice.overlap``, which the DES runs);
TPOT = t / E; one replica emits b n E / t tokens/s; it fits when b n C <= the replica's KV capacity (serving memory fraction);
R_d = ceil(target / (b n E / t)).

Prefill pool (layout of n devices with ``ranks`` attention ranks; token budget B_r new tokens per
rank and iteration, so the replica budget is B = B_r ranks new tokens, B P / P_new prompt
tokens): an iteration carrying x prompt tokens takes G(x) (the replica's GridCost of
``prefill_s`` at x P_new / (P n) new tokens per device: the same cost the DES runs). With R_p
replicas the prompt tokens arrive at a = lambda P / R_p per replica; under continuous batching
the iteration length settles where it carries what arrived during the previous one:
    T* = G(min(B', max(P, a T*)))   (fixed point; B' = B P / P_new)
    TTFT_q = max(q T*, W_q) + ceil(P / B') T* + KV transfer
(an arrival waits U(0, T*) for the running iteration, or, near capacity, W_q: the G/G/1
heavy-traffic wait of the prompt work at the full-budget capacity B' / G(B') (``queue_wait_s``,
lognormal prompt sizes raising it by their variance); then its ceil(P / B') chunks run).
The pool is stable when a T* <= B' and a G(B') / B' <= ``prefill_max_utilization``.
R_p is the smallest count meeting the TTFT limit (TTFT falls as R_p grows: binary search).

KV transfer (moesim/des/serving/deployment.py ``kv_transfer``: the prefill replica's scale-out
NICs, ``devices / tp`` links of ``tp`` NICs each; a heterogeneous pair runs at the slower side's
NIC): per request latency + P x KV bytes per token / link bandwidth, added to TTFT; the links of
a replica must carry lambda / R_p x P x KV bytes per token within their bandwidth.

The pools are independent given the workload (TTFT is the prefill pool's and the transfer's,
TPOT the decode pool's), so the cheapest pair is the cheapest prefill pool per (prefill hardware,
decode hardware) plus the cheapest decode pool per decode hardware: the search
(:mod:`moesim.planner.disagg_sweep`) evaluates prefill + decode configurations and screens
their product.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from moesim.errors import MoesimError
from moesim.planner.pool_cost import PoolCosts, PoolLayout
from moesim.specs.parallel import check_parallelism, smallest_redundancy
from moesim.specs.serving_features import inflight_context_tokens, new_prompt_tokens, prefill_context


@dataclass(frozen=True)
class PoolChoice:
    """The cheapest configuration of one pool: layout, batch, replicas and what they give."""

    role: str
    layout: PoolLayout
    batch: int  # decode: sequences per device; prefill: new-token budget per attention rank
    replicas: int
    usd_per_hour: float
    step_s: float  # decode: one step; prefill: the iteration T* at the planned load
    tokens_per_s_per_replica: float  # decode: output tokens/s; prefill: prompt tokens/s at capacity
    tpot_s: float | None = None
    ttft_s: float | None = None
    transfer_s: float | None = None
    utilization: float | None = None
    bottleneck: str = ""
    imbalance: float = 1.0
    overlap: str = ""  # decode: the decode overlap chosen at this batch (PoolCosts.decode_overlap)

    @property
    def devices(self) -> int:
        return self.replicas * self.layout.devices

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layout"] = asdict(self.layout)
        d["devices"] = self.devices
        return d


@dataclass(frozen=True)
class PoolMiss:
    """A pool configuration set aside, how far from acceptable (ratio >= 1) and why."""

    role: str
    layout: PoolLayout
    batch: int
    reason: str
    detail: str
    ratio: float

    def text(self) -> str:
        unit = "sequences/device" if self.role == "decode" else "tokens/rank"
        return f"{self.role} {self.layout.describe()} batch {self.batch} {unit} {self.reason.replace('_', ' ')}: {self.detail}"


@dataclass(frozen=True)
class DisaggCandidate:
    """One disaggregated deployment: a prefill pool and a decode pool."""

    prefill: PoolChoice
    decode: PoolChoice
    usd_per_hour: float
    usd_per_million_tokens: float

    @property
    def total_devices(self) -> int:
        return self.prefill.devices + self.decode.devices

    @property
    def heterogeneous(self) -> bool:
        return self.prefill.layout.hardware != self.decode.layout.hardware

    def key(self) -> str:
        return f"P[{self.prefill.layout.key()}|b{self.prefill.batch}]+D[{self.decode.layout.key()}|b{self.decode.batch}]"

    def describe(self) -> str:
        p, d = self.prefill, self.decode
        return (f"prefill {p.replicas} x {p.layout.describe()} (budget {p.batch} tok/rank) + decode {d.replicas} x "
                f"{d.layout.describe()} (batch {d.batch}/device)")

    def to_dict(self) -> dict:
        return {"key": self.key(), "prefill": self.prefill.to_dict(), "decode": self.decode.to_dict(),
                "usd_per_hour": self.usd_per_hour, "usd_per_million_tokens": self.usd_per_million_tokens,
                "total_devices": self.total_devices, "heterogeneous": self.heterogeneous,
                "prefill_to_decode_devices": self.prefill.devices / self.decode.devices}


@dataclass(frozen=True)
class DisaggResult:
    """The disaggregated search: ranked pairs (cheapest first), misses, sizes and timings."""

    ranked: tuple[DisaggCandidate, ...]
    closest_prefill: PoolMiss | None
    closest_decode: PoolMiss | None
    rejected: dict
    pool_configurations: int
    configurations: int
    timings_s: dict = field(default_factory=dict)
    verification: object | None = None  # the answer's DES check (the cheapest verified pair)
    note: str = ""
    verifications: tuple = ()  # every pair the DES checked

    @property
    def best(self) -> DisaggCandidate | None:
        """The cheapest pair by the analytic stage."""
        return self.ranked[0] if self.ranked else None

    @property
    def answer(self) -> DisaggCandidate | None:
        """The pair the verification chose (the cheapest verified), else the analytic best."""
        v = self.verification
        if v is not None:
            for c in self.ranked:
                if c.key() == v.candidate_key:
                    return c
        return self.best

    def lacks(self) -> str:
        """What the closest prefill and decode configurations lack (no pair met the SLO)."""
        parts = [m.text() for m in (self.closest_prefill, self.closest_decode) if m is not None]
        return "; ".join(parts + ([self.note] if self.note else [])) or "no pool configuration could be evaluated"

    def to_dict(self, top: int = 10) -> dict:
        return {"ranked": [c.to_dict() for c in self.ranked[:top]],
                "closest_prefill": _miss_dict(self.closest_prefill), "closest_decode": _miss_dict(self.closest_decode),
                "rejected": dict(self.rejected), "pool_configurations": self.pool_configurations,
                "configurations": self.configurations, "timings_s": self.timings_s,
                "verification": self.verification.to_dict() if self.verification is not None else None,
                "verifications": [v.to_dict() for v in self.verifications]}


def _miss_dict(m: PoolMiss | None) -> dict | None:
    return None if m is None else {"role": m.role, "layout": asdict(m.layout), "batch": m.batch, "reason": m.reason,
                                   "detail": m.detail, "ratio": m.ratio}


# ---- the space ----------------------------------------------------------------------------------
def pool_layouts(scenario, model, devices: tuple[int, ...], hardware: tuple[str, ...], invalid: Counter):
    """Every (hardware, devices, attention layout, MoE layout, redundant slots) layout of one pool (pp 1)."""
    from moesim.catalog import load_profile
    from moesim.comm.topology import build_topology
    from moesim.planner.space import serving_layouts
    from moesim.specs import Cluster, check_cluster

    s, ds = scenario.search, scenario.disaggregated
    grid = type("Grid", (), {"pp": (1,), "attention_layouts": s.attention_layouts, "tp": s.tp,
                             "moe_layouts": s.moe_layouts})
    out = []
    for hw in hardware:
        for n in devices:
            if n > scenario.max_devices:
                continue
            for tp, _pp, _dp, ep, att, etp in serving_layouts(model, n, grid):
                slots = (0,) if model.moe is None or ep == 1 else ds.redundant_slots_per_rank
                for extra in slots:
                    r = (smallest_redundancy(model.moe.num_experts, ep) + extra * ep) if model.moe and ep > 1 else 0
                    layout = PoolLayout(hw, n, tp, ep, att, r, etp)
                    try:
                        check_parallelism(model, layout.candidate().parallelism())
                        prof = load_profile(hw)
                        check_cluster(Cluster(hardware=hw, devices=n), prof)
                        build_topology(prof, n, min(prof.scale_up.domain_size, n))  # a NIC beyond one domain
                    except MoesimError:
                        invalid["invalid_layout"] += 1
                        continue
                    out.append(layout)
    return out


# ---- decode pool --------------------------------------------------------------------------------
def decode_options(costs: PoolCosts, layout: PoolLayout, batches, price: float, target: float,
                   misses: list) -> list[PoolChoice]:
    """Every batch of ``layout`` that meets the TPOT limit and fits, sized to ``target`` tokens/s."""
    sc = costs.scenario
    ctx = inflight_context_tokens(sc.workload)
    try:
        cap = costs.kv_capacity(layout)
    except MoesimError as err:
        misses.append(PoolMiss("decode", layout, batches[0], "does_not_fit", str(err), math.inf))
        return []
    limit, e = sc.slo.tpot_s, costs.tokens_per_step()
    costs.prefetch_decode(layout, [b for b in batches if b * layout.devices * ctx <= cap], ctx)
    out = []
    for b in batches:
        need = b * layout.devices * ctx
        if need > cap:
            misses.append(PoolMiss("decode", layout, b, "does_not_fit", f"KV of {need:,} tokens > capacity "
                                   f"{cap:,} tokens per replica", 1.0 + need / cap * 1e-3))
            continue
        t = costs.decode_step_s(layout, b, ctx)
        tpot = t / e
        if limit is not None and tpot > limit:
            misses.append(PoolMiss("decode", layout, b, "misses_slo_tpot",
                                   f"TPOT {tpot * 1e3:.1f} ms > {limit * 1e3:g} ms", tpot / limit))
            continue
        rate = b * layout.devices * e / t
        reps = math.ceil(target / rate - 1e-9)
        if reps * layout.devices > sc.max_devices:
            misses.append(PoolMiss("decode", layout, b, "over_max_devices", f"needs {reps * layout.devices} "
                                   f"devices > max_devices {sc.max_devices}", reps * layout.devices / sc.max_devices))
            continue
        neck, imb = costs.decode_info(layout, b, ctx)
        out.append(PoolChoice("decode", layout, b, reps, reps * layout.devices * price, t, rate, tpot_s=tpot,
                              bottleneck=neck, imbalance=imb, overlap=costs.decode_overlap(layout, b, ctx)))
    return out


# ---- prefill pool -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    """KV transfer links of one prefill replica: per-link bandwidth (B/s), latency (s), links."""

    bandwidth_Bps: float
    latency_s: float
    links: int

    def seconds(self, tokens: float, bytes_per_token: float) -> float:
        return self.latency_s + tokens * bytes_per_token / self.bandwidth_Bps


def transfer_links(prefill: PoolLayout, decode_hardware: str) -> Transfer:
    """``kv_transfer`` of the prefill replica; a heterogeneous pair at the slower side's NIC."""
    from moesim.catalog import load_profile
    from moesim.comm.topology import build_topology
    from moesim.des.serving.deployment import kv_transfer
    from moesim.specs import Deployment

    hw = load_profile(prefill.hardware)
    tr = kv_transfer(Deployment(hardware=hw, devices=prefill.devices, tp=prefill.tp, dp=prefill.devices // prefill.tp,
                                ep=prefill.ep, etp=prefill.etp, attention_layout=prefill.attention_layout,
                                redundant_experts=prefill.redundant_experts))
    bw = tr.bandwidth_Bps
    if decode_hardware != prefill.hardware:
        other = load_profile(decode_hardware)
        if other.scale_out is None:
            from moesim.errors import SpecError

            raise SpecError("hardware.scale_out", other.name, "disaggregated serving needs a scale-out NIC")
        topo = build_topology(other, 1, 1)
        bw = min(bw, topo.scale_out_Bps * prefill.tp)
    return Transfer(bw, tr.latency_s, tr.links)


def prefill_grid(costs: PoolCosts, layout: PoolLayout, decode_overlap: str | None = None):
    """The replica's GridCost over prompt tokens (cached tokens are not recomputed); its decode
    nodes under ``decode_overlap`` (a decode pool's, chosen at its planned batch; None: the mode
    ``PoolCosts.decode_overlap`` chooses at each node's batch)."""
    from moesim.compute.memory import kv_bytes_per_token
    from moesim.des.serving.cost import GridCost
    from moesim.specs import Parallelism

    sc = costs.scenario
    w, h = sc.workload, sc.features.prefix_cache_hit_rate
    share = new_prompt_tokens(w.prompt_len, h) / w.prompt_len
    ctx = prefill_context(w.prompt_len, h)

    def prefill_fn(tokens: int) -> float:
        return costs.prefill_s(layout, tokens * share / layout.devices, ctx)

    def decode_fn(batch: int, context: float) -> float:
        return costs.decode_step_s(layout, batch / layout.devices, math.ceil(context),
                                   decode_overlap) / costs.tokens_per_step()

    return GridCost(prefill_fn=prefill_fn, decode_fn=decode_fn, kv_capacity_tokens=costs.kv_capacity(layout),
                    kv_bytes_per_token=kv_bytes_per_token(costs.model, Parallelism(), w.kv_dtype),
                    devices=layout.devices, points_per_octave=1)


def settle(grid, budget: float, prompt: int, arrival: float, iterations: int = 60) -> float:
    """T* = G(min(budget, max(prompt, arrival T*))) by fixed-point iteration (module docstring)."""
    t = grid.prefill_time_s(max(1, round(min(budget, prompt))))
    for _ in range(iterations):
        nxt = grid.prefill_time_s(max(1, round(min(budget, max(prompt, arrival * t)))))
        if abs(nxt - t) <= 1e-9 * max(t, 1e-12):
            return nxt
        t = nxt
    return t


def queue_wait_s(arrival: float, capacity: float, mean_prompt: float, scv: float, q: float) -> float:
    """Waiting time at percentile q of prompt work in a G/G/1 queue at the pool's full-budget
    capacity (Kingman's heavy-traffic approximation, J. F. C. Kingman 1961, "The single server queue
    in heavy traffic"): mean W = rho / (1 - rho) x (1 + c_s^2) / 2 x E[P] / capacity, Poisson arrivals
    (c_a = 1), and the heavy-traffic exponential tail P(W > t) = rho exp(-t rho / W), so
    W_q = (W / rho) ln(rho / (1 - q)) for rho > 1 - q (else 0). Units: tokens/s, tokens, seconds."""
    rho = arrival / capacity
    if rho >= 1.0:
        return math.inf
    if rho <= 1.0 - q:
        return 0.0
    mean = rho / (1.0 - rho) * (1.0 + scv) / 2.0 * mean_prompt / capacity
    return mean / rho * math.log(rho / (1.0 - q))


def prefill_ttft(grid, budget: float, prompt: int, arrival: float, q: float, transfer_s: float,
                 capacity: float = math.inf, scv: float = 0.0) -> tuple[float, float]:
    """(TTFT at percentile q, T*) of a prefill replica at ``arrival`` prompt tokens/s: the wait is the
    larger of the running iteration's remainder (q T*) and the queue's (``queue_wait_s``: what
    backs up when the load nears the full-budget ``capacity``; ``scv`` the prompt sizes' squared
    coefficient of variation), then the prompt's ceil(P / B') iterations and the KV transfer."""
    t = settle(grid, budget, prompt, arrival)
    wait = max(q * t, queue_wait_s(arrival, capacity, prompt, scv, q))
    return wait + math.ceil(prompt / budget - 1e-9) * t + transfer_s, t


def prefill_options(costs: PoolCosts, layout: PoolLayout, decode_hardware: str, price: float, misses: list,
                    grids: dict) -> list[PoolChoice]:
    """The fewest replicas of ``layout`` meeting the TTFT limit, at each token budget."""
    from moesim.compute.memory import kv_bytes_per_token
    from moesim.specs import Parallelism

    sc = costs.scenario
    w, ds = sc.workload, sc.disaggregated
    P, h = w.prompt_len, sc.features.prefix_cache_hit_rate
    lam = sc.target_output_tokens_per_s / w.output_len
    q, limit = sc.slo.percentile / 100.0, sc.slo.ttft_s
    b0 = ds.prefill_token_budget_per_rank[0]
    try:
        if layout not in grids:
            grids[layout] = prefill_grid(costs, layout)
        grid = grids[layout]
        links = transfer_links(layout, decode_hardware)
    except MoesimError as err:
        misses.append(PoolMiss("prefill", layout, b0, "does_not_fit", str(err), math.inf))
        return []
    kvb = kv_bytes_per_token(costs.model, Parallelism(), w.kv_dtype)
    xfer = links.seconds(P, kvb)
    share = new_prompt_tokens(P, h) / P
    scv = math.exp(w.length_sigma ** 2) - 1.0 if w.length_distribution == "lognormal" else 0.0
    r_max = max(1, sc.max_devices // layout.devices)
    out = []
    for br in ds.prefill_token_budget_per_rank:
        budget = br * layout.attention_ranks / share  # prompt tokens per iteration (cached ones are free)
        if budget + P > grid.kv_capacity_tokens:
            misses.append(PoolMiss("prefill", layout, br, "does_not_fit", f"an iteration's KV ({budget + P:,.0f} "
                                   f"tokens) exceeds the replica's {grid.kv_capacity_tokens:,} tokens", 1.0 + 1e-3))
            continue
        cap_rate = budget / grid.prefill_time_s(max(1, round(budget)))  # prompt tokens/s per replica
        r_lo = max(1, math.ceil(lam * P / (cap_rate * ds.prefill_max_utilization) - 1e-9),
                   math.ceil(lam * P * kvb / (links.bandwidth_Bps * links.links) - 1e-9))

        def ttft(r: int) -> float:
            return prefill_ttft(grid, budget, P, lam * P / r, q, xfer, cap_rate, scv)[0]

        if r_lo > r_max:
            misses.append(PoolMiss("prefill", layout, br, "over_max_devices", f"needs {r_lo * layout.devices} "
                                   f"devices > max_devices {sc.max_devices}", r_lo / r_max))
            continue
        if limit is not None and ttft(r_max) > limit:
            best = ttft(r_max)
            misses.append(PoolMiss("prefill", layout, br, "misses_slo_ttft", f"TTFT {best * 1e3:.0f} ms > "
                                   f"{limit * 1e3:g} ms (KV transfer {xfer * 1e3:.1f} ms)", best / limit))
            continue
        lo, hi = r_lo, r_max  # smallest r in [lo, hi] with ttft(r) <= limit (ttft falls with r)
        if limit is not None:
            while lo < hi:
                mid = (lo + hi) // 2
                if ttft(mid) <= limit:
                    hi = mid
                else:
                    lo = mid + 1
        r = lo
        t_ttft, t_star = prefill_ttft(grid, budget, P, lam * P / r, q, xfer, cap_rate, scv)
        out.append(PoolChoice("prefill", layout, br, r, r * layout.devices * price, t_star, cap_rate,
                              ttft_s=t_ttft, transfer_s=xfer, utilization=lam * P / r / cap_rate))
    return out
