"""User-facing errors: one clear line naming the problem and the fix."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ScalelensError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI.

    The message should name the problem and, where there is one, the fix.
    """


class IncompatibleResumeError(ScalelensError):
    """An existing output file was made with another model, probe spec or prompt set."""


class TransientError(ScalelensError):
    """A failure that may pass when the same work is retried.

    The hub unreachable, an output locked by another process: sweeps retry these and
    no other ScalelensError.
    """


class ScalelensWarning(UserWarning):
    """A note about the user's input or results that does not stop the work.

    The CLI prints these as one ``scalelens: warning: ...`` line; Python users can
    filter them with ``warnings.filterwarnings("ignore", category=ScalelensWarning)``.
    """


class ScalelensNote(ScalelensWarning):
    """Information that needs no action (a checkpoint left out, a fallback taken).

    Library code issues these as warnings so Python users see and can filter them; the CLI
    prints them as ``note: ...`` lines, silenced by ``--quiet``.
    """
