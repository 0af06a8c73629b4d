"""The library's own error types.

Every error a user can cause is a ``MoesimError`` (a ``ValueError``) whose message names the
field, the value and what is allowed. The CLI turns these into one line and exit code 2.
"""
from __future__ import annotations


def _shown(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (a pasted 100,000-character value stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-(limit // 2):]}"


class MoesimError(ValueError):
    """Base class for errors caused by the user's input.

    A subclass with a constructor of its own sets ``_message`` and keeps its constructor's
    arguments in ``args``, so that ``type(e)(*e.args)`` rebuilds the error: SimPy re-raises an
    exception from a process that way (simpy/core.py Environment.step), and pickle (dask) too."""

    def __str__(self) -> str:
        return getattr(self, "_message", None) or super().__str__()


class SpecError(MoesimError):
    """A spec (or a combination of specs) is invalid: names the field, the value, what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        # value None: the field is missing or the rule is about a combination (nothing to quote)
        self._message = f"{field}: {allowed}" if value is None else f"{field}: {_shown(value)} is invalid; {allowed}"
        super().__init__(self._message)
        self.args = (field, value, allowed)  # rebuildable (MoesimError)


class UnknownNameError(MoesimError):
    """A profile, preset or option name that does not exist; suggests the closest known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        import difflib

        self.kind = kind
        self.name = name
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
        self._message = f"unknown {kind} {_shown(name)}; {hint}"
        super().__init__(self._message)
        self.args = (kind, name, known)  # rebuildable (MoesimError)


class InfeasibleError(MoesimError):
    """A configuration that cannot run (does not fit, sizes do not divide); says why."""
