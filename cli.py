"""The ``scalelens`` command line: capture, inspect, suite, measure, analyze, sweep, report, demo.

Errors are one line on stderr (``scalelens: error: <problem>; <fix>``) and a non-zero
exit code: 2 for bad input or environment (a :class:`ScalelensError`, an argument
error, an unwritable or full disk), 1 for an unexpected internal error, 130 when
interrupted. ``--debug`` (before or after the sub-command) adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from scalelens.errors import ScalelensError

# Sub-command modules; each exposes register(subparsers).
_COMMAND_MODULES = (
    "scalelens.commands.capture",
    "scalelens.models.cli",
    "scalelens.commands.measure",
    "scalelens.sweeps.cli",
    "scalelens.reports.cli",
    "scalelens.commands.demo",
)

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the problem and where to look."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>; see <prog> --help`` and exit 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {_one_line(message)}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = OneLineParser(
        prog="scalelens",
        description="Interpretability measurements across model scale and training.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    for command in sub.choices.values():  # `scalelens capture ... --debug` works too
        try:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show tracebacks on errors")
        except argparse.ArgumentError:
            pass
    return parser


def _one_line(text: str) -> str:
    """Collapse a message onto one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


def _os_error_line(e: OSError) -> str:
    """One line for an OSError, with the fix for the common cases (full disk, no permission)."""
    code = e.errno
    if code is None:  # h5py wraps HDF5's message, which names the errno in its text
        match = _ERRNO_IN_TEXT.search(str(e))
        code = int(match.group(1)) if match else None
    where = f" ({e.filename})" if e.filename else ""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"no space left on the output device{where}; free space (or choose another --out) and "
                "rerun the same command: finished batches are kept and the run resumes")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a writable --out or fix the permissions"
    text = e.strerror or _one_line(str(e))
    return f"{text}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (errors: one line on stderr, non-zero)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except ScalelensError as e:
        return _fail(debug, _one_line(str(e)), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("scalelens: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `scalelens inspect x.h5 | head`
        return 0
    except OSError as e:
        return _fail(debug, _os_error_line(e), EXIT_BAD_INPUT)
    except MemoryError:
        return _fail(debug, "out of memory; lower --batch-size (or --max-length) and rerun", EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - anything else is a bug: one line, traceback with --debug
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            return _fail(debug, "the device ran out of memory; lower --batch-size (or --max-length) and "
                         "rerun", EXIT_BAD_INPUT)
        line = f"internal error: {type(e).__name__}: {_one_line(str(e))}"
        return _fail(debug, f"{line} (rerun with --debug for the traceback and report it)", EXIT_INTERNAL)


def _fail(debug: bool, line: str, code: int) -> int:
    if debug:
        traceback.print_exc()
    print(f"scalelens: error: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
