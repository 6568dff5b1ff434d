"""The ``scalelens`` command line: capture, inspect, suite, measure, analyze, sweep, report, demo.

Errors are one line on stderr (``scalelens: error: <problem>; <fix>``) and a non-zero
exit code: 2 for bad input or environment (a :class:`ScalelensError`, an argument
error, an unwritable or full disk), 1 for an unexpected internal error, 130 when
interrupted (Ctrl-C), 143 when terminated (SIGTERM; cleanup runs as for Ctrl-C).
``--debug`` (before or after the sub-command) adds the traceback. scalelens's own
warnings are one line too (``scalelens: warning: <note>``; ``--debug``: Python's format).
``--quiet`` (before or after the sub-command) silences progress bars and ``note:`` lines,
scalelens's and the libraries' (weight loading); warnings, errors and results still show.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from scalelens import __version__
from scalelens.errors import (
    DISK_FULL,
    ScalelensError,
    ScalelensNote,
    ScalelensWarning,
    errno_of,
    is_disk_full,
)
from scalelens.os_errors import command_name, os_error_line, outputs_of
from scalelens.output import note, one_line, quiet

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
EXIT_TERMINATED = 143


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the problem and where to look.

    Abbreviated options are refused (``--over`` is not ``--overwrite``): a typo must not
    turn into an option that replaces finished work.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>; see <prog> --help`` and exit 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = OneLineParser(
        prog="scalelens",
        description="Interpretability measurements across model scale and training.",
    )
    for flag, text in GLOBAL_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--version", action="version", version=f"scalelens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    for command in _command_parsers(sub):  # `scalelens capture ... --debug` works too
        for flag, text in GLOBAL_FLAGS.items():
            with contextlib.suppress(argparse.ArgumentError):
                command.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    return parser


GLOBAL_FLAGS = {
    "--debug": "show tracebacks on errors",
    "--quiet": "no progress bars or notes (warnings, errors and results still show)",
}
"""Flags taken before or after the sub-command (``scalelens --quiet sweep ...`` or ``... --quiet``)."""


def _command_parsers(sub: argparse._SubParsersAction) -> Iterator[argparse.ArgumentParser]:
    """Every sub-command's parser, nested ones included (``suite build`` as well as ``suite``)."""
    for command in sub.choices.values():
        yield command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _command_parsers(action)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (errors: one line on stderr, non-zero)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.exit(EXIT_BAD_INPUT, f"scalelens {args.command}: error: unrecognized arguments: "
                                    f"{' '.join(extra)}; see `scalelens {args.command} --help`\n")
    debug = bool(getattr(args, "debug", False))
    silent = bool(getattr(args, "quiet", False))
    with _process_settings_kept():
        _line_buffered_stdout()
        _quiet_when_logged()
        if not debug:
            _quiet_hub_retries()
        return _run_hooked(args, debug, silent)


def _run_hooked(args: argparse.Namespace, debug: bool, silent: bool) -> int:
    """Run the command under the CLI's warning, exception and SIGTERM handling, restored after."""
    hooks = sys.unraisablehook, sys.excepthook, warnings.showwarning
    if not debug:  # h5py reports a failed close of a file on a full disk from __dealloc__
        sys.unraisablehook, sys.excepthook = _quiet_unraisable, _quiet_excepthook(sys.excepthook)
        warnings.showwarning = _one_line_warning(warnings.showwarning)
    sys.unraisablehook = _keep_interrupts(sys.unraisablehook)
    try:
        with sigterm_as_interrupt(), quiet(silent), _quiet_library_bars(silent):
            return _run(args, debug)
    finally:
        sys.unraisablehook, sys.excepthook, warnings.showwarning = hooks


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``timeout``'s stop), raised like Ctrl-C so cleanup runs."""


_SIGTERM_SEEN = threading.Event()
"""Set when SIGTERM came during the command: code that catches the :class:`Terminated` and
raises a KeyboardInterrupt of its own (Ray's ``ray.wait``) must not turn it into a Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs (main thread only)."""
    _SIGTERM_SEEN.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        _SIGTERM_SEEN.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_h5_dealloc(value: object) -> bool:
    return "decrement id ref count" in str(value) or "ObjectID" in repr(value)


