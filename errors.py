"""User-facing errors: one clear line naming the problem and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The errnos of an output that has no room: a full disk, a quota, a file-size limit."""

# HDF5 writes "errno = 28" in an h5py error's text; Rust libraries (safetensors, tokenizers)
# end theirs with "(os error 28)".
_ERRNO_IN_TEXT = re.compile(r"(?:errno = |\(os error )(\d+)")
# HDF5's "file write failed: ..., filename = '/runs/x.h5.creating', file descriptor = 4, errno = 27, ..."
_FILENAME_IN_TEXT = re.compile(r"filename = '([^']+)'")


def errno_of(e: BaseException) -> int | None:
    """The errno of an OSError, or the one named inside an h5py or Rust library error's text."""
    code = getattr(e, "errno", None)
    if isinstance(code, int):
        return code
    match = _ERRNO_IN_TEXT.search(str(e))
    return int(match.group(1)) if match else None


def filename_of(e: BaseException) -> str | None:
    """The file an OSError names, or the one inside an h5py error's text (HDF5's ``filename = '...'``)."""
    name = getattr(e, "filename", None)
    if isinstance(name, str | bytes) and name:
        return os.fsdecode(name)
    match = _FILENAME_IN_TEXT.search(str(e))
    return match.group(1) if match else None


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name ``path`` in an I/O error raised inside that names no file, so the CLI's line can.

    A write's OSError (``[Errno 28] No space left on device``) and a Rust library's error
    (``File too large (os error 27)``) say nothing of the file; the error gets ``path`` as
    its ``filename`` (see :func:`filename_of`).
    """
    try:
        yield
    except Exception as e:
        if errno_of(e) is not None and filename_of(e) is None:
            with contextlib.suppress(AttributeError, TypeError):  # an exception type without __dict__
                e.filename = os.fspath(path)  # type: ignore[attr-defined]
        raise


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or, for a :class:`ScalelensError`, what it was raised from) is a full disk.

    A ScalelensError that wraps one (``cannot create X: ...``) counts: its cause is kept as
    ``__cause__`` or, after ``raise ... from None``, as ``__context__``.
    """
    if isinstance(e, ScalelensError):
        cause = e.__cause__ or e.__context__
        return cause is not None and errno_of(cause) in DISK_FULL
    return errno_of(e) in DISK_FULL


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
