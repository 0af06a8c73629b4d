"""The disaggregated search as two phases over pool layouts, run inline or split across workers.

Phase 1 (decode): every decode layout x batch (``disagg.decode_options``), the cheapest per
decode hardware. Phase 2 (prefill): every prefill layout x token budget against each decode
hardware that has a decode pool (the KV transfer runs at the slower NIC of the pair), the
cheapest per (prefill hardware, decode hardware). The pairs are then every allowed combination
(``heterogeneous``), ranked by $/h. Both phases are maps over layout chunks whose results merge
by a minimum, so ``split_search`` runs them on a Dask client (chunks sized to its workers: four
per worker and phase, both phases at once) and gives the inline answer exactly
(tests/test_disagg_sweep.py).
"""
from __future__ import annotations

import time
from collections import Counter

from moesim.planner.disagg import (
    DisaggCandidate, DisaggResult, PoolChoice, PoolMiss, decode_options, pool_layouts, prefill_options,
)
from moesim.planner.pool_cost import PoolCosts


def _cheapest(options: list[PoolChoice]) -> PoolChoice | None:
    return min(options, key=lambda o: (o.usd_per_hour, o.tpot_s or o.ttft_s or 0.0, o.layout.key(), o.batch),
               default=None)


def decode_phase(scenario, model, facts: dict, layouts, costs=None) -> tuple[dict, list]:
    """(cheapest decode PoolChoice per hardware, misses) over ``layouts``."""
    costs = costs or PoolCosts(scenario, model)
    ds = scenario.disaggregated
    batches = ds.decode_batch_per_device or scenario.search.batch_per_device
    best: dict[str, PoolChoice] = {}
    misses: list[PoolMiss] = []
    for lay in layouts:
        opts = decode_options(costs, lay, batches, facts[lay.hardware].usd_per_device_hour,
                              scenario.target_output_tokens_per_s, misses)
        b = _cheapest(opts + ([best[lay.hardware]] if lay.hardware in best else []))
        if b is not None:
            best[lay.hardware] = b
    return best, misses


def prefill_phase(scenario, model, facts: dict, layouts, decode_hardware, costs=None) -> tuple[dict, list]:
    """(cheapest prefill PoolChoice per (prefill hardware, decode hardware), misses) over ``layouts``."""
    best, tagged = _prefill_part(scenario, model, facts, layouts, decode_hardware, costs)
    return best, _dedup(tagged)


def _prefill_part(scenario, model, facts: dict, layouts, decode_hardware, costs=None) -> tuple[dict, list]:
    """``prefill_phase``'s work, each miss tagged with the decode hardware it was found against
    (``[(decode hardware, PoolMiss)]`` in search order: decode hardware outer, layouts inner)."""
    costs = costs or PoolCosts(scenario, model)
    ds = scenario.disaggregated
    best: dict[tuple[str, str], PoolChoice] = {}
    tagged: list[tuple[str, PoolMiss]] = []
    grids: dict = {}
    for dh in decode_hardware:
        for lay in layouts:
            if not ds.heterogeneous and lay.hardware != dh:
                continue
            found: list[PoolMiss] = []
            opts = prefill_options(costs, lay, dh, facts[lay.hardware].usd_per_device_hour, found, grids)
            tagged += [(dh, m) for m in found]
            key = (lay.hardware, dh)
            b = _cheapest(opts + ([best[key]] if key in best else []))
            if b is not None:
                best[key] = b
    return best, tagged


def _dedup(tagged) -> list:
    """The misses of ``tagged`` once each: the same miss against several decode hardware counts once
    (the first found in search order)."""
    misses: dict[tuple, PoolMiss] = {}
    for _, m in tagged:
        misses.setdefault((m.layout, m.batch, m.reason), m)
    return list(misses.values())


def _merge(parts, keyed=False) -> tuple[dict, list]:
    best: dict = {}
    misses: list = []
    for b, m in parts:
        misses += m
        for k, v in b.items():
            cur = best.get(k)
            best[k] = v if cur is None else _cheapest([cur, v])
    return best, misses


def _assemble(scenario, decode_best, prefill_best, misses, invalid, d_layouts, p_layouts, timings) -> DisaggResult:
    ds = scenario.disaggregated
    target = scenario.target_output_tokens_per_s
    pairs = []
    for (ph, dh), pre in prefill_best.items():
        dec = decode_best.get(dh)
        if dec is not None:
            usd = pre.usd_per_hour + dec.usd_per_hour
            pairs.append(DisaggCandidate(pre, dec, usd, usd / (target * 3600.0) * 1e6))
    pairs.sort(key=lambda c: (c.usd_per_hour, c.total_devices, c.key()))
    rejected = Counter(invalid)
    for m in misses:
        rejected[f"{m.role}:{m.reason}"] += 1

    def closest(role):
        return min((m for m in misses if m.role == role), key=lambda m: (m.ratio, m.layout.key(), m.batch), default=None)

    batches = ds.decode_batch_per_device or scenario.search.batch_per_device
    per_p, per_d = Counter(l.hardware for l in p_layouts), Counter(l.hardware for l in d_layouts)
    nb = len(ds.prefill_token_budget_per_rank)
    combos = sum(per_p[a] * nb * per_d[b] * len(batches) for a in per_p for b in per_d if ds.heterogeneous or a == b)
    note = "" if combos else ("no allowed (prefill, decode) hardware pair: heterogeneous = false and the pools "
                              "share no hardware")
    return DisaggResult(tuple(pairs), closest("prefill"), closest("decode"), dict(rejected),
                        len(p_layouts) * nb + len(d_layouts) * len(batches), combos, timings, note=note)