def _keep_interrupts(previous):  # type: ignore[no-untyped-def]
    """An unraisable hook that re-delivers Ctrl-C and SIGTERM instead of reporting them.

    A signal that lands while a finalizer runs (an object's ``__del__``, a weakref callback)
    raises there, where Python only reports the exception, and the command ran on to its end.
    """

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            terminated = isinstance(unraisable.exc_value, Terminated)
            # from another thread, a moment later: the handler would otherwise raise inside this
            # hook (or while it starts the thread), where it is lost again
            later = threading.Timer(0.05, _thread.interrupt_main,
                                    args=(signal.SIGTERM if terminated else signal.SIGINT,))
            later.daemon = True
            later.start()
            return
        previous(unraisable)

    return hook


def _quiet_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Drop h5py's 'Exception ignored in __dealloc__' reports; show anything else."""
    if _is_h5_dealloc(unraisable.object) or _is_h5_dealloc(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


def _quiet_excepthook(previous):  # type: ignore[no-untyped-def]
    """Cython prints a __dealloc__ failure's traceback through sys.excepthook first."""

    def hook(kind, value, tb):  # type: ignore[no-untyped-def]
        if not _is_h5_dealloc(value):
            previous(kind, value, tb)

    return hook


_PACKAGE_DIR = Path(__file__).resolve().parent


def _one_line_warning(previous):  # type: ignore[no-untyped-def]
    """Show scalelens's own warnings as ``scalelens: warning: <message>``, one line.

    A :class:`ScalelensNote` is shown as a note (``note: <message>``, silenced by ``--quiet``).
    Ours are a :class:`ScalelensWarning`, or any warning raised from scalelens's code.
    Python's format names a source file and repeats a line of scalelens's code (the
    hub-unreachable note read ``.../sweeps/tasks.py:80: UserWarning: ...`` and then
    ``loaded = load_model(...)``). Other libraries' warnings keep their format.
    """

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, ScalelensNote):
            return note(one_line(str(message)))
        ours = issubclass(category, ScalelensWarning) or Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
        if not ours:
            return previous(message, category, filename, lineno, file, line)
        print(f"scalelens: warning: {one_line(str(message))}", file=file or sys.stderr)
        return None

    return show


