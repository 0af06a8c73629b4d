"""The shared ``moesim op`` command group: single-operation timings (compute and comm).

Several command modules add subcommands under ``op``; ``op_group(sub)`` creates the group's
parser once per top-level subparsers object and hands the same one to every caller.
"""
from __future__ import annotations

import argparse
import weakref

_GROUPS: "weakref.WeakKeyDictionary[argparse._SubParsersAction, argparse._SubParsersAction]" = (
    weakref.WeakKeyDictionary()
)


def op_group(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``op`` sub-subparsers under ``sub`` (created on the first call, reused after)."""
    group = _GROUPS.get(sub)
    if group is None:
        parser = sub.add_parser("op", help="time of one operation (GEMM, grouped GEMM, collectives)")
        group = parser.add_subparsers(dest="op", metavar="OP")
        group.required = True
        _GROUPS[sub] = group
    return group
