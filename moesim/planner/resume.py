"""The ``--results`` file of a sweep: evaluations streamed as JSON lines, resumed on a rerun.

Format: the first line is a header ``{"format": "moesim.plan-results", "version": 2,
"fingerprint": ..., "inputs": {...}}``; every further line is one ``Evaluation.to_dict()``.

A rerun reuses a finished evaluation only when it was made from the same inputs:
:func:`input_digests` identifies by content everything that decides a result (the scenario's
fields, the evaluator, the moesim version, and the bytes of the model, of every hardware profile
and of every trace file the scenario names, built-in or not). A file from other inputs, a header
that cannot be read, a second header, or a record that is not an evaluation is refused with the
reason; it is never silently mixed in or skipped. The file is locked (``fcntl.flock``) while a
sweep writes it, so a second run on it is refused instead of interleaving lines. A torn last
line (a run killed mid-write) is cut off before appending, and that candidate is evaluated again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from moesim import __version__, safeio
from moesim.errors import MoesimError
from moesim.planner.evaluation import Evaluation

try:  # POSIX; elsewhere the file is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = "moesim.plan-results"
VERSION = 2
FLAG = "--results"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _trace_files(obj, out: list[str]) -> list[str]:
    """Every ``trace:FILE`` skew and ``*trace_path`` value in a scenario's fields."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and (value.startswith("trace:") or str(key).endswith("trace_path")):
                out.append(value.removeprefix("trace:"))
            else:
                _trace_files(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _trace_files(value, out)
    return out


def input_digests(scenario, evaluator) -> dict[str, str]:
    """Content identity of every input that decides a sweep's results (see the module docstring).
    A file that cannot be read is recorded as such (so a later, readable one does not match)."""
    from moesim.catalog import file_digest

    fields = scenario.to_dict()
    digests = {
        "scenario": _sha(json.dumps(fields, sort_keys=True).encode()),
        "evaluator": str(getattr(evaluator, "name", type(evaluator).__qualname__)),
        "moesim": __version__,
        f"model {scenario.model}": file_digest("model", scenario.model),
    }
    for hw in scenario.hardware:
        digests[f"hardware {hw}"] = file_digest("hardware", hw)
    for path in _trace_files(fields, []):
        try:
            digests[f"trace {path}"] = _sha(safeio.read_bytes(path, "trace"))
        except MoesimError as err:
            digests[f"trace {path}"] = f"unreadable: {err}"
    return digests


def fingerprint(digests: dict[str, str]) -> str:
    """A short hash of :func:`input_digests`."""
    return _sha(json.dumps(digests, sort_keys=True).encode())[:16]


def _changed(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    names = [safeio.shown(k, 100) for k in keys[:4]] + ([f"{len(keys) - 4} more"] if len(keys) > 4 else [])
    return ", ".join(names) or "fingerprint"


class ResultsFile:
    """An open, locked results file: ``done`` holds its finished evaluations by candidate key;
    :meth:`append` streams more; :meth:`close` releases it (see the module docstring)."""

    def __init__(self, path: str | Path, digests: dict[str, str]):
        self.path = safeio.check_output(path, FLAG)
        self.where = f"{FLAG} {safeio.shown(self.path)}"
        self.digests = digests
        self.header = json.dumps({"format": FORMAT, "version": VERSION, "fingerprint": fingerprint(digests),
                                  "inputs": digests}, sort_keys=True) + "\n"
        self.done: dict[str, Evaluation] = {}
        self._created = not self.path.exists()
        self._appended = 0
        try:
            self._fh = self.path.open("a+b")
        except OSError as err:
            raise MoesimError(f"{self.where}: cannot open it ({err.strerror})") from None
        try:
            self._lock()
            self._load()
        except BaseException:
            self._fh.close()
            raise

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MoesimError(f"{self.where}: another moesim run is writing this file; wait for it to "
                              "finish or pick another file") from None

    def _load(self) -> None:
        self._fh.seek(0)
        data = self._fh.read()
        if not data or self.header.encode().startswith(data):  # new, or only a torn header of ours
            self._truncate(0)
            self._fh.write(self.header.encode())
            self._fh.flush()
            return
        complete = data[: data.rfind(b"\n") + 1]
        lines = complete.split(b"\n")[:-1]
        if not lines:
            raise MoesimError(f"{self.where}: not a moesim results file (no header line); remove it or pick "
                              "another file")
        self._check_header(lines[0])
        for number, raw in enumerate(lines[1:], start=2):
            ev = self._record(raw, number)
            self.done[ev.candidate.key()] = ev
        if len(complete) < len(data):  # a line cut short by an interruption: redo that candidate
            self._truncate(len(complete))

    def _check_header(self, raw: bytes) -> None:
        try:
            head = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            head = None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise MoesimError(f"{self.where}: not a moesim results file (line 1 is not its header); remove it "
                              "or pick another file")
        if head.get("version") != VERSION:
            raise MoesimError(f"{self.where}: results file version {safeio.shown(head.get('version'), 20)}, "
                              f"this moesim writes version {VERSION}; remove it or pick another file")
        if head.get("fingerprint") != fingerprint(self.digests) or head.get("inputs") != self.digests:
            old = head.get("inputs") if isinstance(head.get("inputs"), dict) else {}
            raise MoesimError(f"{self.where}: results of another scenario or other inputs (changed: "
                              f"{_changed(old, self.digests)}); remove it or pick another file")

    def _record(self, raw: bytes, number: int) -> Evaluation:
        why = "not JSON"
        try:
            row = json.loads(raw.decode("utf-8"))
            if isinstance(row, dict) and "format" in row:
                why = "a second header (two runs wrote this file)"
            elif isinstance(row, dict):
                ev = Evaluation.from_dict(row)
                if row.get("key") == ev.candidate.key():
                    return ev
                why = "a record whose key does not match its candidate"
            else:
                why = "not an evaluation record"
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            pass
        except (KeyError, TypeError, ValueError, AttributeError):
            why = "not an evaluation record"
        raise MoesimError(f"{self.where}: line {number} is {why}: the file is corrupt; remove it or pick "
                          "another file")

    def _truncate(self, size: int) -> None:
        self._fh.truncate(size)
        self._fh.seek(size)

    def append(self, evaluations: Iterable[Evaluation]) -> None:
        """Write finished evaluations (one line each) and flush them to the OS."""
        text = "".join(json.dumps(ev.to_dict()) + "\n" for ev in evaluations)
        self._fh.write(text.encode())
        self._fh.flush()
        self._appended += 1

    def close(self, ok: bool = True) -> None:
        """Unlock and close; a file this run created and wrote no result to is removed on failure."""
        if self._fh.closed:
            return
        if not ok and self._created and not self._appended:
            self.path.unlink(missing_ok=True)
        self._fh.close()
