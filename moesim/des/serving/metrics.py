"""Serving metrics from one run: latency percentiles with confidence intervals, throughput,
goodput under an SLO, Little's-law terms, KV utilization and queue length over time.

Per request (arrival a, first token f, finish e, output tokens O):
TTFT = f - a; TPOT = (e - f) / (O - 1) (undefined for O = 1); end-to-end = e - a.
Statistics use the requests that arrived in the window [w0, w1], in arrival order.

Confidence intervals: **batch means**. The window's completed requests, in arrival order, are
cut into k contiguous batches (k = 20 by default); the statistic (mean or percentile) is computed
per batch, and the 95% half-width is t(0.975, k-1) x sd(batch statistics) / sqrt(k). Adjacent
requests are correlated (they share queues); batches of thousands of requests are nearly
independent, which is what the t-interval assumes. Fewer than 2k samples: no interval (None).

Backlog (``backlog``): the mean number of requests waiting to decode (arrived, not rejected, not
yet decoding: co-located, waiting for their first token; disaggregated, also for a decode
replica to admit them after their prefill and KV transfer), time-averaged over the window's
second quarter and over its last quarter, and their difference ``growth``. A system that keeps
up with its arrivals has a stationary backlog (growth near 0, within the arrivals' Poisson
noise); an overloaded one gains (1 - mu / lambda) of every arrival, so growth ~ (1 - mu /
lambda) x ``arrivals_between`` (the window's arrivals over the half window separating the two
quarters' midpoints). A finite window can meet a loose TTFT limit while its queue grows without
bound; the growth says so.

Goodput: requests per second (over the window) that finished and met every limit of the SLO;
``attainment`` is their fraction of the window's arrivals (unfinished and rejected requests miss).
``slo_met``: for each limit given, that metric's SLO percentile over the window's arrivals
(unfinished requests counted as infinitely late) is within the limit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from moesim.specs import SLO


def _clean(obj):
    """NaN/inf -> None, numpy scalars -> Python, recursively (JSON without NaN)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@dataclass(frozen=True)
class LatencyStats:
    """Mean and p50/p90/p99 of one latency (seconds) with 95% batch-means half-widths."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    mean_ci95: float
    p50_ci95: float
    p90_ci95: float
    p99_ci95: float

    def percentile(self, q: float) -> float:
        return {50.0: self.p50, 90.0: self.p90, 99.0: self.p99}[float(q)]

    def to_dict(self) -> dict:
        return _clean(asdict(self))


def latency_stats(x: np.ndarray, batches: int = 20) -> LatencyStats:
    """Statistics of the finite values of ``x`` (arrival order kept for the batch means)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        nan = math.nan
        return LatencyStats(0, nan, nan, nan, nan, nan, nan, nan, nan)
    qs = (50.0, 90.0, 99.0)
    point = [float(x.mean()), *np.percentile(x, qs)]
    half = [math.nan] * 4
    if len(x) >= 2 * batches:
        parts = np.array_split(x, batches)
        per = np.array([[p.mean(), *np.percentile(p, qs)] for p in parts])
        from scipy import special  # NOTE: stdtrit is Student's t quantile (what scipy.stats.t.ppf calls),
        # bit-identical; scipy.stats itself takes 0.3-1.5 s to import, for this one number

        half = list(special.stdtrit(batches - 1, 0.975) * per.std(axis=0, ddof=1) / math.sqrt(batches))
    return LatencyStats(len(x), *point, *half)


@dataclass(frozen=True)
class Goodput:
    slo: dict
    goodput_requests_per_s: float
    attainment: float
    slo_met: bool
    percentile_values: dict

    def to_dict(self) -> dict:
        return _clean(asdict(self))


def waiting_mean(arrival_Q: np.ndarray, until_Q: np.ndarray, t0: float, t1: float) -> float:
    """Time-average over [t0, t1] of the requests waiting: request q waits from its arrival to
    ``until_Q`` (for ever when that is NaN or inf)."""
    start = np.maximum(arrival_Q, t0)
    end = np.minimum(np.where(np.isfinite(until_Q), until_Q, np.inf), t1)
    return float(np.clip(end - start, 0.0, None).sum()) / (t1 - t0)


