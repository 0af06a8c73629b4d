"""The ``moesim`` command: parses arguments, calls the library, prints text or JSON.

Thin by design: each command group lives in ``moesim/commands/<group>.py`` with
``register(subparsers)`` (found automatically, ordered by the module's ``ORDER``); each
registered handler takes the parsed args and returns a
``Result`` (JSON-able data plus a text rendering). All user errors become one line on stderr
and exit code 2; nothing the user types produces a traceback (``--debug`` shows one).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from moesim.catalog import validation_message
from moesim.errors import MoesimError


EXIT_USAGE = 2
EXIT_INTERNAL = 1


@dataclass(frozen=True)
class Result:
    """What a command returns: ``data`` for --json, ``text`` for people."""

    data: Any
    text: str = ""
    files: tuple[str, ...] = field(default_factory=tuple)
    errors: tuple[str, ...] = field(default_factory=tuple)  # one line each, printed to stderr
    exit_code: int = 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"moesim: error: {message} (see '{self.prog} --help')\n")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moesim",
        description="Forecast the hardware a sparse Mixture-of-Experts model needs.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"moesim {_version()}")
    parser.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                        help="log what the command does to stderr (-vv: debug)")
    parser.add_argument("-q", "--quiet", dest="quiet", action="store_true",
                        help="errors only on stderr; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _command_modules():
        module.register(sub)
    return parser


def _version() -> str:
    from moesim import __version__

    return __version__


def _command_modules() -> list:
    """Every module in moesim.commands, ordered by its ``ORDER`` (then name)."""
    import moesim.commands as pkg

    mods = [
        importlib.import_module(f"moesim.commands.{info.name}")
        for info in pkgutil.iter_modules(pkg.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 50), m.__name__))


def _to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """JSON has no inf or nan: they are written as null (an unfinished request's latency,
    an undefined ratio)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _finite(obj.to_dict())
    return obj


def emit(args: argparse.Namespace, result: Result) -> None:
    """Print ``result`` as JSON (``--json``) or text."""
    if getattr(args, "json", False):
        json.dump(_finite(result.data), sys.stdout, indent=2, default=_to_jsonable, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.text.rstrip("\n") + "\n")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        args.verbosity = -1
    from moesim.progress import configure_logging

    configure_logging(args.verbosity)
    handler: Callable[[argparse.Namespace], Result] = args.handler
    try:
        result = handler(args)
        emit(args, result)
        for line in result.errors:
            print(f"moesim: error: {line}", file=sys.stderr)
        return result.exit_code
    except MoesimError as err:
        print(f"moesim: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as err:
        print(f"moesim: error: {validation_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # noqa: BLE001 - the last line of defence: no tracebacks
        if args.debug:
            raise
        print(
            f"moesim: internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
