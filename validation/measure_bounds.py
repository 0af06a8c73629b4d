"""Rewrite the measured figures of tests/test_accuracy_bounds.py ``BOUNDS`` from a fresh run.

For every file and kind already in ``BOUNDS`` it validates the shipped case file with the
shipped profiles and stacks (``moesim.validate.validate``) and writes the measured median and
max |relative error| rounded UP to 0.001 and the number of predicted rows; the margins (``K`` /
``E``) and the set of files and kinds stay as they are. A file or kind that is new must be added
to ``BOUNDS`` by hand first (so a bound is a decision, not a side effect).

    python validation/measure_bounds.py            # print the new BOUNDS block
    python validation/measure_bounds.py --write    # and rewrite it in the test file
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "tests" / "test_accuracy_bounds.py"


def _up(x: float) -> float:
    return math.ceil(x * 1000 - 1e-9) / 1000


def measured(bounds: dict) -> dict:
    """file -> kind -> (median, max, margin, n) measured now, margins kept."""
    from moesim.cases import load_cases
    from moesim.validate import validate

    out = {}
    for name, kinds in bounds.items():
        report = validate(load_cases(ROOT / "validation" / "data" / name))
        out[name] = {}
        for kind, (_, _, margin, _) in kinds.items():
            s = report.summary[kind]
            out[name][kind] = (_up(s.median_abs_rel_error), _up(s.max_abs_rel_error), margin, s.n)
    return out


def rewrite(text: str, new: dict) -> str:
    """``text`` with each ``"kind": (med, max, M, n)`` entry of each file replaced by ``new``'s."""
    for name, kinds in new.items():
        start = text.index(f'"{name}"')
        end = text.index("}", start)
        block = text[start:end]
        for kind, (med, mx, _, n) in kinds.items():
            block = re.sub(rf'("{kind}": \()[0-9.]+, [0-9.]+, (\w+), \d+\)', rf'\g<1>{med:.3f}, {mx:.3f}, \g<2>, {n})', block)
        text = text[:start] + block + text[end:]
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the BOUNDS block in the test file")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(TEST.parent))
    from test_accuracy_bounds import BOUNDS

    new = measured(BOUNDS)
    for name, kinds in new.items():
        print(name, {k: v[:2] + (v[3],) for k, v in kinds.items()})
    if args.write:
        TEST.write_text(rewrite(TEST.read_text(), new))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
