"""Request streams: arrival times and prompt/output lengths, drawn from an explicit seed.

A stream is a frozen ``Requests`` of three arrays indexed by request id (shape suffix Q:
requests): ``arrival_s_Q`` (seconds, non-decreasing), ``prompt_Q`` and ``output_Q`` (tokens,
>= 1). Arrival processes:

- ``poisson``: inter-arrival times Exp(1) / rate, drawn until the horizon is passed (chunked,
  never truncated to a fixed count; the count is whatever the process produced).
- ``gamma``: inter-arrival times Gamma(shape k = 1/CV^2, scale = 1/(rate k)): mean 1/rate,
  coefficient of variation CV (CV = 1 is Poisson, CV > 1 bursty).
- ``trace``: replay a CSV or JSONL file of ``arrival_time_s, prompt_len, output_len``.

Arrival gaps and lengths come from two independent child streams of the seed, so the same seed
at a different rate gives the same lengths and arrival times scaled by 1/rate (common random
numbers: a load sweep compares like with like).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from moesim import safeio
from moesim.errors import MoesimError, SpecError


@dataclass(frozen=True)
class Requests:
    """Q requests: arrival time (s), prompt tokens, output tokens (output includes the first)."""

    arrival_s_Q: np.ndarray
    prompt_Q: np.ndarray
    output_Q: np.ndarray

    def __post_init__(self):
        n = len(self.arrival_s_Q)
        if len(self.prompt_Q) != n or len(self.output_Q) != n:
            raise MoesimError("requests: arrival, prompt and output arrays differ in length")
        if n and (np.any(np.diff(self.arrival_s_Q) < 0) or self.arrival_s_Q[0] < 0):
            raise MoesimError("requests: arrival times must be >= 0 and non-decreasing")
        if n and (self.prompt_Q.min() < 1 or self.output_Q.min() < 1):
            raise MoesimError("requests: prompt and output lengths must be >= 1 token")

    def __len__(self) -> int:
        return len(self.arrival_s_Q)

    @property
    def span_s(self) -> float:
        """Time of the last arrival (0 for an empty stream)."""
        return float(self.arrival_s_Q[-1]) if len(self) else 0.0


# ---- lengths ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LengthDist:
    """Token-length distribution: ``fixed`` (value), ``lognormal`` (mean, sigma) or ``empirical``.

    lognormal: ln L ~ N(mu, sigma^2) with mu = ln(mean) - sigma^2/2 so E[L] = mean; draws are
    rounded to integers and raised to at least 1 token. ``max_tokens`` rejects (redraws) values
    above it instead of clipping them, so the shape is kept and nothing is silently cut.
    empirical: ``values`` drawn with probabilities ``weights`` (uniform when None).
    """

    kind: Literal["fixed", "lognormal", "empirical"]
    mean: float = 0.0
    sigma: float = 0.0
    values: tuple[int, ...] = ()
    weights: tuple[float, ...] | None = None
    max_tokens: int | None = None

    @staticmethod
    def fixed(tokens: int) -> "LengthDist":
        if tokens < 1:
            raise SpecError("length.tokens", tokens, "must be >= 1")
        return LengthDist("fixed", mean=float(tokens))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` integer lengths (int64, >= 1)."""
        return _SAMPLERS[self.kind](self, n, rng)


