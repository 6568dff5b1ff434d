"""Running the CLI in-process from tests: exit code, stdout and stderr; the one-line check."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from scalelens.cli import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with argparse's SystemExit turned into the exit code; only its own output.

    What the test printed before (transformers' "Writing model shards" bar while it saved a
    model) is dropped first.
    """
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line(rc: int, err: str, *needles: str, code: int = 2) -> str:
    """One ``scalelens...: error:`` line holding every needle, exit ``code``, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("scalelens") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE in this process: writes past ``limit`` bytes fail with EFBIG.

    A real failure of the output side, as a full disk's ENOSPC, that needs no root or mount.
    No bytecode is written meanwhile: importlib does not check how much of a ``.pyc`` was
    written, so a module first imported inside (the CLI imports lazily) would leave one cut
    at ``limit`` that every later process fails to read ("marshal data too short").
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    no_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        sys.dont_write_bytecode = no_bytecode
        signal.signal(signal.SIGXFSZ, handler)


_STARTING_GUN = """
import sys, time
from pathlib import Path
print("ready", flush=True)
while not Path(sys.argv[1]).exists():
    time.sleep(0.001)
"""


def race(body: str, go: Path, argvs: list[list[str]]) -> None:
    """Run the Python ``body`` in one process per argv (its ``sys.argv[2:]``), all released at
    once when ``go`` appears, and assert that each exits 0."""
    procs = [subprocess.Popen([sys.executable, "-c", _STARTING_GUN + body, str(go), *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err


_HOLD = """
import sys
{setup}
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(setup: str, *argv: str) -> Iterator[int]:
    """Run ``setup`` (Python that takes a lock from ``sys.argv[1:]``) in another process that
    keeps it until the block ends; yield that process's pid."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(setup=setup), *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.communicate("")