def backlog(arrival_Q: np.ndarray, until_Q: np.ndarray, rejected_Q: np.ndarray, w0: float, w1: float) -> dict:
    """The window's backlog (module docstring), ``until_Q`` the end of each request's wait (its
    decode start): ``early`` / ``late`` mean waiting requests over the second and last quarter
    of [w0, w1], ``growth`` = late - early, ``arrivals_between`` = the window's arrival rate x
    (w1 - w0) / 2 (the quarters' midpoints lie half a window apart)."""
    keep = ~rejected_Q
    a, f = arrival_Q[keep], until_Q[keep]
    q = (w1 - w0) / 4.0
    early, late = waiting_mean(a, f, w0 + q, w0 + 2 * q), waiting_mean(a, f, w1 - q, w1)
    arrived = float(((arrival_Q >= w0) & (arrival_Q <= w1)).sum())
    return {"early": early, "late": late, "growth": late - early, "arrivals_between": arrived / 2.0}


OVERLOAD_SHARE = 0.1  # backlog growth above this share of the arrivals (and 3 sd) is overload


def backlog_grows(growth: float, arrivals_between: float) -> bool:
    """Whether a backlog ``growth`` over a half window of ``arrivals_between`` arrivals says the
    system does not keep up: above ``OVERLOAD_SHARE`` of the arrivals and above 3 sd of their
    Poisson count (a system that keeps up has a stationary backlog, its growth within that noise;
    an overloaded one keeps 1 - mu / lambda of its arrivals, so overloads past ~11% are caught
    once there are ~900 arrivals, grosser ones with fewer)."""
    return growth > max(3.0 * math.sqrt(max(arrivals_between, 0.0)), OVERLOAD_SHARE * arrivals_between)


def _goodput(slo: SLO, lat: dict[str, np.ndarray], done: np.ndarray, window_s: float) -> Goodput:
    ok = done.copy()
    met, values = True, {}
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        limit = getattr(slo, name)
        if limit is None:
            continue
        x = np.where(done, lat[name], np.inf)
        x = np.where(np.isnan(x), 0.0, x)  # TPOT of one-token outputs: no constraint
        ok &= x <= limit
        # NOTE: unfinished requests are +inf; an interpolating percentile would form inf - inf.
        v = float(np.percentile(x, slo.percentile, method="inverted_cdf")) if len(x) else math.inf
        values[name] = v
        met &= v <= limit
    n = len(done)
    return Goodput(slo.to_dict(), float(ok.sum()) / window_s, float(ok.mean()) if n else math.nan,
                   bool(met and n > 0), values)


@dataclass(frozen=True)
class ServingResult:
    """Everything one serving simulation measured (frozen; ``to_dict`` for JSON)."""

    mode: str
    devices: int
    window_s: tuple[float, float]
    requests: int
    completed: int
    rejected: int
    unfinished: int
    preemptions: int
    iterations: int
    ttft_s: LatencyStats
    tpot_s: LatencyStats
    e2e_s: LatencyStats
    request_throughput_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    input_tokens_per_s_per_device: float
    output_tokens_per_s_per_device: float
    goodput: Goodput | None
    littles_law: dict
    kv_utilization: dict
    queue_length: dict
    backlog: dict
    timeseries: tuple[tuple[float, str, float, int], ...]
    per_request: dict
    spans: tuple = ()

    def to_dict(self, timeseries: bool = False) -> dict:
        d = {k: getattr(self, k) for k in (
            "mode", "devices", "window_s", "requests", "completed", "rejected", "unfinished",
            "preemptions", "iterations", "request_throughput_per_s", "input_tokens_per_s", "output_tokens_per_s",
            "input_tokens_per_s_per_device", "output_tokens_per_s_per_device", "littles_law",
            "kv_utilization", "queue_length", "backlog")}
        for k in ("ttft_s", "tpot_s", "e2e_s"):
            d[k] = getattr(self, k).to_dict()
        d["goodput"] = self.goodput.to_dict() if self.goodput else None
        d["ci_method"] = "batch means, 20 batches in arrival order, 95% t-interval half-widths"
        if timeseries:
            d["timeseries"] = [dict(zip(("time_s", "pool", "kv_utilization", "queued"), r))
                               for r in self.timeseries]
        return _clean(d)

    def requests_csv(self) -> str:
        """One row per request: arrival, lengths, TTFT, TPOT, end-to-end (s), preemptions."""
        cols = list(self.per_request)
        rows = zip(*(self.per_request[c] for c in cols))
        lines = [",".join(cols)] + [",".join("" if (isinstance(v, float) and math.isnan(v)) else f"{v:.9g}"
                                              for v in r) for r in rows]
        return "\n".join(lines) + "\n"

    def timeseries_csv(self) -> str:
        return "time_s,pool,kv_utilization,queued\n" + "".join(
            f"{t:.6g},{p},{u:.6g},{q}\n" for t, p, u, q in self.timeseries)