def _fixed(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.full(n, int(round(d.mean)), dtype=np.int64)


def _lognormal(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    if d.mean < 1 or d.sigma < 0:
        raise SpecError("length", (d.mean, d.sigma), "lognormal needs mean >= 1 and sigma >= 0")
    mu = np.log(d.mean) - 0.5 * d.sigma**2
    out = np.maximum(1, np.rint(rng.lognormal(mu, d.sigma, n))).astype(np.int64)
    if d.max_tokens is not None:
        for _ in range(1000):  # rejection: redraw values above the limit
            bad = out > d.max_tokens
            if not bad.any():
                break
            out[bad] = np.maximum(1, np.rint(rng.lognormal(mu, d.sigma, int(bad.sum()))))
        else:
            raise SpecError("length.max_tokens", d.max_tokens, "too small for this lognormal")
    return out


def _empirical(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    values = np.asarray(d.values, dtype=np.int64)
    if len(values) == 0 or values.min() < 1:
        raise SpecError("length.values", d.values, "empirical needs at least one value, all >= 1")
    p = None
    if d.weights is not None:
        w = np.asarray(d.weights, dtype=float)
        if len(w) != len(values) or w.min() < 0 or w.sum() <= 0:
            raise SpecError("length.weights", d.weights, "one weight >= 0 per value, positive sum")
        p = w / w.sum()
    return rng.choice(values, size=n, p=p)


_SAMPLERS = {"fixed": _fixed, "lognormal": _lognormal, "empirical": _empirical}


# ---- arrivals ---------------------------------------------------------------------------------
def _gaps_until(draw, horizon_s: float) -> np.ndarray:
    """Arrival times from a gap sampler ``draw(n)`` until ``horizon_s`` is passed (chunked)."""
    times: list[np.ndarray] = []
    t0 = 0.0
    chunk = 4096
    while True:
        t = t0 + np.cumsum(draw(chunk))
        times.append(t)
        if t[-1] > horizon_s:
            break
        t0 = float(t[-1])
        chunk *= 2
    t_all = np.concatenate(times)
    return t_all[t_all <= horizon_s]


def arrival_times(
    kind: Literal["poisson", "gamma"], rate_per_s: float, duration_s: float,
    rng: np.random.Generator, cv: float = 1.0,
) -> np.ndarray:
    """Arrival times in [0, duration_s] of a renewal process with mean rate ``rate_per_s``."""
    if not rate_per_s > 0:
        raise SpecError("arrivals.rate_per_s", rate_per_s, "must be > 0")
    if not duration_s > 0:
        raise SpecError("duration_s", duration_s, "must be > 0")
    if kind == "poisson":
        return _gaps_until(lambda n: rng.standard_exponential(n) / rate_per_s, duration_s)
    if kind == "gamma":
        if not cv > 0:
            raise SpecError("arrivals.cv", cv, "must be > 0")
        k = 1.0 / cv**2
        return _gaps_until(lambda n: rng.gamma(k, 1.0 / (rate_per_s * k), n), duration_s)
    raise SpecError("arrivals.kind", kind, "allowed: poisson, gamma, trace")


def synthetic(
    kind: Literal["poisson", "gamma"], rate_per_s: float, duration_s: float,
    prompt: LengthDist, output: LengthDist, seed: int | np.random.Generator, cv: float = 1.0,
) -> Requests:
    """A synthetic stream: arrivals and lengths from independent children of ``seed``."""
    root = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rng_arr, rng_len = root.spawn(2)
    t = arrival_times(kind, rate_per_s, duration_s, rng_arr, cv)
    n = len(t)
    return Requests(t, prompt.sample(n, rng_len), output.sample(n, rng_len))


_COLUMNS = ("arrival_time_s", "prompt_len", "output_len")


def read_trace(path: str | Path) -> Requests:
    """Replay file: CSV with a header or JSONL, each row ``arrival_time_s, prompt_len, output_len``.

    Rows are sorted by arrival time. A missing column or a bad value names the row.
    """
    p = Path(path)
    text = safeio.read_text(p, "arrivals trace")
    rows = _jsonl_rows(p, text) if p.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(text)
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            values = tuple(float(row[c]) for c in _COLUMNS)
        except KeyError as err:
            raise MoesimError(f"{p}: row {i} has no column {safeio.shown(err)}; need {', '.join(_COLUMNS)}") from None
        except (TypeError, ValueError):  # the values are not quoted: the file may be anything
            raise MoesimError(f"{p}: row {i}: {', '.join(_COLUMNS)} must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise MoesimError(f"{p}: row {i}: {', '.join(_COLUMNS)} must be finite numbers")
        out.append(values)
    if not out:
        raise MoesimError(f"{p}: trace has no requests")
    arr = np.array(sorted(out), dtype=float)
    if arr[:, 0].min() < 0 or arr[:, 1:].min() < 1:
        raise MoesimError(f"{p}: arrival times must be >= 0 and lengths >= 1")
    return Requests(arr[:, 0] - 0.0, arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64))


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _jsonl_rows(p: Path, text: str) -> list[dict]:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            row = safeio.parse_json(line, f"{safeio.shown(p)}: line {i}")
            if not isinstance(row, dict):
                raise MoesimError(f"{safeio.shown(p)}: line {i} is not a JSON object")
            rows.append(row)
    return rows
