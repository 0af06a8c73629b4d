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
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from moesim import safeio
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


_NON_FINITE = re.compile(r"(?<![\w.])[-+]?(nan|inf)(?!\w)")  # how Python prints them: never an answer
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
MAX_INT = 2**53  # beyond this no moesim count is meaningful (and floats lose integer precision)
MAX_MESSAGE = 1000  # characters of one error line


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"moesim: error: {one_line(message)} (see '{self.prog} --help')\n")


def one_line(message: object) -> str:
    """An error message as one line of bounded length."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 30] + f"... ({len(text)} characters)"


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf are never a size, rate or time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safeio.shown(text)!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def bounded_int(text: str) -> int:
    """argparse type: an integer of magnitude at most ``MAX_INT``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safeio.shown(text)!r} is not an integer") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{safeio.shown(text)} is out of range (|value| <= 2**53)")
    return value


def seed_int(text: str) -> int:
    """argparse type: a random seed (numpy takes 0 <= seed < 2**64; moesim allows up to 2**53)."""
    value = bounded_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; a seed is >= 0")
    return value


def _harden(parser: argparse.ArgumentParser) -> None:
    """Every ``type=float`` argument of every command becomes :func:`finite_float`, every
    ``type=int`` :func:`bounded_int` (``--seed``: :func:`seed_int`): one rule, no per-flag checks."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _harden(sub)
        elif action.type is float:
            action.type = finite_float
        elif action.type is int:
            action.type = seed_int if action.dest == "seed" else bounded_int


def add_limit_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-long``: run work past the size limit of :func:`check_work`."""
    parser.add_argument("--allow-long", action="store_true",
                        help="run even when the estimated work is past the limit that guards against typos")


def check_work(args: argparse.Namespace, what: str, units: float, limit: float, unit: str) -> None:
    """Refuse ``units`` of work past ``limit`` unless ``--allow-long`` (a typo such as 10**12 layers
    would otherwise run for hours without a word)."""
    if not units <= limit and not getattr(args, "allow_long", False):
        raise MoesimError(f"{what}: about {units:.3g} {unit} of work, past the limit of {limit:.3g} "
                          "(minutes of CPU); pass --allow-long to run it anyway")


def _add_log_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v/-q`` on ``parser``: on the top level they set ``verbosity``/``quiet``; after a
    subcommand (``moesim plan -v``) ``sub_verbosity``/``sub_quiet``, added to them in :func:`run`
    (a subparser's defaults would otherwise overwrite what was given before the subcommand)."""
    pre = "" if top else "sub_"
    parser.add_argument("-v", "--verbose", dest=f"{pre}verbosity", action="count", default=0,
                        help="log what the command does to stderr (-vv: debug)")
    parser.add_argument("-q", "--quiet", dest=f"{pre}quiet", action="store_true",
                        help="errors only on stderr; no progress bars")


def _add_log_flags_below(parser: argparse.ArgumentParser) -> None:
    """``-v/-q`` on every subcommand parser (nested ones too: ``moesim op gemm -q``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("-v" in a.option_strings for a in sub._actions):
                    _add_log_flags(sub, top=False)
                _add_log_flags_below(sub)


def add_training_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """``--recompute-modules`` and ``--mtp-layers``, as ``moesim step`` and ``moesim memory`` take
    them (Deployment.recompute_modules, Deployment.mtp_layers)."""
    parser.add_argument("--recompute-modules", metavar="M,M,...",
                        help="selective: Megatron-Core modules recomputed (core_attn, layernorm, moe_act, "
                             "mla_up_proj, mlp, moe, shared_experts); default core_attn")
    parser.add_argument("--mtp-layers", type=int, default=None, metavar="N",
                        help="train: multi-token-prediction modules trained on the last pipeline stage (default: "
                             "the model's, DeepSeek-V3 1; 0: off)")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moesim",
        description="Forecast the hardware a sparse Mixture-of-Experts model needs.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"moesim {_version()}")
    _add_log_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _command_modules():
        module.register(sub)
    _add_log_flags_below(parser)
    _harden(parser)
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
        if _NON_FINITE.search(result.text):
            raise RuntimeError("the answer holds a non-finite number (nan or inf); not printed")
        sys.stdout.write(result.text.rstrip("\n") + "\n")


def _interrupted(err: BaseException) -> bool:
    """Ctrl-C, also when compiled code (Numba) re-raised it as a SystemError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _fail(message: object, code: int = EXIT_USAGE) -> int:
    print(f"moesim: error: {one_line(message)}", file=sys.stderr)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbosity = getattr(args, "verbosity", 0) + getattr(args, "sub_verbosity", 0)
    args.quiet = getattr(args, "quiet", False) or getattr(args, "sub_quiet", False)
    if args.quiet:
        args.verbosity = -1
    from moesim.progress import configure_logging

    configure_logging(args.verbosity)
    handler: Callable[[argparse.Namespace], Result] = args.handler
    try:
        result = handler(args)
        emit(args, result)
        for line in result.errors:
            print(f"moesim: error: {one_line(line)}", file=sys.stderr)
        return result.exit_code
    except MoesimError as err:
        return _fail(err)
    except ValidationError as err:
        return _fail(validation_message(err))
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as err:  # the disk, not the program: full, permissions, a vanished folder
        where = f"{safeio.shown(err.filename)}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or type(err).__name__}")
    except Exception as err:  # noqa: BLE001 - the last line of defence: no tracebacks
        if _interrupted(err):
            print("moesim: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.debug:
            raise
        print(f"moesim: internal error: {type(err).__name__}: {one_line(err)} "
              "(rerun with --debug for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
