"""Exclusive write locks: one writer per capture file, one sweep per run directory.

A capture writer holds ``<file>.lock`` while it is open; a sweep holds ``<run>/.sweep.lock``.
The capture's lock sits beside the file itself (a symlink's target), so writers that reach
one file by two names share one lock.

Readers take no lock (they read a snapshot, see ``cache/reader.py``). The lock is an
``flock`` on a side file, so the kernel drops it when the writing process dies, even by
``kill -9``; a stale ``.lock`` file left by a killed writer does not block the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from scalelens.errors import TransientError

_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)
"""Why a symlink target's directory may take no lock file (ENOENT: a dangling link)."""


class WriteLock:
    """Exclusive, non-blocking lock for writing ``path``; :meth:`release` when done."""

    def __init__(self, path: Path, writer: str = "capture", lock_path: Path | None = None) -> None:
        """Prepare the lock of ``path``; :meth:`acquire` takes it.

        Args:
            path: What is written (a capture file, a run directory).
            writer: What writes it, for the error message (``capture``, ``sweep``).
            lock_path: The lock file; default ``<path>.lock`` beside the file ``path``
                names (beside a symlink's target, not the link).
        """
        self.path = path
        self.writer = writer
        # Beside the link when the target's directory takes no lock file (read-only media):
        # a symlinked complete capture is then still reused, as before locks followed links.
        self._beside_link: Path | None = None
        if lock_path is None:
            real = path.resolve()
            lock_path = real.with_name(real.name + ".lock")
            link_side = path.with_name(path.name + ".lock")
            if link_side.absolute() != lock_path:
                self._beside_link = link_side
        self.lock_path = lock_path
        self._fd: int | None = None

    def acquire(self) -> WriteLock:
        """Take the lock, or raise one clear error naming the process that holds it."""
        for _ in range(3):  # a finishing writer may unlink the lock file between open and flock
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if self._beside_link is None or e.errno not in _UNWRITABLE:
                    raise
                self.lock_path, self._beside_link = self._beside_link, None
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise TransientError(
                    f"{self.path} is being written by another {self.writer} (process {holder}); "
                    "wait for it to finish or choose another --out"
                ) from None
            if self._still_linked(fd):
                self._fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(os.getpid()).encode(), 0)
                except BaseException:  # a full disk: drop the lock, or this process keeps it
                    self.release()
                    raise
                return self
            os.close(fd)
        raise TransientError(f"could not lock {self.path} for writing; try again")

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(lock_path: Path) -> str | None:
    """The pid of the process that holds the lock at ``lock_path``, or None when none does.

    Never takes the lock itself (a probe could make a writer starting at that moment
    fail). On Linux ``/proc/locks`` says whether the file is locked and by whom;
    elsewhere the recorded pid counts while that process is alive.
    """
    try:
        st = os.stat(lock_path)
        recorded = lock_path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return recorded if recorded.isdigit() and pid_alive(int(recorded)) else None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for line in table.splitlines():
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"
        if len(fields) > 5 and fields[1] == "FLOCK":
            dev, _, ino = fields[5].rpartition(":")
            # An inode number is unique within one file system only. Where stat's device is
            # not the one /proc/locks names (btrfs subvolumes), the holder must be the process
            # whose pid the lock file records.
            if ino == str(st.st_ino) and (dev == device or fields[4] == recorded):
                return fields[4]
    return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
