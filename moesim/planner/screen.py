"""Screening stage of a serving plan: cheap, documented LOWER BOUNDS that set aside the
candidates that cannot rank near the top, so the exact evaluator (:mod:`moesim.planner.analytic`)
runs only on the layouts that might. Nothing screened is reported as a result: every ranked
number comes from the exact path.

Per (hardware, layout) -- units: seconds, tokens, $/h; b batch per device, S = b x devices / pp
sequences per replica, q = SLO percentile / 100:
- memory: the analytic stage's own rule (exact): weights + b x tp x pp x C x KV bytes per token
  within HBM, C = prompt_len + output_len // 2;
- decode step t_d(b): the exact step model (``moesim.step.estimate`` of the candidate's
  deployment, capacity factor included: one layer-model call per layer kind and node, under
  the overlap the exact path picks per batch, ``serving_policy.decode_steps``; the min of two
  steps growing with the batch grows with it too, so the bounds below still hold) at a few
  fitting batches, the nodes
  (``decode_nodes``: the largest, then the smallest, then log-evenly spaced ones). Bounds, not
  interpolation: the step grows with the batch, so t_d(b) >= t_d(node <= b) (``node_bound``;
  0 below the first node), and the per-device decode rate b / t_d(b) grows with the batch, so
  b / t_d(b) <= the best node rate at or above b (``rate_bound``). Measured over the large
  space (benchmarks/bench_planner.py ``screen_error``, 95 layouts, 771 batches): the step fell
  with the batch once, by 1.5% (one TPU layout, b 512 vs 256); the rate never. The piecewise
  linear interpolation ``decode_s`` (kept for display) is off by up to 42% with 3 nodes there
  (all-to-all mode switch, tile steps), which is why it is not what prunes;
- the mixed iteration T_mix (a prefill pass over n P + S tokens, plus decode attention) takes
  at least the host issue time H of one eager prefill pass, H = the layers' ``layer_host_s``
  / pp (schedule.py eq. 1: no operation ends before the host issued it, and the host issues
  every operator once per micro-batch), and at least t_d (checked over the default space in
  tests/test_planner_screen.py). With K <= k_max (``serving_policy.max_steps``) decode steps
  per prefill, serving_policy's closed form gives
      TPOT >= TPOT_lb = (T_lb + (k_max - 1) t_lb) / k_max,   T_lb = max(H, t_lb)
      K >= K_lb = ceil((T_lb - t_lb) / (limit - t_lb))  (the smallest K meeting the TPOT limit)
      TTFT >= q (T_lb + (K_lb - 1) t_lb) + T_lb
      out tokens/s per replica = S / TPOT <= min(S / TPOT_lb, (S / b) x rate_ub)
      usd_per_hour_lb = ceil(target / that) x devices x price,
  with t_lb = node_bound x (1 - MARGIN), rate_ub = rate_bound / (1 - MARGIN);
- set aside (``screened_out``): TPOT_lb or TTFT_lb over the SLO, or the lower-bound devices over
  ``max_devices``. Everything else is kept with its lower-bound cost (drops are not screened:
  the exact stage finds them).
``MARGIN`` (3%) is twice the largest measured fall of the step with the batch (1.5%).

The plan (``plan(screen=True)``, moesim/planner/plan.py) screens every candidate with ONE node
per layout (its largest fitting batch: the rate bound for the whole layout), then takes layouts
best-first by lower bound: a layout popped for the first time is re-screened with ``NODES``
nodes (tighter bounds, ~10 ms) and pushed back; popped again, it is evaluated exactly. A layout
is dropped once its bound exceeds both the ``keep``-th cheapest exact cost found so far and the
cheapest exact cost found for its hardware: the ``keep`` cheapest ranked deployments and every
hardware's cheapest are then the exact path's own (identical; test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim import units
from moesim.catalog import load_profile
from moesim.planner import serving_policy
from moesim.planner.evaluation import Candidate, Evaluation

NODES = 3  # decode nodes per layout when a layout is re-screened (plan.SCREEN_NODES for the first pass)
MARGIN = 0.03  # 2 x the measured largest shortfall of the node bound (module docstring; benchmark)


@dataclass(frozen=True)
class Screened:
    """One candidate after screening: ``decode_s`` the interpolated decode step (None when it does
    not fit), ``usd_per_hour_lb`` the lower-bound cost (inf when set aside), ``tpot_lb_s`` /
    ``ttft_lb_s`` the latency lower bounds (module docstring)."""

    candidate: Candidate
    fits: bool
    headroom_GiB: float
    decode_s: float | None
    usd_per_hour_lb: float
    reason: str | None = None
    detail: str = ""
    tpot_lb_s: float | None = None
    ttft_lb_s: float | None = None

    def evaluation(self) -> Evaluation:
        """The rejection the plan reports for a candidate it does not evaluate exactly."""
        ev = Evaluation(candidate=self.candidate, memory_headroom_GiB=self.headroom_GiB)
        return ev.rejected(self.reason or "screened_out", self.detail)


def _layout_key(c: Candidate) -> tuple:
    """A deployment of the screen: layout and capacity factor (capacity changes the step)."""
    return (c.hardware, c.devices, c.tp, c.pp, c.dp, c.ep, c.etp, c.attention_layout, c.redundant_experts, c.capacity_factor)


def decode_nodes(batches: list[int], n: int | None = None) -> list[int]:
    """``n`` (default ``NODES``) batches of a sorted list: the last alone when ``n`` is 1, else the
    first, the last, and between them the ones nearest log-evenly spaced targets (fewer when they
    coincide)."""
    n = NODES if n is None else n
    if len(batches) <= n:
        return list(batches)
    if n == 1:
        return [batches[-1]]
    lo, hi = math.log(batches[0]), math.log(batches[-1])
    targets = [lo + (hi - lo) * j / (n - 1) for j in range(n)]
    return sorted({min(batches, key=lambda b: abs(math.log(b) - t)) for t in targets})


def interpolate(nodes: list[int], times: np.ndarray, batches) -> np.ndarray:
    """Piecewise linear in the batch between the nodes (exact at the nodes)."""
    return np.interp(np.asarray(batches, dtype=float), np.asarray(nodes, dtype=float), np.asarray(times))


def node_bound(nodes: list[int], times: np.ndarray, batches) -> np.ndarray:
    """The decode step at the largest node <= each batch, 0 below the first node (a lower bound
    where the step grows with the batch; module docstring)."""
    j = np.searchsorted(np.asarray(nodes, dtype=float), np.asarray(batches, dtype=float), side="right") - 1
    return np.where(j >= 0, np.asarray(times)[np.clip(j, 0, len(nodes) - 1)], 0.0)


def rate_bound(nodes: list[int], times: np.ndarray, batches) -> np.ndarray:
    """Upper bound of decode sequences-steps per second per device, b / t_d(b): the best of the
    nodes >= b (b / t_d grows with the batch; module docstring), and b / node_bound."""
    n_N, t_N = np.asarray(nodes, dtype=float), np.asarray(times, dtype=float)
    ahead = np.maximum.accumulate((n_N / t_N)[::-1])[::-1]  # best rate at or above each node
    b = np.asarray(batches, dtype=float)
    j = np.searchsorted(n_N, b, side="left")  # first node >= b
    above = np.where(j < n_N.size, ahead[np.clip(j, 0, n_N.size - 1)], np.inf)
    below = node_bound(nodes, times, batches)
    with np.errstate(divide="ignore"):
        direct = np.where(below > 0, b / np.where(below > 0, below, 1.0), np.inf)
    return np.minimum(above, direct)


def screen(candidates, scenario, model, facts: dict, margin: float = MARGIN, nodes: int | None = None,
           cache=None) -> list[Screened]:
    """Screen serving ``candidates`` (module docstring) with ``nodes`` decode nodes per layout
    (default ``NODES``); results in candidate order. ``cache``: the evaluator's ``PlanCache``."""
    from dataclasses import replace

    from moesim.planner.costs import PlanCache

    cache = PlanCache() if cache is None else cache
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(_layout_key(c), []).append(i)
    layouts, hosts = [], {}
    for idx in groups.values():
        c0 = candidates[idx[0]]
        hw = load_profile(c0.hardware)
        dep = cache.deployment(c0, scenario, model)
        mem = serving_policy.serving_memory(c0, scenario, model, cache)  # the engine's share, as the evaluator
        fitting = sorted({candidates[i].batch for i in idx if mem.fits(candidates[i].batch)})
        picked = decode_nodes(fitting, nodes)
        if (hw.name, c0.pp, dep.stack) not in hosts:
            hosts[hw.name, c0.pp, dep.stack] = _host_s(model, hw, c0.pp, dep.stack)
        t_nodes = None
        if picked:  # the exact path's decode steps (serving_policy.decode_steps: each batch's overlap)
            chosen = serving_policy.decode_steps([replace(c0, batch=b) for b in picked], scenario, model, cache)
            t_nodes = np.array([chosen[b][1].step_time_s for b in picked])
        layouts.append((idx, mem, picked, hosts[hw.name, c0.pp, dep.stack], t_nodes))
    out: list[Screened | None] = [None] * len(candidates)
    for idx, mem, picked, host, t_nodes in layouts:
        per_batch = {}  # decode estimate and bounds of each fitting batch (all at once)
        if picked:
            b_B = sorted({candidates[i].batch for i in idx})
            est = zip(interpolate(picked, t_nodes, b_B), node_bound(picked, t_nodes, b_B) * (1.0 - margin),
                      rate_bound(picked, t_nodes, b_B) / (1.0 - margin))
            per_batch = dict(zip(b_B, est))
        by_batch: dict[int, Screened] = {}  # one deployment: candidates differ by batch alone
        for i in idx:
            c = candidates[i]
            hit = by_batch.get(c.batch)
            if hit is None:
                hit = by_batch[c.batch] = _judge(c, scenario, facts, mem, per_batch.get(c.batch), host)
            out[i] = hit if hit.candidate is c else Screened(c, *_rest(hit))
    return out


