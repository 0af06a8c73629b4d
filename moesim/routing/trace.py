"""Routing traces: what a real router chose, written by the torch reference model, read here.

Legend: S steps, E experts, T tokens, K top-k.

Format (version 1), either ``.npz`` (numpy ``savez``) or ``.json`` with the same keys:

* ``format``: ``"moesim.routing-trace"``; ``version``: 1
* ``num_experts`` (int E) and ``top_k`` (int K)
* exactly one of
  - ``counts_SE``: int array (steps x E), copies routed to each expert in each step;
  - ``choices_TK``: int array (tokens x K), each token's experts in preference order
    (highest router score first), values in ``[0, E)``; with optional ``step_T`` (int array,
    the step of each token; default: all tokens in step 0).
* optional ``layer`` (int) and ``source`` (str): where the trace came from.

moesim uses a trace as a per-step popularity: step ``s`` routes with
``p_E = counts_SE[s] / counts_SE[s].sum()`` (Monte Carlo cycles through the steps, the analytic
engine averages its expectations over them). :func:`write_trace` writes the format.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim import safeio
from moesim.errors import MoesimError, SpecError

FORMAT = "moesim.routing-trace"
MAX_TRACE_BYTES = 2**30  # an .npz trace of choices_TK for ~100M tokens
VERSION = 1


@dataclass(frozen=True)
class Trace:
    """A routing trace reduced to per-step expert counts ``counts_SE`` (int64, S x E)."""

    num_experts: int
    top_k: int
    counts_SE: np.ndarray
    source: str = ""

    def popularity_SE(self) -> np.ndarray:
        """Per-step popularity: each row of ``counts_SE`` normalised (float64, S x E)."""
        c_SE = self.counts_SE.astype(np.float64)
        return c_SE / np.maximum(c_SE.sum(axis=1, keepdims=True), 1.0)


def _read_raw(path: Path) -> dict:
    if path.suffix == ".json":
        raw = safeio.load_json(path, "trace")
        if not isinstance(raw, dict):
            raise MoesimError(f"trace {safeio.shown(path)}: a trace is a JSON object of the fields above")
        return raw
    data = safeio.read_bytes(path, "trace", limit=MAX_TRACE_BYTES)  # checks it is a regular file
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except Exception as err:  # noqa: BLE001 - numpy/zipfile raise many types for a bad file
        raise MoesimError(f"trace {safeio.shown(path)}: not a readable .npz or .json file "
                          f"({type(err).__name__})") from None


def _counts_from_choices(choices_TK: np.ndarray, step_T: np.ndarray | None, E: int, where: str) -> np.ndarray:
    if choices_TK.ndim != 2:
        raise SpecError(f"{where}: choices_TK", f"shape {choices_TK.shape}", "needs a 2-D array tokens x top_k")
    if choices_TK.size and (choices_TK.min() < 0 or choices_TK.max() >= E):
        raise SpecError(f"{where}: choices_TK", f"values {choices_TK.min()}..{choices_TK.max()}",
                        f"expert ids must lie in [0, {E})")
    T = choices_TK.shape[0]
    step_T = np.zeros(T, dtype=np.int64) if step_T is None else np.asarray(step_T, dtype=np.int64)
    if step_T.shape != (T,) or (T and step_T.min() < 0):
        raise SpecError(f"{where}: step_T", f"shape {step_T.shape}", f"needs {T} non-negative step indices")
    S = int(step_T.max()) + 1 if T else 1
    counts_SE = np.zeros((S, E), dtype=np.int64)
    np.add.at(counts_SE, (np.repeat(step_T, choices_TK.shape[1]), choices_TK.ravel()), 1)
    return counts_SE


def load_trace(path: str | Path, num_experts: int | None = None, top_k: int | None = None) -> Trace:
    """Read a trace file; checks it against ``num_experts``/``top_k`` when given (SpecError)."""
    p = Path(path)
    raw = _read_raw(p)
    where = f"trace {p}"
    try:
        E = int(np.asarray(raw["num_experts"]))
        K = int(np.asarray(raw["top_k"]))
    except (KeyError, TypeError, ValueError):
        raise SpecError(where, "header", "needs integer num_experts and top_k") from None
    if num_experts is not None and E != num_experts:
        raise SpecError(f"{where}: num_experts", E, f"the routing has {num_experts} experts")
    if top_k is not None and K != top_k:
        raise SpecError(f"{where}: top_k", K, f"the routing has top_k {top_k}")
    if ("counts_SE" in raw) == ("choices_TK" in raw):
        raise SpecError(where, sorted(raw), "needs exactly one of counts_SE or choices_TK")
    if "counts_SE" in raw:
        counts_SE = np.asarray(raw["counts_SE"], dtype=np.int64)
        if counts_SE.ndim != 2 or counts_SE.shape[1] != E or counts_SE.shape[0] < 1:
            raise SpecError(f"{where}: counts_SE", f"shape {counts_SE.shape}", f"needs steps x {E}")
        if counts_SE.min() < 0 or np.any(counts_SE.sum(axis=1) <= 0):
            raise SpecError(f"{where}: counts_SE", "values", "counts must be >= 0 with a positive sum per step")
    else:
        choices_TK = np.asarray(raw["choices_TK"], dtype=np.int64)
        if choices_TK.ndim == 2 and choices_TK.shape[1] != K:
            raise SpecError(f"{where}: choices_TK", f"shape {choices_TK.shape}", f"needs tokens x {K}")
        counts_SE = _counts_from_choices(choices_TK, raw.get("step_T"), E, where)
        if np.any(counts_SE.sum(axis=1) <= 0):
            raise SpecError(f"{where}: step_T", "steps", "every step needs at least one token")
    return Trace(E, K, counts_SE, str(raw.get("source", "")))


def write_trace(path: str | Path, num_experts: int, top_k: int, *, counts_SE=None, choices_TK=None,
                step_T=None, source: str = "") -> None:
    """Write a trace in the format above (``.json`` by suffix, otherwise ``.npz``)."""
    data: dict = {"format": FORMAT, "version": VERSION, "num_experts": int(num_experts),
                  "top_k": int(top_k), "source": source}
    if (counts_SE is None) == (choices_TK is None):
        raise MoesimError("write_trace needs exactly one of counts_SE or choices_TK")
    arrays = {"counts_SE": counts_SE, "choices_TK": choices_TK, "step_T": step_T}
    for key, value in arrays.items():
        if value is not None:
            data[key] = np.asarray(value, dtype=np.int64)
    p = Path(path)
    if p.suffix == ".json":
        p.write_text(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()}))
    else:
        np.savez(p, **data)
