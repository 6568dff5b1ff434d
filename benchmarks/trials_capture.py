"""Kill -9, disk-full and read-only trials of ``scalelens capture`` (see ``reliability``)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .trials_common import (
    ConcurrentReader,
    Runner,
    Timing,
    build_model_dir,
    capture_argv,
    cli,
    differences,
    file_state,
    mount_tmpfs,
    one_error_line,
    progress_of,
    quiet_env,
    run_cli,
    time_capture,
    unmount,
    wait_for,
    wait_until,
    write_prompts,
)


@dataclass
class CaptureTrial:
    """One kill -9 trial of a capture."""

    trial: int
    mode: str
    kill_after_s: float
    state_at_kill: str
    inspect_ok: bool
    inspect_note: str
    reader_reads: int
    reader_analyses: int
    reader_errors: list[str]
    rerun_rc: int
    rerun_note: str
    identical: bool
    survived: bool
    seconds: float


def _done_at_least(out: Path, target: int) -> bool:
    got = progress_of(out)
    if got is None:
        time.sleep(0.02)
        return False
    return got[0] >= target or got[1]


def capture_trial(
    trial: int,
    rng: random.Random,
    work: Path,
    model_dir: Path,
    prompts: Path,
    ref: dict[str, np.ndarray],
    timing: Timing,
    mode: str,
    batch_size: int = 4,
    runner: Runner = run_cli,
) -> CaptureTrial:
    """Kill a capture at a random moment, inspect, rerun, compare with the reference."""
    t_start = time.monotonic()
    out = work / f"trial{trial:03d}.h5"
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".creating").unlink(missing_ok=True)
    argv = capture_argv(model_dir, prompts, out, batch_size)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet_env())
    reader = ConcurrentReader(out, ref)
    reader.start()
    if mode == "any":  # anywhere in the process's life: imports, loading, creating, writing
        wait_until(t0 + rng.uniform(0, timing.total), proc)
    elif mode == "creating":  # while the file is being created (before the rename)
        creating = out.with_name(out.name + ".creating")
        wait_for(creating.exists, 600, proc)
        wait_until(time.monotonic() + rng.uniform(0, 0.02), proc)
    else:  # after a random number of finished prompts, somewhere inside the next batch
        n = len(ref["lengths"])
        target = rng.randrange(0, n)
        wait_for(partial(_done_at_least, out, target), 600, proc)
        wait_until(time.monotonic() + rng.uniform(0, timing.writing * batch_size / n), proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    kill_after = time.monotonic() - t0
    reader.stop()
    reader.join()
    state = file_state(out)

    rc, stdout, stderr = runner(cli("inspect", str(out)))
    if state in ("absent", "creating"):  # nothing to read yet: one clear line, no traceback
        inspect_ok = rc == 2 and one_error_line(stderr) is not None
        inspect_note = (one_error_line(stderr) or stderr.strip()[-200:]).removeprefix("scalelens: error: ")
    else:
        inspect_ok = rc == 0 and str(out) in stdout
        inspect_note = stdout.splitlines()[0] if rc == 0 and stdout else stderr.strip()[-200:]

    rc2, _, err2 = runner(argv)
    rerun_note = "completed"
    if rc2 != 0:
        line = one_error_line(err2) or err2.strip()[-300:]
        rerun_note = line
    refused_complete = rc2 == 2 and state == "complete" and "already complete" in err2
    identical = out.exists() and not differences(ref, out)
    survived = inspect_ok and not reader.errors and (rc2 == 0 or refused_complete) and identical
    return CaptureTrial(
        trial,
        mode,
        round(kill_after, 3),
        state,
        inspect_ok,
        inspect_note,
        reader.reads,
        reader.analyses,
        reader.errors[:5],
        rc2,
        rerun_note,
        identical,
        survived,
        round(time.monotonic() - t_start, 2),
    )


@dataclass
class FaultTrial:
    """A disk-full or read-only trial."""

    name: str
    first_rc: int
    first_error: str
    state_after_error: str
    resumed_rc: int
    resumed_note: str
    identical: bool
    survived: bool


def _note(rc: int, stderr: str) -> str:
    return "completed" if rc == 0 else (one_error_line(stderr) or stderr.strip()[-300:])


def disk_full_trial(
    work: Path,
    model_dir: Path,
    prompts: Path,
    ref: dict[str, np.ndarray],
    ref_bytes: int,
    fraction: float = 0.5,
    runner: Runner = run_cli,
) -> FaultTrial:
    """Fill a tmpfs mid-capture, then grow it and rerun: the capture must resume to the reference."""
    mnt = work / f"full{int(fraction * 100)}"
    size_kib = max(16, int(ref_bytes * fraction) // 1024)
    mount_tmpfs(mnt, f"{size_kib}k")
    try:
        out = mnt / "c.h5"
        argv = capture_argv(model_dir, prompts, out)
        rc, _, err = runner(argv)
        line = one_error_line(err) or err.strip()[-300:]
        state = file_state(out)
        mount_tmpfs(mnt, f"{2 * ref_bytes // 1024 + 1024}k")
        rc2, _, err2 = runner(argv)
        identical = out.exists() and not differences(ref, out)
        ok = (
            rc == 2
            and "no space left" in line
            and "Traceback" not in err
            and rc2 == 0
            and identical
            and not out.with_name("c.h5.creating").exists()
        )
        return FaultTrial(
            f"disk full at {int(fraction * 100)}% of the file",
            rc,
            line,
            state,
            rc2,
            _note(rc2, err2),
            identical,
            ok,
        )
    finally:
        unmount(mnt)


def read_only_trial(
    work: Path,
    model_dir: Path,
    prompts: Path,
    ref: dict[str, np.ndarray],
    ref_bytes: int,
    runner: Runner = run_cli,
) -> FaultTrial:
    """Kill a capture, make its directory read-only: rerun says so; writable again: it resumes."""
    mnt = work / "readonly"
    mount_tmpfs(mnt, f"{2 * ref_bytes // 1024 + 1024}k")
    try:
        out = mnt / "c.h5"
        argv = capture_argv(model_dir, prompts, out)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet_env())
        wait_for(partial(_done_at_least, out, len(ref["lengths"]) // 3), 600, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mount_tmpfs(mnt, f"{2 * ref_bytes // 1024 + 1024}k", read_only=True)
        state = file_state(out)
        rc, _, err = runner(argv)
        line = one_error_line(err) or err.strip()[-300:]
        rc_inspect, _, _ = runner(cli("inspect", str(out)))
        mount_tmpfs(mnt, f"{2 * ref_bytes // 1024 + 1024}k")
        rc2, _, err2 = runner(argv)
        identical = out.exists() and not differences(ref, out)
        ok = rc == 2 and "not writable" in line and rc_inspect == 0 and rc2 == 0 and identical
        return FaultTrial(
            "output directory read-only after a kill", rc, line, state, rc2, _note(rc2, err2), identical, ok
        )
    finally:
        unmount(mnt)


def prepare_capture(work: Path, n_prompts: int, batch_size: int = 4) -> tuple[Path, Path, Path, Timing]:
    """Model, prompts and an uninterrupted reference capture; returns (model, prompts, ref, timing)."""
    model_dir = build_model_dir(work / "model")
    prompts = write_prompts(work / "prompts.txt", n_prompts)
    ref = work / "reference.h5"
    ref.unlink(missing_ok=True)
    timing = time_capture(capture_argv(model_dir, prompts, ref, batch_size), ref)
    return model_dir, prompts, ref, timing
