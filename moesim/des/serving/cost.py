"""What one serving iteration of a replica costs: the small protocol the simulator runs on.

A replica is the unit that runs one batched forward pass at a time (a TP/EP group: every rank
joins the same all-to-alls, so the group iterates in lock step). The simulator needs only:

- ``prefill_time_s(num_tokens, num_sequences)``: a prefill-only iteration of ``num_tokens``
  prompt tokens from ``num_sequences`` requests;
- ``decode_time_s(batch, mean_context)``: a decode-only iteration of ``batch`` sequences (one new
  token each) whose KV caches hold ``mean_context`` tokens on average;
- ``mixed_time_s(prefill_tokens, prefill_seqs, decode_batch, mean_context)``: a chunked-prefill
  iteration carrying both;
- ``kv_capacity_tokens`` (the replica's whole KV cache, in tokens), ``kv_bytes_per_token``
  (all layers, for the disaggregated KV transfer) and ``devices``.

Two implementations: ``LinearCost`` (closed form, used by tests where the expected answers are
exact) and ``GridCost`` (wraps per-iteration estimators such as the analytic step model,
memoized on a grid of batch sizes and context nodes and interpolated; ``from_deployment`` in
``deployment.py`` builds one from a model, a profile and a layout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from moesim.errors import SpecError


class ReplicaCost(Protocol):
    devices: int
    kv_capacity_tokens: int
    kv_bytes_per_token: float

    def prefill_time_s(self, num_tokens: int, num_sequences: int) -> float: ...

    def decode_time_s(self, batch: int, mean_context: float) -> float: ...

    def mixed_time_s(self, prefill_tokens: int, prefill_seqs: int, decode_batch: int,
                     mean_context: float) -> float: ...


@dataclass(frozen=True)
class LinearCost:
    """Closed-form iteration time: ``a + b x tokens + c x decode_batch x mean_context``.

    ``fixed_s`` (a): per-iteration overhead (weight reads, launches), seconds.
    ``per_token_s`` (b): seconds per token in the batch (prefill tokens + one per decode sequence).
    ``per_context_token_s`` (c): seconds per KV token read by decode attention.
    With a token budget B per iteration, a saturated replica moves B / (a + b B) tokens/s.
    """

    fixed_s: float
    per_token_s: float
    kv_capacity_tokens: int = 10**9
    per_context_token_s: float = 0.0
    kv_bytes_per_token: float = 0.0
    devices: int = 1

    def __post_init__(self):
        if self.fixed_s < 0 or self.per_token_s < 0 or self.per_context_token_s < 0:
            raise SpecError("cost", (self.fixed_s, self.per_token_s), "times must be >= 0")
        if self.fixed_s + self.per_token_s <= 0:
            raise SpecError("cost", (self.fixed_s, self.per_token_s), "an iteration must take time")
        if self.kv_capacity_tokens < 1 or self.devices < 1:
            raise SpecError("cost.kv_capacity_tokens", self.kv_capacity_tokens, "must be >= 1")

    def prefill_time_s(self, num_tokens: int, num_sequences: int) -> float:
        return self.fixed_s + self.per_token_s * num_tokens

    def decode_time_s(self, batch: int, mean_context: float) -> float:
        return self.fixed_s + batch * (self.per_token_s + self.per_context_token_s * mean_context)

    def mixed_time_s(self, prefill_tokens: int, prefill_seqs: int, decode_batch: int,
                     mean_context: float) -> float:
        return (self.fixed_s + self.per_token_s * (prefill_tokens + decode_batch)
                + self.per_context_token_s * decode_batch * mean_context)


def grid_bracket(x: float, per_octave: int) -> tuple[int, int]:
    """Integer nodes of the geometric grid round(2^(i / per_octave)) around ``x`` (lo <= x <= hi)."""
    if x <= 1:
        return 1, 1
    i = math.floor(per_octave * math.log2(x) + 1e-9)
    lo = max(1, round(2.0 ** (i / per_octave)))
    hi = max(lo, round(2.0 ** ((i + 1) / per_octave)))
    while lo > x:
        i -= 1
        lo = max(1, round(2.0 ** (i / per_octave)))
    while hi < x:
        i += 1
        hi = round(2.0 ** ((i + 1) / per_octave))
    return (lo, lo) if lo == x else (lo, hi)


@dataclass(frozen=True)
class GridCost:
    """A replica cost from two (slow) estimators, evaluated lazily on a grid and interpolated.

    ``prefill_fn(num_tokens)`` and ``decode_fn(batch, context)`` return seconds per iteration.
    - prefill: piecewise linear in tokens between nodes of a geometric grid
      (``points_per_octave`` per doubling);
    - decode: piecewise linear in batch between grid nodes, and affine in context: decode
      attention reads KV bytes proportional to batch x context, so
      ``t(b, c) = t(b, c1) + sigma x b x (c - c1)`` with sigma (seconds per context token per
      sequence) measured once from two contexts ``context_nodes`` at ``slope_batch`` (the step
      model's decode is exactly proportional: its slope at b = 1..1024 scales with b to 0.1%);
    - mixed (chunked prefill): one prefill-shaped pass over all its tokens (weights read once,
      GEMM rows = prefill + decode tokens) plus the decode attention beyond one token of
      context: ``max(decode(d, ctx), prefill(P + d) + max(0, decode(d, ctx) - decode(d, 1)))``.
    Each node is computed once, on first use (memoized); only the visited region costs time.
    """

    prefill_fn: Callable[[int], float]
    decode_fn: Callable[[int, float], float]
    kv_capacity_tokens: int
    kv_bytes_per_token: float
    devices: int
    points_per_octave: int = 1
    context_nodes: tuple[int, int] = (1024, 16384)
    slope_batch: int = 64
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def _prefill_node(self, tokens: int) -> float:
        key = ("p", tokens)
        t = self._memo.get(key)
        if t is None:
            t = self._memo[key] = float(self.prefill_fn(tokens))
        return t

    def _decode_node(self, batch: int) -> tuple[float, float]:
        """(time at one token of context, seconds per context token) at a grid batch."""
        key = ("d", batch)
        v = self._memo.get(key)
        if v is None:
            c1 = self.context_nodes[0]
            slope = self._slope_per_seq() * batch
            v = self._memo[key] = (float(self.decode_fn(batch, c1)) - slope * (c1 - 1), slope)
        return v

    def _slope_per_seq(self) -> float:
        """Decode seconds per context token per sequence, from two contexts at ``slope_batch``."""
        s = self._memo.get("slope")
        if s is None:
            (c1, c2), b = self.context_nodes, self.slope_batch
            s = max(0.0, (float(self.decode_fn(b, c2)) - float(self.decode_fn(b, c1))) / (c2 - c1) / b)
            self._memo["slope"] = s
        return s

    def prefill_time_s(self, num_tokens: int, num_sequences: int = 1) -> float:
        lo, hi = grid_bracket(num_tokens, self.points_per_octave)
        t_lo = self._prefill_node(lo)
        if hi == lo:
            return t_lo
        return t_lo + (self._prefill_node(hi) - t_lo) * (num_tokens - lo) / (hi - lo)

    def decode_time_s(self, batch: int, mean_context: float) -> float:
        lo, hi = grid_bracket(batch, self.points_per_octave)
        a_lo, s_lo = self._decode_node(lo)
        t_lo = a_lo + s_lo * (mean_context - 1)
        if hi == lo:
            return t_lo
        a_hi, s_hi = self._decode_node(hi)
        t_hi = a_hi + s_hi * (mean_context - 1)
        return t_lo + (t_hi - t_lo) * (batch - lo) / (hi - lo)

    def mixed_time_s(self, prefill_tokens: int, prefill_seqs: int, decode_batch: int,
                     mean_context: float) -> float:
        if decode_batch == 0:
            return self.prefill_time_s(prefill_tokens, prefill_seqs)
        if prefill_tokens == 0:
            return self.decode_time_s(decode_batch, mean_context)
        decode = self.decode_time_s(decode_batch, mean_context)
        attention = decode - self.decode_time_s(decode_batch, 1)
        # NOTE: a mixed iteration does at least the decode-only iteration's work for its batch; the
        # prefill-shaped pass can price a few tokens below the decode pass (other all-to-all kernels
        # and overlap), which would make a prompt speed up decode.
        return max(decode, self.prefill_time_s(prefill_tokens + decode_batch) + max(0.0, attention))
