"""What one step computes: a decode iteration, a prefill iteration or a training step, over
numpy arrays of points (a scalar is an array of one).

Legend: N points (batches, contexts, prompt sizes), broadcast against each other.

- ``Decode``: ``batch_per_device`` sequences per device, each with ``context`` tokens of KV;
- ``Prefill``: ``prompts_per_device`` prompts of ``prompt_len`` tokens per device (causal
  attention: the mean query attends to (S + 1) / 2 keys);
- ``Training``: one optimizer step of ``global_batch`` sequences of ``seq_len`` tokens in
  micro-batches of ``micro_batch`` sequences.
``skew`` is the routing popularity the tokens follow (moesim/routing/popularity.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import SpecError
from moesim.specs.workload import parse_skew


def _positive(name: str, value, integer: bool = False) -> np.ndarray:
    a = np.atleast_1d(np.asarray(value, dtype=float))
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all() or (a <= 0).any():
        raise SpecError(name, value, "must be positive (a number or a 1-D array of them)")
    if integer and (a != np.round(a)).any():
        raise SpecError(name, value, "must be whole numbers")
    return a


def _broadcast(**arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return list(np.broadcast_arrays(*arrays.values()))
    except ValueError:
        raise SpecError("/".join(arrays), tuple(a.size for a in arrays.values()),
                        "arrays of equal length (or length 1)") from None


def _skew(skew: str) -> None:
    try:
        parse_skew(skew)
    except ValueError as err:
        raise SpecError("skew", skew, str(err)) from None


@dataclass(frozen=True)
class Decode:
    """Decode iterations: arrays (N,) of ``batch_per_device`` and ``context``."""

    batch_per_device: np.ndarray
    context: np.ndarray
    skew: str = "uniform"

    def __post_init__(self):
        b, c = _broadcast(batch_per_device=_positive("batch_per_device", self.batch_per_device),
                          context=_positive("context", self.context))
        object.__setattr__(self, "batch_per_device", b)
        object.__setattr__(self, "context", c)
        _skew(self.skew)

    phase = "decode"

    def __len__(self) -> int:
        return self.batch_per_device.size


@dataclass(frozen=True)
class Prefill:
    """Prefill iterations: arrays (N,) of ``prompt_len`` and ``prompts_per_device``.

    ``context``: keys one new token's query attends, on average (None: the causal mean of a
    whole prompt, (prompt_len + 1) / 2). A chunk of c tokens cut from a longer prompt of P tokens
    (chunked prefill) is ``Prefill(c, ..., context=(P + 1) / 2)``: its queries attend the prefix
    already prefilled as well as themselves, and over the prompt's chunks their mean is the whole
    prompt's causal mean; at least (prompt_len + 1) / 2, the chunk's own causal mean."""

    prompt_len: np.ndarray
    prompts_per_device: np.ndarray
    skew: str = "uniform"
    context: np.ndarray | None = None

    def __post_init__(self):
        s, n = _broadcast(prompt_len=_positive("prompt_len", self.prompt_len, integer=True),
                          prompts_per_device=_positive("prompts_per_device", self.prompts_per_device))
        if self.context is not None:
            s, n, c = _broadcast(prompt_len=s, prompts_per_device=n, context=_positive("context", self.context))
            if (c < (s + 1) / 2 - 1e-9).any():
                raise SpecError("context", self.context, "allowed: at least (prompt_len + 1) / 2, the chunk's own "
                                                         "causal mean")
            object.__setattr__(self, "context", c)
        object.__setattr__(self, "prompt_len", s)
        object.__setattr__(self, "prompts_per_device", n)
        _skew(self.skew)

    phase = "prefill"

    def __len__(self) -> int:
        return self.prompt_len.size


@dataclass(frozen=True)
class Training:
    """Training steps: arrays (N,) of ``global_batch``, ``seq_len`` and ``micro_batch``."""

    global_batch: np.ndarray
    seq_len: np.ndarray
    micro_batch: np.ndarray = 1
    skew: str = "uniform"

    def __post_init__(self):
        g, s, m = _broadcast(global_batch=_positive("global_batch", self.global_batch, integer=True),
                             seq_len=_positive("seq_len", self.seq_len, integer=True),
                             micro_batch=_positive("micro_batch", self.micro_batch, integer=True))
        object.__setattr__(self, "global_batch", g)
        object.__setattr__(self, "seq_len", s)
        object.__setattr__(self, "micro_batch", m)
        _skew(self.skew)

    phase = "train"

    def __len__(self) -> int:
        return self.global_batch.size