def _rest(s: Screened) -> tuple:
    """The fields after ``candidate`` (a shallow, fast ``dataclasses.replace`` for one field)."""
    return (s.fits, s.headroom_GiB, s.decode_s, s.usd_per_hour_lb, s.reason, s.detail, s.tpot_lb_s, s.ttft_lb_s)


def _host_s(model, hw, pp: int, stack: str = "auto") -> float:
    """H: host issue time of one prefill pass of the lightest pipeline stage's share under the
    deployment's software ``stack`` (s; 0 when the stack replays prefill from a graph)."""
    from moesim.step.host import layer_host_s

    return sum(layer_host_s(hw, model, model.layer_is_moe(i), "prefill", stack=stack)
               for i in range(model.num_layers)) / pp


def _latency_bounds(c: Candidate, scenario, t_lb: float, host: float) -> tuple[float, float]:
    """(TPOT_lb, TTFT_lb) of the module docstring (seconds); under the TensorRT-LLM scheduler,
    whose K is the engine's (not bounded by k_max), the decode-step floor t_lb for both."""
    if serving_policy.engine(scenario) == "trtllm":
        return t_lb, t_lb
    k_max = serving_policy.max_steps(c, scenario)
    t_mix = max(host, t_lb)
    tpot = (t_mix + (k_max - 1) * t_lb) / k_max
    limit = scenario.slo.tpot_s
    k = 1
    if limit is not None and t_mix > limit and limit > t_lb:
        k = min(k_max, max(1, math.ceil((t_mix - t_lb) / (limit - t_lb) - 1e-9)))
    elif limit is not None and t_mix > limit:
        k = k_max
    q = scenario.slo.percentile / 100.0
    return tpot, q * (t_mix + (k - 1) * t_lb) + t_mix


