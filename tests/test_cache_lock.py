"""One writer per capture file: a second writer gets one clear line; a killed writer blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from cli_run import assert_one_line, file_size_limit, run_cli
from tiny_models import prompts

from scalelens.cache.lock import WriteLock, lock_holder
from scalelens.cache.reader import CaptureFile
from scalelens.cli import main
from scalelens.errors import ScalelensError

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from scalelens.cache.lock import WriteLock
    WriteLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture()
def args(model_dir, tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(prompts(6)) + "\n")
    out = tmp_path / "x.h5"
    return out, ["capture", "--model", str(model_dir), "--prompts", str(p), "--probes", "resid",
                 "--out", str(out)]


def _holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_while_the_first_holds_the_file(args, capsys):
    out, argv = args
    holder = _holder(out)
    try:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"being written by another capture (process {holder.pid})" in err
        assert not out.exists()
    finally:
        holder.terminate()
        holder.wait()


def test_a_file_reached_through_a_symlink_is_locked_as_the_file(args, capsys):
    """The lock sat beside the name given, so a writer of x.h5 and one of a symlink to it held
    two locks and wrote one file at once (one then failed: "batch starts at 195 but 196 prompts
    are done"). The lock is now the file's own, whatever name reaches it."""
    out, argv = args
    assert main(argv) == 0
    capsys.readouterr()  # the first capture's progress lines
    link = out.with_name("link.h5")
    link.symlink_to(out.name)
    holder = _holder(out)
    try:
        code = main([*argv[:-1], str(link)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"being written by another capture (process {holder.pid})" in err
    finally:
        holder.terminate()
        holder.wait()
    assert link.is_symlink() and not link.with_name("link.h5.lock").exists()


def test_a_killed_writer_leaves_a_stale_lock_that_blocks_nobody(args, capsys):
    out, argv = args
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert out.with_name("x.h5.lock").exists()  # stale file, but the kernel dropped the flock
    assert main(argv) == 0
    assert not out.with_name("x.h5.lock").exists()
    with CaptureFile(out) as f:
        assert f.complete and f.n_done == 6


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    path = tmp_path / "y.h5"
    first = WriteLock(path).acquire()
    with pytest.raises(ScalelensError, match=f"process {os.getpid()}"):
        WriteLock(path).acquire()
    first.release()
    first.release()  # idempotent
    assert not path.with_name("y.h5.lock").exists()
    WriteLock(path).acquire().release()


def test_a_lock_whose_pid_cannot_be_written_is_dropped(args, capsys):
    """The disk filled before the lock file got its pid: the error is the full disk's, and once
    there is room again the same process can write the file (the lock was not kept)."""
    out, argv = args
    with file_size_limit(0):
        rc, _, err = run_cli(capsys, argv)
    assert_one_line(rc, err, "file-size limit")
    assert not out.with_name("x.h5.lock").exists()
    assert main(argv) == 0, capsys.readouterr().err
    with CaptureFile(out) as f:
        assert f.complete and f.n_done == 6


def test_overwrite_replaces_a_complete_file(args, capsys):
    out, argv = args
    assert main(argv) == 0
    inode = out.stat().st_ino
    assert main(argv) == 2 and "already complete" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert out.stat().st_ino != inode and not out.with_name("x.h5.lock").exists()
    with CaptureFile(out) as f:
        assert f.complete


def test_a_flock_on_another_file_system_with_the_same_inode_number_is_no_writer(args, tmp_path, capsys):
    """lock_holder matched /proc/locks lines on the inode number alone, which is unique within one
    file system only: any process holding a flock on another file system's file of that number
    was named as the capture's writer (and `inspect RUN` said a sweep was running). Two fresh
    tmpfs number their files alike, which makes such a pair."""
    from benchmarks import reliability as rel

    if not rel.can_mount():
        pytest.skip("needs root to mount two small tmpfs")
    _, argv = args
    a, b = tmp_path / "a", tmp_path / "b"
    rel.mount_tmpfs(a, "16m")
    try:
        rel.mount_tmpfs(b, "1m")
        out = a / "x.h5"
        assert main([*argv[:-1], str(out), "--batch-size", "2"]) == 0
        import h5py

        with h5py.File(out, "r+") as f:  # as a capture killed after its first batch leaves it
            f["progress"][...] = [2, 0]
        stale = out.with_name("x.h5.lock")
        stale.write_text("999999999")  # what a kill -9'd writer leaves
        ino = os.stat(stale).st_ino
        other = next((p for p in (b / f"f{i}" for i in range(5000))
                      if p.touch() is None and os.stat(p).st_ino == ino), None)
        if other is None:
            pytest.skip("no file of the same inode number on the second tmpfs")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(other)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            assert lock_holder(stale) is None
            capsys.readouterr()
            assert main(["inspect", str(out)]) == 0
            first = capsys.readouterr().out.splitlines()[0]
            assert first == f"{out}: incomplete (2/6 prompts; rerun the capture command to finish it)"
            writer = _holder(out)  # the real writer on the same file system is still named
            try:
                assert lock_holder(stale) == str(writer.pid)
            finally:
                writer.terminate()
                writer.wait()
        finally:
            holder.communicate("")
    finally:
        rel.unmount(b)
        rel.unmount(a)


def test_a_complete_capture_symlinked_from_read_only_media_is_reused(model_dir, tmp_path):
    """The lock moved beside a symlink's target: a complete capture on read-only media (a shared
    store) linked into a writable directory, which `measure` reused before, failed with
    "Read-only file system: .../x.h5.lock". Where the target's directory takes no lock file, the
    lock sits beside the link again."""
    from benchmarks import reliability as rel
    from scalelens.capture import capture
    from scalelens.models.load import load_model
    from scalelens.probes.spec import preset

    if not rel.can_mount():
        pytest.skip("needs root to mount a small read-only tmpfs")
    lm = load_model(str(model_dir))
    store = tmp_path / "store"
    rel.mount_tmpfs(store, "16m")
    try:
        capture(lm, [preset("resid")], prompts(4), store / "x.h5", batch_size=2, progress=False)
        rel.mount_tmpfs(store, "16m", read_only=True)
        work = tmp_path / "work"
        work.mkdir()
        (work / "x.h5").symlink_to(store / "x.h5")
        out = capture(lm, [preset("resid")], prompts(4), work / "x.h5", batch_size=2, progress=False,
                      reuse_complete=True)
        with CaptureFile(out) as f:
            assert f.complete and f.n_done == 4
        assert (work / "x.h5").is_symlink() and not (work / "x.h5.lock").exists()
    finally:
        rel.unmount(store)
