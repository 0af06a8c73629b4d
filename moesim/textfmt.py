"""Plain-text rendering helpers for the CLI: aligned tables and human-readable numbers."""
from __future__ import annotations

import math
from typing import Any, Sequence


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """``1.23e9`` -> ``'1.23 G<unit>'``; None, nan or inf -> ``'-'`` (never printed as a number)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return f"0 {unit}".strip()
    prefixes = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
                (1e-3, "m"), (1e-6, "u"), (1e-9, "n")]
    mag = abs(value)
    for scale, p in prefixes:
        if mag >= scale:
            return f"{value / scale:.{digits}g} {p}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


def seconds(value: float | None) -> str:
    """Seconds in the unit a person would use (us, ms, s, h); None, nan or inf -> ``'-'``."""
    if value is None or not math.isfinite(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.1f} us"
    if value < 1.0:
        return f"{value * 1e3:.2f} ms"
    if value < 3600:
        return f"{value:.2f} s"
    return f"{value / 3600:.2f} h"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned text table with a header rule."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def kv(pairs: Sequence[tuple[str, Any]]) -> str:
    """``key: value`` lines, keys aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)
