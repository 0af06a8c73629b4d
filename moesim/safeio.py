"""Reading and writing files safely: the only file primitives the CLI, the catalog and the
resume file use.

Reading (:func:`read_bytes`, :func:`read_text`, :func:`load_toml`, :func:`load_json`): a file that
is missing, not a regular file, larger than ``MAX_INPUT_BYTES``, not UTF-8 text, not valid
TOML/JSON or nested deeper than ``MAX_DEPTH`` raises one-line :class:`MoesimError` naming the
file and the problem; its contents are never quoted.

Names in files (:func:`resolve_named`): a path written inside a file is resolved against the
folder of that file and must stay inside that folder tree (symlinks resolved), so a scenario
cannot make moesim read ``../secret/creds.toml``; paths the user types on the command line are
trusted and resolve against the working directory.

Writing (:func:`check_output`, :class:`Outputs`, :func:`atomic_write_text`): an output path that
is a directory, sits in a missing folder or has an unwritable folder is refused before any work
starts; outputs are written under a temporary name in the target folder and renamed into place
only when the whole command succeeded, so a failed command leaves no partial file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterable

from moesim.errors import MoesimError

MAX_INPUT_BYTES = 64 * 2**20  # spec, scenario, case and trace text files are kilobytes to megabytes
MAX_DEPTH = 64  # deepest table/array nesting any moesim file format uses is under 10
MAX_SHOWN = 120  # characters of a user-typed name or path quoted in a message


def shown(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` as quoted in a message: one line, at most ``limit`` characters."""
    s = str(text).replace("\n", "\\n").replace("\r", "\\r")
    if len(s) <= limit:
        return s
    half = max(1, (limit - 3) // 2)
    return f"{s[:half]}...{s[-half:]}"  # keeps a path's file name


def _os_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


# ---- reading ----------------------------------------------------------------------------------
def read_bytes(path: str | Path, what: str = "", limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (MoesimError otherwise)."""
    p = Path(path)
    where = f"{what + ' ' if what else ''}{shown(p)}"
    try:
        if not p.is_file():
            raise MoesimError(f"{where}: no such file" if not p.exists() else f"{where}: not a regular file")
        size = p.stat().st_size
        if size > limit:
            raise MoesimError(f"{where}: {size:,} bytes is larger than the {limit:,} bytes allowed")
        with p.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise MoesimError(f"{where}: cannot read it ({_os_reason(err)})") from None
    if len(data) > limit:
        raise MoesimError(f"{where}: larger than the {limit:,} bytes allowed")
    return data


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text of ``data``; binary or Latin-1 bytes raise MoesimError naming the offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MoesimError(f"{where}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise MoesimError(f"{where}: a binary file (NUL byte at character {text.index(chr(0))})")
    return text


def read_text(path: str | Path, what: str = "", limit: int = MAX_INPUT_BYTES) -> str:
    """UTF-8 text of a file (see :func:`read_bytes` and :func:`decode_text`)."""
    where = f"{what + ' ' if what else ''}{shown(path)}"
    return decode_text(read_bytes(path, what, limit), where)


def check_depth(obj: Any, where: str, limit: int = MAX_DEPTH) -> Any:
    """``obj`` unchanged if its tables/arrays nest at most ``limit`` deep (iterative walk)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise MoesimError(f"{where}: nested more than {limit} levels deep")
        stack.extend((c, depth + 1) for c in children)
    return obj


def parse_toml(text: str, where: str) -> dict:
    """A TOML document as a dict; malformed or too deeply nested text raises MoesimError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise MoesimError(f"{where}: not valid TOML: {shown(err, 200)}") from None
    except RecursionError:
        raise MoesimError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    return check_depth(data, where)


def parse_json(text: str, where: str) -> Any:
    """A JSON document; malformed or too deeply nested text raises MoesimError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MoesimError(f"{where}: not valid JSON: {shown(err, 200)}") from None
    except RecursionError:
        raise MoesimError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    return check_depth(data, where)


def load_toml(path: str | Path, what: str = "") -> dict:
    """Read and parse a TOML file (one-line MoesimError for every way it can be bad)."""
    where = f"{what + ' ' if what else ''}{shown(path)}"
    return parse_toml(read_text(path, what), where)


def load_json(path: str | Path, what: str = "") -> Any:
    """Read and parse a JSON file (one-line MoesimError for every way it can be bad)."""
    where = f"{what + ' ' if what else ''}{shown(path)}"
    return parse_json(read_text(path, what), where)


# ---- names written inside files ---------------------------------------------------------------
def looks_like_path(name: str) -> bool:
    """A profile/model/trace name that is a file path rather than a built-in name."""
    return name.endswith((".toml", ".json", ".npz", ".csv", ".jsonl")) or "/" in name or "\\" in name


def resolve_named(name: str, base_dir: str | Path, what: str, source: str) -> str:
    """The absolute path of a file that the file ``source`` (in ``base_dir``) names as ``what``.

    Relative names resolve against ``base_dir``; the result (symlinks resolved) must lie inside
    ``base_dir``'s folder tree, else MoesimError (give such a file on the command line instead).
    """
    base = Path(base_dir).resolve()
    p = Path(name)
    try:
        full = (p if p.is_absolute() else base / p).resolve()
    except (OSError, RuntimeError) as err:
        raise MoesimError(f"{source}: {what} {shown(name)!r}: cannot resolve it ({err})") from None
    if not full.is_relative_to(base):
        raise MoesimError(f"{source}: {what} {shown(name)!r} lies outside the folder of the file that names "
                          f"it ({shown(base)}); move it there or give it on the command line")
    return str(full)


# ---- writing ----------------------------------------------------------------------------------
def check_output(path: str | Path, flag: str, suffixes: Iterable[str] = ()) -> Path:
    """``path`` if a file can be written there: not a directory, in an existing writable folder,
    a sane name and (when given) one of ``suffixes``; else one-line MoesimError naming ``flag``."""
    p = Path(path)
    name = shown(p)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise MoesimError(f"{flag} {name!r}: needs a file name")
    if len(p.name) > 255:
        raise MoesimError(f"{flag} {name!r}: a file name is at most 255 characters")
    suffixes = tuple(suffixes)
    if suffixes and p.suffix.lower() not in suffixes:
        raise MoesimError(f"{flag} {name!r}: the file type must be one of {', '.join(suffixes)}")
    try:
        if p.is_dir():
            raise MoesimError(f"{flag} {name!r}: is a directory; give a file name")
        if p.exists() and not p.is_file():
            raise MoesimError(f"{flag} {name!r}: not a regular file")
        folder = p.parent if str(p.parent) else Path(".")
        if not folder.is_dir():
            raise MoesimError(f"{flag} {name!r}: folder {shown(folder)!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise MoesimError(f"{flag} {name!r}: folder {shown(folder)!r} is not writable")
    except OSError as err:
        raise MoesimError(f"{flag} {name!r}: {_os_reason(err)}") from None
    return p


def _temp_beside(target: Path) -> Path:
    """A new empty file next to ``target`` (same folder, so the rename is atomic), same suffix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:60]}.", suffix=f".tmp{target.suffix}",
                               dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # NOTE: mkstemp makes 0600; an output gets the usual mode
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a partial file)."""
    target = Path(path)
    tmp = _temp_beside(target)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


class Outputs:
    """A command's output files, committed together only if the command succeeds.

    ``with Outputs() as out: writer(out.path(args.csv, "--csv"))`` checks the path at once,
    hands the writer a temporary file beside it, and renames every temporary file into place when
    the block ends without an exception; an exception (or Ctrl-C) removes them all.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def check(self, path: str | Path, flag: str, suffixes: Iterable[str] = ()) -> Path:
        """Check an output path up front (before any work), without staging it."""
        return check_output(path, flag, suffixes)

    def path(self, path: str | Path, flag: str, suffixes: Iterable[str] = ()) -> Path:
        """A temporary path to write; becomes ``path`` on success."""
        target = check_output(path, flag, suffixes)
        tmp = _temp_beside(target)
        self._staged.append((tmp, target))
        return tmp

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            for tmp, target in self._staged:
                os.replace(tmp, target)
        else:
            for tmp, _ in self._staged:
                tmp.unlink(missing_ok=True)
        self._staged.clear()
        return False
