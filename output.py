"""What commands say besides their results: notes, and the switch that silences them (``--quiet``).

A note is information that needs no action (an option a probe ignores, a checkpoint left
out); it goes to stderr as ``note: ...``. Inside :func:`quiet` notes and progress bars
(:mod:`scalelens.progress`) are silenced; warnings and errors are not.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

_quiet = False  # set only by quiet(), which restores it


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """While inside (``on``): no progress bars and no notes; warnings and errors still show.

    A process-wide switch, so that bars drawn from worker threads are silenced too; it is
    restored when the block ends.
    """
    global _quiet
    before, _quiet = _quiet, _quiet or on
    try:
        yield
    finally:
        _quiet = before


def is_quiet() -> bool:
    """Whether progress bars and notes are silenced (:func:`quiet`)."""
    return _quiet


def shown(name: object) -> str:
    r"""A user-given name (model path, revision) for a line of text output.

    As it is when every character prints (spaces and letters of any script included);
    otherwise its ``repr``, so a newline, tab or terminal escape in a directory name shows
    as ``\n``, ``\t``, ``\x1b`` instead of breaking the line or recolouring the terminal.
    """
    text = str(name)
    return text if text.isprintable() else repr(text)


def printable(text: str) -> str:
    """``text`` with each character that does not print (other than a newline) escaped, as ``repr`` does."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def one_line(text: str) -> str:
    """Collapse a message onto one line; characters that do not print (ESC, tab) are escaped."""
    return "; ".join(printable(part.strip()) for part in str(text).splitlines() if part.strip())


def note(text: str) -> None:
    """Print ``note: <text>`` on stderr: information that needs no action, silenced by :func:`quiet`."""
    if not _quiet:
        print(f"note: {text}", file=sys.stderr)
