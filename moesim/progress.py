"""Progress bars for the commands that can run long (tqdm when installed), and the logging setup.

A bar is drawn only for people: stderr is a terminal, the command is not printing ``--json``
and ``-q`` was not given. Otherwise the iterable is returned untouched (no output at all), so
pipes, CI logs and JSON consumers never see bar characters.
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")
LOG_FORMAT = "moesim: %(levelname)s: %(message)s"


def wanted(args) -> bool:
    """Whether ``args`` (a parsed command line) should get progress bars."""
    return (sys.stderr.isatty() and not getattr(args, "json", False)
            and getattr(args, "verbosity", 0) >= 0)


def bar(items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = False) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled`` (and tqdm is installed)."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; a bare install still works
        return items
    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def configure_logging(verbosity: int) -> None:
    """stdlib logging for the ``moesim`` loggers: -q (-1) errors only, default warnings,
    -v (1) info, -vv (2) debug; messages go to stderr as ``moesim: LEVEL: message``."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -1:
        level = logging.CRITICAL
    root = logging.getLogger("moesim")
    root.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    root.propagate = False


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the
    first call: a redirected or captured stderr keeps working)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
