"""One line for an OSError a command raised: what is full or refused, and the fix for that command.

A full disk (or file-size limit) names the file when the error does, the output option that
moves it (``--out``; the demo's ``--suite``), or, for a command that writes only to stdout,
redirecting it; a command whose rerun resumes says what the rerun keeps.
"""

from __future__ import annotations

import argparse
import ast
import errno
import os
import stat
import sys
from pathlib import Path

from scalelens.errors import DISK_FULL, errno_of, filename_of
from scalelens.output import one_line, printable

RESUMED = {
    "capture": "finished batches are kept and the run resumes",
    "measure": "finished batches are kept and the run resumes",
    "sweep": "finished tasks are kept and the sweep resumes",
    "suite build": "finished sizes are kept and the build resumes",
    "demo": "finished work is kept and the demo resumes",
}
"""Commands whose rerun resumes where a failure stopped them, and what it keeps."""

OUTPUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "capture": ("--out",), "measure": ("--out",), "sweep": ("--out",), "suite build": ("--out",),
    "report": ("--out",), "demo": ("--out", "--suite"),
}
"""The options that say where each command writes (the demo's suite: ``--suite``, else the cache).
The commands not listed (``inspect``, ``analyze``, ``suite info``) write to stdout only."""


def command_name(args: argparse.Namespace) -> str:
    """The sub-command ``args`` were parsed for: ``capture``, or ``suite build`` for a nested one."""
    return " ".join(filter(None, (getattr(args, "command", None), getattr(args, "suite_command", None))))


def outputs_of(args: argparse.Namespace) -> dict[str, Path | None]:
    """The command's output options (:data:`OUTPUT_OPTIONS`) and the paths given to them."""
    options = OUTPUT_OPTIONS.get(command_name(args), ())
    return {option: getattr(args, option[2:].replace("-", "_"), None) for option in options}


def _stdout_is_a_file() -> bool:
    """Whether stdout is redirected to a regular file (one that a full disk or ``ulimit -f`` stops)."""
    try:
        return stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # a replaced stdout (a notebook, pytest's capture)
        return False


def _lies_under(filename: str, directory: Path) -> bool:
    return Path(os.path.abspath(filename)).is_relative_to(os.path.abspath(directory))


def _option_for(filename: str | None, outputs: dict[str, Path | None]) -> str | None:
    """The output option (``--out``) that moves ``filename`` elsewhere; None when none does.

    The option whose path holds the file; a file under none of them (the demo's suite in the
    cache) the second option's, the command's first (``--out``) otherwise.
    """
    if not outputs:
        return None
    options = list(outputs)
    if filename:
        held = [o for o, path in outputs.items() if path is not None and _lies_under(filename, path)]
        if held:
            return held[-1]
        if len(options) > 1:
            return options[1]
    return options[0]


def _full(filename: str | None, outputs: dict[str, Path | None], other: str) -> tuple[str, str, str]:
    """What reached the limit, the device that is full, and where else to write, for a full disk."""
    if filename:
        return f"a write to {printable(filename)}", f"the output device ({printable(filename)})", other
    if outputs:
        return "the output file", "the output device", other
    if _stdout_is_a_file():  # a command that writes only to stdout, redirected to a file
        return "the standard output", "the device of the standard output", "redirect it to another disk"
    return "an output file", "the output device", other


def os_error_line(e: BaseException, command: str | None = None, named: bool = False,
                   outputs: dict[str, Path | None] | None = None) -> str:
    """One line for an OSError, with the fix for the common cases (full disk, no permission).

    The line names the file when the error (or HDF5's text in an h5py error) does, unless
    ``named`` (the caller's line names it already). It suggests the output option that moves
    the output (``outputs``; default ``{"--out": None}``), or, for a command that writes only
    to stdout, redirecting it; only a ``command`` in :data:`RESUMED` (or none named) is told
    that a rerun resumes.
    """
    code = errno_of(e)
    filename = None if named else filename_of(e)
    outputs = {"--out": None} if outputs is None else outputs
    option = _option_for(filename, outputs)
    other = f"choose another {option}" if option else ""
    resumed = RESUMED.get(command or "capture")
    rerun = f"rerun the same command: {resumed}" if resumed else "rerun the same command"
    where = f" ({printable(filename)})" if filename else ""
    if code in DISK_FULL:
        subject, device, other = _full(filename, outputs, other)
        if code == errno.EFBIG:
            return (f"{subject} reached a file-size limit (ulimit -f, or the largest file the file system "
                    f"allows); raise the limit{f' or {other}' if other else ''}, and {rerun}")
        return f"no space left on {device}; free space{f' (or {other})' if other else ''} and {rerun}"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        writable = f"choose a writable {option} or " if option else ""
        return f"permission denied{where}; {writable}fix the permissions"
    if (tried := _temp_dirs_tried(e)) is not None:
        return (f"no usable temporary directory (tried {tried}: each full or not writable); set TMPDIR "
                "to a directory with free space and rerun")
    text = getattr(e, "strerror", None) or one_line(str(e))
    return f"{text}{where}"


_NO_TEMP_DIR = "No usable temporary directory found in "
"""Python's ``tempfile`` error when no candidate directory takes a file (a full ``/tmp``):
raised by a library that asks for the temporary directory when it is imported (torch, via dill)."""


def _temp_dirs_tried(e: BaseException) -> str | None:
    """The directories ``tempfile`` tried, when ``e`` is its no-usable-directory error; else None."""
    text = getattr(e, "strerror", None)
    if not isinstance(e, FileNotFoundError) or not isinstance(text, str) or not text.startswith(_NO_TEMP_DIR):
        return None
    listed = text[len(_NO_TEMP_DIR):]
    try:
        dirs = ast.literal_eval(listed)
    except (ValueError, SyntaxError):
        return listed
    return ", ".join(map(str, dirs)) if isinstance(dirs, list) else listed
