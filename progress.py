"""Progress bars that suit where stderr goes: a live bar on a terminal, plain lines in a log.

On a terminal (``stderr.isatty()`` and ``TERM`` is not ``dumb``) a step shows tqdm's bar,
redrawn in place. In a notebook, tqdm's widget. Anywhere else (a job log, ``nohup``, a
pipe, CI) a bar would be one line of carriage returns growing by a redraw every 0.1 s,
with cursor-movement escape codes for nested bars; there each bar prints plain lines
instead: one at most every ``log_every`` seconds while it runs (none before its first
unit is done) and one when it ends, e.g. ``sweep: 3/6 tasks [00:12<00:12, 4.16s/task]``.

Inside :func:`scalelens.output.quiet` (the CLI's ``--quiet``) no bar is drawn.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

from tqdm import TqdmExperimentalWarning, tqdm

from scalelens.output import is_quiet

with warnings.catch_warnings():  # as tqdm.auto does: its notebook mode warns that it is experimental
    warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
    from tqdm.autonotebook import tqdm as auto_tqdm  # tqdm's own class outside a notebook

LOG_EVERY = 30.0
"""Seconds between a log bar's lines while its step runs (besides its first and last)."""

_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def live_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal that can redraw a line in place."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        tty = False
    return tty and os.environ.get("TERM", "") != "dumb"


class LogBar(tqdm):  # type: ignore[type-arg]
    """A tqdm whose every display is one plain line, ``log_every`` seconds apart at most.

    Nothing is shown before the first unit is done (a step that fails on its first batch
    leaves only its error line), and a bar closed unfinished (an error, Ctrl-C) shows
    nothing more, so no progress line follows the error line. The finished state is shown
    once (tqdm redraws the last state when it closes).
    """

    def __init__(self, *args: Any, log_every: float = LOG_EVERY, **kwargs: Any) -> None:
        self._shown: int | None = None
        kwargs.update(mininterval=log_every, maxinterval=max(log_every, 1.0), miniters=1,
                      dynamic_ncols=False, ascii=True, bar_format=_LOG_FORMAT, position=None)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the current state as one line, unless this state was written already."""
        if msg is None and (self._shown == self.n or self.n == self.initial):
            return True
        self._shown = self.n
        fp = self.fp
        fp.write((msg if msg is not None else self.__str__()) + "\n")
        fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: lines in a log stay."""

    def close(self) -> None:
        """Write the final state (unless written already) with the overall rate, and no carriage return."""
        if getattr(self, "disable", True):  # closed already, or never opened
            return
        self.disable = True
        self._decr_instances(self)
        self._ema_dt = lambda: None  # the overall rate, as tqdm's own close shows
        if self.total is None or self.n >= self.total:
            with self._lock:
                self.display()


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, log_every: float = LOG_EVERY,
                 **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A progress bar over ``total`` ``unit`` s for the step ``desc``, drawn to suit stderr.

    Args:
        iterable: Items to iterate over with the bar (or None and call ``update``).
        total: Units of work in the step (default: ``len(iterable)``).
        desc: What the step is, e.g. ``capture x.h5``.
        unit: One unit's name, singular (``prompt``, ``task``).
        disable: Show nothing (as inside :func:`scalelens.output.quiet`).
        log_every: In a log (stderr not a terminal), the most seconds between lines.
        **kwargs: More tqdm options (``initial``, ``position``, ``leave``...).
    """
    disable = disable or is_quiet()
    if disable or auto_tqdm is not tqdm or live_terminal():  # a notebook's widget, or a live bar
        return auto_tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)
    kwargs.pop("position", None)
    return LogBar(iterable, total=total, desc=desc, unit=unit, log_every=log_every, **kwargs)
