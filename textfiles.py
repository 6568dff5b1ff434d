"""Text files: reading users' (one clear error for a file that is not UTF-8), naming our temporaries."""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from scalelens.errors import ScalelensError


def read_utf8(path: str | Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8 (a leading byte-order mark is dropped).

    Args:
        path: The file.
        what: What the file is, for the error (``"haystack file"``).

    Raises:
        ScalelensError: If the file is not UTF-8 (an OSError reading it is the caller's).
    """
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScalelensError(
            f"{what} {p} is not UTF-8 (bad byte at offset {e.start}); re-encode it as UTF-8"
        ) from None


def text_lines(text: str) -> list[str]:
    """``text``'s lines, ended at LF and CRLF only.

    ``str.splitlines()`` would also split at U+2028, form feed, NEL and other separators that
    JSON strings and ordinary text may hold inside a line.
    """
    return [ln.removesuffix("\r") for ln in text.split("\n")]


def user_path(text: str) -> Path:
    """``text`` as a path with a leading ``~`` expanded: the argparse type of path options.

    The shell leaves ``'~/runs'`` (quoted) and ``--out=~/runs`` as they are; a researcher
    means their home directory, not a directory named ``~`` in the working directory.
    An empty text is refused: ``Path("")`` is the working directory, so ``--out ""`` (an
    unset shell variable, ``--out "$RUN"``) wrote a sweep's run into it.
    """
    return Path(_not_empty(text)).expanduser()


def output_path(text: str) -> Path:
    """An ``--out`` path: :func:`user_path`, with ``-`` refused (no output goes to stdout).

    ``capture --out -`` wrote a file named ``-``, ``measure --out -`` a directory so named,
    while ``report --out -`` was refused; ``./-`` still names such a path.
    """
    _refuse_dash(text, "the output is written to files", "a path")
    return user_path(text)


def output_file(example: str, why: str = "the output is written to files") -> Callable[[str], Path]:
    """An argparse type for a file ``--out`` (``example``: a file name to suggest, ``capture.h5``).

    As :func:`output_path` (``why``: why ``-`` is not stdout), and a path ending in ``/`` is
    refused: it names a directory, and ``Path`` drops the slash (``--out runs/a/`` was
    written as a file named ``a``).
    """
    def parse(text: str) -> Path:
        _refuse_dash(text, why, f"a file path like {example}")
        if text.endswith(("/", os.sep)):
            raise argparse.ArgumentTypeError(
                f"{text} names a directory; pass a file path like {text}{example}")
        return user_path(text)

    return parse


def _refuse_dash(text: str, why: str, what: str) -> None:
    """An argparse error for ``-`` as an output: nothing is written to stdout here."""
    if text == "-":
        raise argparse.ArgumentTypeError(f"- is not stdout here: {why}; pass {what} (./- for one named -)")


def output_source(text: str) -> str:
    """:func:`output_path` as a string, for options that take one (``suite build --out``)."""
    return os.fspath(output_path(text))


def user_source(text: str) -> str:
    """A path-or-name option (model, tokenizer, needles): ``~`` expanded where it starts it.

    Anything else (a hub id, ``english``) is given back as it is; an empty text is refused.
    """
    return os.path.expanduser(_not_empty(text))  # changes only a text that starts with ~


def _not_empty(text: str) -> str:
    """``text``, or an argparse error for an empty one (argparse names the option)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path; give a path (. for the current directory)")
    return text


def input_file(path: str | Path, what: str) -> Path:
    """``path`` (``~`` expanded) checked to be an existing file, for the input ``what`` names.

    Raises:
        ScalelensError: One line naming ``what`` when the path is missing or a directory.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ScalelensError(f"{what} {p} is a directory; give a file")
    if not p.is_file():
        raise ScalelensError(f"{what} {p} does not exist")
    return p


def make_dirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)`` that leaves no directory behind when it fails.

    ``--out x/<a name too long for the file system>/y`` failed (ENAMETOOLONG) after making
    ``x``, which stayed behind, empty. The directories this call made are removed again.
    """
    made = []
    p = path
    while not os.path.lexists(p) and p != p.parent:  # lexists: False for any error, a long name too
        made.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except BaseException:
        for d in made:  # the deepest first; only empty ones (never what another process put there)
            try:
                d.rmdir()
            except OSError:
                pass
        raise


def temp_beside(path: Path) -> Path:
    """A temporary name beside ``path`` for writing it aside and renaming it into place.

    Unique to one write: two processes writing the same file at once (two ``measure`` runs
    into one directory, two ``report`` runs of one run) never write into, or rename away,
    each other's temporary file; the last rename wins with a whole file. The ones a
    killed writer on this host left for ``path`` are removed first (a live writer's, or
    another host's on a shared file system, are left alone).
    """
    host = _host()
    _remove_dead_writers_temporaries(path, host)
    return path.with_name(f".{_temp_stem(path.name, host)}.{host}-{os.getpid()}.{uuid.uuid4().hex}.tmp")


def replace_unless_same(tmp: Path, path: Path, stale: Iterable[Path] = ()) -> bool:
    """Rename ``tmp`` onto ``path``, or drop ``tmp`` when ``path`` holds the same bytes already.

    A file remade with the same content is then left as it was, its mtime too (a rerun of a
    finished sweep changes no table that tools like make or rsync would see as new).
    ``stale``: files made from ``path``'s content (fits.json from metrics.csv), removed before
    ``path`` changes: when remaking them fails (a full disk), none is left beside a ``path``
    it was not made from, and the next write makes them again.

    Returns:
        Whether ``path`` was replaced.
    """
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        tmp.unlink()
        return False
    for other in stale:
        other.unlink(missing_ok=True)
    tmp.replace(path)
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


NAME_MAX = 255
"""Bytes in one file name (Linux, macOS)."""


def _temp_stem(name: str, host: str) -> str:
    """``name``, its bytes cut so the temporary's name fits NAME_MAX (any pid) when it is long."""
    room = NAME_MAX - len(f"..{host}-{'9' * 10}.{'0' * 32}.tmp")
    raw = os.fsencode(name)
    return name if len(raw) <= room else os.fsdecode(raw[:room])


def _remove_dead_writers_temporaries(path: Path, host: str) -> None:
    from scalelens.cache.lock import pid_alive

    stem = re.escape(_temp_stem(path.name, host))
    mine = re.compile(rf"\.{stem}\.{re.escape(host)}-(\d+)\.[0-9a-f]{{32}}\.tmp")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for other in siblings:
        found = mine.fullmatch(other.name)
        if found and not pid_alive(int(found.group(1))):
            other.unlink(missing_ok=True)
