"""Chrome trace (Trace Event Format) export of simulated timelines: load it in Perfetto
(ui.perfetto.dev) or chrome://tracing beside a torch profiler trace.

Generic: any simulator records ``Span`` objects (a process/track name, a thread/stream name, an
event name, start and duration in seconds, optional args) and ``chrome_trace(spans)`` turns
them into the JSON object format: "X" (complete) events with integer ``pid``/``tid`` and
``ts``/``dur`` in microseconds, plus "M" (metadata) events ``process_name`` / ``thread_name``
naming every track, and ``process_sort_index`` / ``thread_sort_index`` keeping the order in
which tracks first appear. Reference: "Trace Event Format" (Google, docs.google.com/document/d/
1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU), sections "Complete Events" and "Metadata Events".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

US_PER_S = 1e6


@dataclass(frozen=True)
class Span:
    """One busy interval of one track: ``process`` (e.g. "rank 3") / ``thread`` (e.g. "compute")."""

    process: str
    thread: str
    name: str
    start_s: float
    dur_s: float
    category: str = ""
    args: dict = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        return self.start_s + self.dur_s


def chrome_trace(spans: Iterable[Span], metadata: dict | None = None) -> dict:
    """The Trace Event Format object (``{"traceEvents": [...], "displayTimeUnit": "ms"}``)."""
    pids: dict[str, int] = {}
    tids: dict[tuple[str, str], int] = {}
    events: list[dict] = []
    for sp in spans:
        pid = pids.setdefault(sp.process, len(pids))
        tid = tids.setdefault((sp.process, sp.thread), len(tids))
        ev = {"name": sp.name, "ph": "X", "pid": pid, "tid": tid,
              "ts": sp.start_s * US_PER_S, "dur": sp.dur_s * US_PER_S}
        if sp.category:
            ev["cat"] = sp.category
        if sp.args:
            ev["args"] = dict(sp.args)
        events.append(ev)
    meta: list[dict] = []
    for name, pid in pids.items():
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for (proc, thread), tid in tids.items():
        meta.append({"name": "thread_name", "ph": "M", "pid": pids[proc], "tid": tid, "args": {"name": thread}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pids[proc], "tid": tid,
                     "args": {"sort_index": tid}})
    out = {"traceEvents": meta + events, "displayTimeUnit": "ms"}
    if metadata:
        out["otherData"] = dict(metadata)
    return out


def select_tracks(spans: Iterable[Span], processes: Iterable[str] | None) -> list[Span]:
    """The spans of the named processes only (e.g. ``["rank 0", "rank 3"]``); None keeps all.
    A name that matches no span is an error (a typo would otherwise give an empty trace)."""
    spans = list(spans)
    if processes is None:
        return spans
    wanted = list(processes)
    have = list(dict.fromkeys(sp.process for sp in spans))
    missing = [w for w in wanted if w not in have]
    if missing:
        from moesim.errors import MoesimError

        raise MoesimError(f"trace tracks {', '.join(missing)} not in the simulation (it has: {', '.join(have)})")
    keep = set(wanted)
    return [sp for sp in spans if sp.process in keep]


def write_chrome_trace(spans: Iterable[Span], path: str | Path, metadata: dict | None = None,
                       processes: Iterable[str] | None = None) -> Path:
    """Write ``chrome_trace(spans)`` as JSON to ``path`` (gzip-compressed when it ends in
    ``.gz``; Perfetto opens both); ``processes`` keeps only those tracks (:func:`select_tracks`)."""
    p = Path(path)
    data = json.dumps(chrome_trace(select_tracks(spans, processes), metadata), allow_nan=False)
    if p.suffix == ".gz":
        import gzip

        with gzip.open(p, "wt") as fh:
            fh.write(data)
    else:
        p.write_text(data)
    return p