def _layouts(scenario, model):
    ds = scenario.disaggregated
    invalid: Counter = Counter()
    d = pool_layouts(scenario, model, ds.decode_devices_per_replica, ds.decode_hardware or scenario.hardware, invalid)
    p = pool_layouts(scenario, model, ds.prefill_devices_per_replica, ds.prefill_hardware or scenario.hardware,
                     invalid)
    return d, p, invalid


def search(scenario, model, facts: dict, costs: PoolCosts | None = None) -> DisaggResult:
    """The cheapest disaggregated deployments of ``scenario``, inline (module docstring);
    ``facts``: HardwareFacts (prices applied) by hardware; ``costs``: the iteration costs
    (default: the step model's, :class:`PoolCosts`)."""
    t0 = time.perf_counter()
    costs = costs or PoolCosts(scenario, model)
    d_layouts, p_layouts, invalid = _layouts(scenario, model)
    decode_best, d_miss = decode_phase(scenario, model, facts, d_layouts, costs)
    t1 = time.perf_counter()
    prefill_best, p_miss = prefill_phase(scenario, model, facts, p_layouts, sorted(decode_best), costs)
    t2 = time.perf_counter()
    return _assemble(scenario, decode_best, prefill_best, d_miss + p_miss, invalid, d_layouts, p_layouts,
                     {"decode_s": t1 - t0, "prefill_s": t2 - t1})


def _chunks(items: list, n: int) -> list[list]:
    """``items`` (layouts) in ``n`` contiguous chunks of near-equal size (a pool layout's work is
    about the same whatever its size: its batches or budgets, one step-model call each), ordered
    by (EP size, redundancy) so that a chunk mostly holds whole EP groups (the routing engine's
    statistics are per EP size x tokens; a group cut in two computes them twice, ~2 ms each)."""
    items = sorted(items, key=lambda lay: (lay.ep, lay.redundant_experts, lay.key()))
    n = max(1, min(n, len(items)))
    cuts = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def split_search(scenario, model, facts: dict, client, chunks_per_worker: int = 4) -> DisaggResult:
    """``search`` with both phases mapped over layout chunks on a ``dask.distributed.Client``:
    the same answer, rejections and counts as ``search`` (tests/test_disagg_sweep.py).

    How it splits (each choice measured in benchmarks/bench_disagg.py):
    - the scenario, model and prices are scattered to every worker once (``broadcast``), not
      pickled into each task;
    - ``chunks_per_worker`` chunks of near-equal size per worker and phase (default 4): the
      scheduler hands a free worker the next chunk, so one slow chunk no longer idles the others
      (the former 2 chunks per worker, cut by EP group, left one worker up to 2x the other's work);
    - no barrier between the phases: the prefill tasks price every layout against every decode
      hardware that has a decode layout, submitted with the decode tasks; pairs and misses
      against hardware whose decode pool found no option are dropped after both phases, which
      is exactly what ``search`` computes (it prices prefill against ``sorted(decode_best)``).
    Use worker processes (``LocalCluster(processes=True, threads_per_worker=1)``): the search is
    pure Python and numpy on small arrays, so threads share one GIL."""
    t0 = time.perf_counter()
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    d_layouts, p_layouts, invalid = _layouts(scenario, model)
    shared = client.scatter([scenario, model, facts], broadcast=True)
    sc, mo, fa = shared
    d_chunks = _chunks(d_layouts, workers * chunks_per_worker)
    p_chunks = _chunks(p_layouts, workers * chunks_per_worker)
    hws = sorted({lay.hardware for lay in d_layouts})
    d_futs = [client.submit(decode_phase, sc, mo, fa, ch, pure=False) for ch in d_chunks]
    p_futs = [client.submit(_prefill_part, sc, mo, fa, ch, hws, pure=False) for ch in p_chunks]
    decode_best, d_miss = _merge(client.gather(d_futs))
    t1 = time.perf_counter()
    have = set(decode_best)
    prefill_best: dict = {}
    tagged: list = []
    for best, part in client.gather(p_futs):
        for k, v in best.items():
            if k[1] in have:
                cur = prefill_best.get(k)
                prefill_best[k] = v if cur is None else _cheapest([cur, v])
        tagged += [(dh, m) for dh, m in part if dh in have]
    p_miss = _dedup(tagged)
    t2 = time.perf_counter()
    return _assemble(scenario, decode_best, prefill_best, d_miss + p_miss, invalid, d_layouts, p_layouts,
                     {"decode_s": t1 - t0, "prefill_s": t2 - t1, "workers": workers,
                      "chunks": len(d_chunks) + len(p_chunks)})