def _judge(c: Candidate, scenario, facts, mem, decode, host: float) -> Screened:
    """One candidate's verdict; ``mem``: its layout's ``serving_policy.ServingMemory``; ``decode``:
    (interpolated t_d, t_lb, rate_ub) of its batch."""
    headroom = (mem.budget_bytes - mem.used_bytes(c.batch)) / units.GiB
    if not mem.fits(c.batch):
        return Screened(c, False, headroom, None, math.inf, "does_not_fit", mem.shortfall_reason(c.batch))
    t_d, t_lb, rate_ub = (float(x) for x in decode)
    tpot_lb, ttft_lb = _latency_bounds(c, scenario, t_lb, host)
    slo, lat = scenario.slo, dict(tpot_lb_s=tpot_lb, ttft_lb_s=ttft_lb)
    if slo.tpot_s is not None and tpot_lb > slo.tpot_s:
        return Screened(c, True, headroom, t_d, math.inf, "screened_out",
                        f"screening: TPOT >= {tpot_lb * 1e3:.1f} ms > {slo.tpot_s * 1e3:g} ms", **lat)
    if slo.ttft_s is not None and ttft_lb > slo.ttft_s:
        return Screened(c, True, headroom, t_d, math.inf, "screened_out",
                        f"screening: TTFT >= {ttft_lb * 1e3:.0f} ms > {slo.ttft_s * 1e3:g} ms", **lat)
    # out tokens/s <= S / TPOT <= S / t_d(b) and <= S / TPOT_lb (module docstring)
    per_replica = min(rate_ub * c.devices / c.pp,
                      serving_policy.planned_seqs(c) / tpot_lb if tpot_lb > 0 else math.inf)
    replicas = max(1, math.ceil(scenario.target_output_tokens_per_s / per_replica - 1e-9))
    if replicas * c.devices > scenario.max_devices:
        return Screened(c, True, headroom, t_d, math.inf, "screened_out",
                        f"screening: needs >= {replicas * c.devices} devices > max_devices {scenario.max_devices}",
                        **lat)
    usd = replicas * c.devices * facts[c.hardware].usd_per_device_hour
    return Screened(c, True, headroom, t_d, usd, **lat)


def layout_order(screened: list[Screened]) -> list[tuple[float, str, list[int]]]:
    """(cheapest lower bound, hardware, candidate indices) of each layout with a kept candidate,
    cheapest first."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(screened):
        groups.setdefault(_layout_key(s.candidate), []).append(i)
    rows = []
    for key, idx in groups.items():
        lb = min(screened[i].usd_per_hour_lb for i in idx)
        if math.isfinite(lb):
            rows.append((lb, key[0], idx))
    return sorted(rows, key=lambda r: (r[0], r[1], r[2][0]))