def summarize(system, requests, obs, req, *, slo: SLO | None, ci_batches: int = 20) -> ServingResult:
    """Turn one run's observer records into a ``ServingResult``."""
    arr = requests.arrival_s_Q
    first = np.asarray(obs.first_s)
    fin = np.asarray(obs.finish_s)
    out = requests.output_Q
    ttft, e2e = first - arr, fin - arr
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (fin - first) / (out - 1), np.nan)
    w0, w1 = obs.w0, obs.w1
    win = (arr >= w0) & (arr <= w1)
    span = w1 - w0
    rejected = np.zeros(len(arr), bool)
    rejected[obs.rejected] = True
    done = np.isfinite(fin) & ~rejected
    lat = {"ttft_s": ttft[win], "tpot_s": tpot[win], "e2e_s": e2e[win]}
    devices = system.devices
    in_tps, out_tps = obs.in_tokens / span, obs.out_tokens / span
    lam = float(win.sum()) / span
    kv, ql = _series_stats(obs.samples)
    return ServingResult(
        mode=system.mode, devices=devices, window_s=(w0, w1), requests=len(arr),
        completed=int(done.sum()), rejected=int(rejected.sum()), unfinished=int((~done & ~rejected).sum()),
        preemptions=obs.preemptions, iterations=obs.iterations,
        ttft_s=latency_stats(lat["ttft_s"], ci_batches), tpot_s=latency_stats(lat["tpot_s"], ci_batches),
        e2e_s=latency_stats(lat["e2e_s"], ci_batches),
        request_throughput_per_s=float((done & (fin >= w0) & (fin <= w1)).sum()) / span,
        input_tokens_per_s=in_tps, output_tokens_per_s=out_tps,
        input_tokens_per_s_per_device=in_tps / devices, output_tokens_per_s_per_device=out_tps / devices,
        goodput=_goodput(slo, lat, done[win], span) if slo is not None else None,
        littles_law={"mean_in_system": obs.mean_in_system, "arrival_rate_per_s": lam,
                     "mean_e2e_s": float(np.nanmean(lat["e2e_s"])) if done[win].any() else math.nan},
        kv_utilization=kv, queue_length=ql, backlog=backlog(arr, np.asarray(obs.decode_start_s), rejected, w0, w1),
        timeseries=tuple(obs.samples),
        per_request={"arrival_s": arr.tolist(), "prompt_tokens": requests.prompt_Q.tolist(),
                     "output_tokens": out.tolist(), "ttft_s": ttft.tolist(), "tpot_s": tpot.tolist(),
                     "e2e_s": e2e.tolist(), "preemptions": req.preemptions},
        spans=tuple(obs.spans or ()),
    )


def _series_stats(samples) -> tuple[dict, dict]:
    kv: dict[str, list] = {}
    ql: dict[str, list] = {}
    for _t, pool, u, q in samples:
        kv.setdefault(pool, []).append(u)
        ql.setdefault(pool, []).append(q)
    return ({p: {"mean": float(np.mean(v)), "max": float(np.max(v))} for p, v in kv.items()},
            {p: {"mean": float(np.mean(v)), "max": float(np.max(v))} for p, v in ql.items()})