def _run(args: argparse.Namespace, debug: bool) -> int:
    command, outputs = command_name(args), outputs_of(args)

    def os_line(e: BaseException, named: bool = False) -> str:
        return os_error_line(e, command, named, outputs)

    try:
        return int(args.func(args) or 0)
    except ScalelensError as e:
        if is_disk_full(e):  # name the fix, not HDF5's message
            cause = e.__cause__ or e.__context__  # `raise ... from None` keeps the context
            what = str(e).split(": ")[0] if ": " in str(e) else ""
            line = os_line(cause, named=bool(what))
            return _fail(debug, f"{what}: {line}" if what else line, EXIT_BAD_INPUT, True)
        return _fail(debug, one_line(str(e)), EXIT_BAD_INPUT)
    except KeyboardInterrupt as e:
        how = ("rerun it without --overwrite to resume" if getattr(args, "overwrite", False)
               else "rerun the same command to resume")
        terminated = isinstance(e, Terminated) or _SIGTERM_SEEN.is_set()
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"scalelens: {what}; {how}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `scalelens inspect x.h5 | head`
        return 0
    except OSError as e:
        return _fail(debug, os_line(e), EXIT_BAD_INPUT, errno_of(e) in DISK_FULL)
    except MemoryError:
        return _fail(debug, f"out of memory; {_memory_fix(command)}", EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001 - anything else is a bug: one line, traceback with --debug
        if _is_cpu_allocation_failure(e):
            return _fail(debug, f"out of memory{_allocation_size(e)}; {_memory_fix(command)}", EXIT_BAD_INPUT)
        if errno_of(e) is not None:  # h5py raises RuntimeError for a failed flush or close
            return _fail(debug, os_line(e), EXIT_BAD_INPUT, errno_of(e) in DISK_FULL)
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            return _fail(debug, f"the device ran out of memory; {_memory_fix(command)}", EXIT_BAD_INPUT)
        line = f"internal error: {type(e).__name__}: {one_line(str(e))}"
        return _fail(debug, f"{line} (rerun with --debug for the traceback and report it)", EXIT_INTERNAL)


def _is_cpu_allocation_failure(e: BaseException) -> bool:
    """Torch's CPU allocator failing (a RuntimeError, not a MemoryError), e.g. for a huge suite size."""
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


def _allocation_size(e: BaseException) -> str:
    """`` (an allocation of 111.8 GiB failed)`` from torch's message, or ""."""
    found = re.search(r"tried to allocate (\d+) bytes", str(e))
    return f" (an allocation of {int(found.group(1)) / 2**30:.1f} GiB failed)" if found else ""


def _memory_fix(command: str) -> str:
    """What to change when ``command`` ran out of memory."""
    if command.startswith("suite"):
        return "choose smaller --sizes (LAYERSxWIDTHxHEADS) and rerun"
    return "lower --batch-size (or --max-length) and rerun"


def _line_buffered_stdout() -> None:
    """Write each stdout line at once, so that in one log (``> log 2>&1``) it sits where it was said.

    Python buffers stdout in blocks when it is a file, and stderr (progress, notes, errors) not,
    so a sweep's outcome line came after its failures' lines and a capture's notes.
    """
    with contextlib.suppress(AttributeError, ValueError):  # a replaced stdout without reconfigure
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _quiet_when_logged() -> None:
    """No library progress bars (weight loading, downloads) when stderr is a log, not a terminal.

    In a job log or a pipe a bar is one ever-growing line of carriage returns, and it
    would sit in front of the one-line error the CLI promises.
    """
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # for the processes the command starts
    _library_bars_off()


def _library_bars_off() -> None:
    """Switch off transformers' and the hub client's progress bars in this process.

    The hub client is imported already (:func:`_process_settings_kept`), so the variable
    it reads at import no longer reaches it; transformers, imported later, follows it.
    """
    hf = sys.modules.get("transformers.utils.logging")
    if hf is not None:
        hf.disable_progress_bar()  # and the hub client's
    else:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


_HUB_VARIABLES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_VERBOSITY")
"""The variables :func:`main` sets for its run (and the processes it starts), unset after."""


@contextlib.contextmanager
def _process_settings_kept() -> Iterator[None]:
    """Give the process back as :func:`main` found it (a notebook calls ``main`` in-process).

    The run sets the hub variables, silences the hub client's logger, switches off
    library progress bars and line-buffers stdout; a notebook's later downloads showed
    no bars and its hub warnings were lost. The hub client is imported first so that it
    reads the user's variables, not the run's.
    """
    import huggingface_hub.utils as hub_utils

    environ = {name: os.environ.get(name) for name in _HUB_VARIABLES}
    hub_logger = logging.getLogger("huggingface_hub")
    level, bars_on = hub_logger.level, not hub_utils.are_progress_bars_disabled()
    stdout, line_buffering = sys.stdout, getattr(sys.stdout, "line_buffering", None)
    try:
        yield
    finally:
        for name, value in environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        hub_logger.setLevel(level)
        if bars_on:
            hf = sys.modules.get("transformers.utils.logging")
            (hf.enable_progress_bar if hf is not None else hub_utils.enable_progress_bars)()
        if line_buffering is not None and sys.stdout is stdout:
            with contextlib.suppress(AttributeError, ValueError):
                stdout.reconfigure(line_buffering=line_buffering)  # type: ignore[union-attr]


@contextlib.contextmanager
def _quiet_library_bars(on: bool) -> Iterator[None]:
    """With ``on``: no progress bars from transformers or the hub client (weight loading, downloads).

    The variable is for the processes the command starts; :func:`_process_settings_kept`
    switches the bars back on and unsets it after the run.
    """
    if on:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        _library_bars_off()
    yield


def _quiet_hub_retries() -> None:
    """Keep the hub client's retry warnings out of the one-line error.

    It warns twice per retry, ten lines while the hub is unreachable; ``--debug`` or
    ``HF_HUB_VERBOSITY`` shows them.
    """
    level = os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # for the processes the command starts
    if level == "error":  # and for an import that came first
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def _fail(debug: bool, line: str, code: int, hard_exit: bool = False) -> int:
    """Print the error line; ``hard_exit`` ends the process at once (see below)."""
    if debug:
        traceback.print_exc()
    print(f"scalelens: error: {line}", file=sys.stderr)
    if hard_exit and (__name__ == "__main__" or _is_console_script()):
        # An HDF5 file whose flush failed on a full disk cannot be closed; HDF5 would try
        # again while the interpreter shuts down and crash. Everything this process wrote
        # is on disk already (the partial capture resumes), so leave without that cleanup.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _is_console_script() -> bool:
    """True when this process is the ``scalelens`` command (not main() called from Python)."""
    return Path(sys.argv[0]).name in ("scalelens", "scalelens.exe")


if __name__ == "__main__":
    sys.exit(main())
