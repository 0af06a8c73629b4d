"""The library's own error types.

Every error a user can cause is a ``MoesimError`` (a ``ValueError``) whose message names the
field, the value and what is allowed. The CLI turns these into one line and exit code 2.
"""
from __future__ import annotations


class MoesimError(ValueError):
    """Base class for errors caused by the user's input."""


class SpecError(MoesimError):
    """A spec (or a combination of specs) is invalid: names the field, the value, what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} is invalid; {allowed}")


class UnknownNameError(MoesimError):
    """A profile, preset or option name that does not exist; suggests the closest known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        import difflib

        self.kind = kind
        self.name = name
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
        super().__init__(f"unknown {kind} {name!r}; {hint}")


class InfeasibleError(MoesimError):
    """A configuration that cannot run (does not fit, sizes do not divide); says why."""
