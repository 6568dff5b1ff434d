"""Kill -9 trials of ``scalelens sweep`` on the micro suite (see ``reliability``)."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h5py

from .trials_common import (
    Runner,
    Timing,
    cli,
    content_hash,
    one_error_line,
    progress_of,
    quiet_env,
    run_cli,
    wait_for,
    wait_until,
)


class PartialCapture:
    """A poll condition: true when a capture under ``run/tasks`` is half written for the
    ``skip + 1``-th time it is looked at (so kills land in different captures)."""

    def __init__(self, run: Path, skip: int) -> None:
        """Watch ``run``; let ``skip`` sightings pass."""
        self.run, self.skip, self.seen = run, skip, 0

    def __call__(self) -> bool:
        """Whether to kill now."""
        for path in self.run.glob("tasks/*/*/*.h5"):
            got = progress_of(path)
            if got is not None and not got[1] and got[0] > 0:
                self.seen += 1
                return self.seen > self.skip
        time.sleep(0.005)
        return False


def _tasks_done_at_least(run: Path, target: int) -> bool:
    if len(list(run.glob("tasks/*/*/results.json"))) >= target:
        return True
    time.sleep(0.02)
    return False


SWEEP_SETTINGS = {
    "context_lengths": [30],
    "depths": [0.2, 0.8],
    "n_needles": 1,
    "ablation_k": 0,
    "n_sequences": 32,
    "seq_length": 48,
    "dilutions": [1, 2],
    "dominance_prompts": 4,
    "batch_size": 1,
}


def write_sweep_spec(path: Path, suite: Path, sizes: list[str], steps: list[int]) -> Path:
    """A TOML sweep spec over ``sizes`` x ``steps`` of the micro suite with small settings."""
    lines = [
        f'suite = "{suite}"',
        f"sizes = {json.dumps(sizes)}",
        f"checkpoints = {json.dumps(steps)}",
        "",
        "[settings]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in SWEEP_SETTINGS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def sweep_argv(spec: Path, out: Path) -> list[str]:
    """The sweep command every trial runs (and reruns)."""
    return cli("sweep", "--spec", str(spec), "--out", str(out))


@dataclass
class SweepSnapshot:
    """What a killed sweep left: finished tasks and complete captures."""

    results: dict[str, tuple[str, int]] = field(default_factory=dict)  # task -> (sha256, mtime_ns)
    captures: dict[str, tuple[str, str]] = field(default_factory=dict)  # file -> (created, content)
    partial: dict[str, str | None] = field(default_factory=dict)  # file -> created (None: unreadable)
    created: dict[str, str] = field(default_factory=dict)  # every readable capture -> created


def snapshot_sweep(run: Path) -> SweepSnapshot:
    """Record every results.json and every complete capture under ``run/tasks``."""
    from scalelens.cache.reader import CaptureFile
    from scalelens.errors import ScalelensError

    snap = SweepSnapshot()
    for path in sorted(run.glob("tasks/*/*/results.json")):
        key = str(path.parent.relative_to(run / "tasks"))
        snap.results[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    for path in sorted(run.glob("tasks/*/*/*.h5")):
        rel = str(path.relative_to(run))
        try:
            with CaptureFile(path) as f:
                complete = f.complete
            with h5py.File(path, "r", locking=False) as h:
                created = str(h.attrs["created"])
        except (ScalelensError, OSError, KeyError):
            snap.partial[rel] = None
            continue
        snap.created[rel] = created
        if complete:
            snap.captures[rel] = (created, content_hash(path))
        else:
            snap.partial[rel] = created
    return snap


@dataclass
class SweepTrial:
    """Kills of one sweep, then a rerun to the end."""

    trial: int
    kills: list[float]
    kill_modes: list[str]
    tasks_done_before_rerun: int
    captures_complete_before_rerun: int
    partial_captures_left_by_kills: int
    rerun_rc: int
    redone_tasks: list[str]
    touched_captures: list[str]
    skipped_ok: bool
    metrics_equal: bool
    fits_equal: bool
    report_during_sweep: str
    survived: bool
    seconds: float


def read_metrics(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def sweep_trial(
    trial: int,
    rng: random.Random,
    work: Path,
    spec: Path,
    ref_run: Path,
    timing: Timing,
    n_kills: int,
    n_tasks: int,
    report_during: bool = False,
    runner: Runner = run_cli,
    modes_wanted: list[str] | None = None,
) -> SweepTrial:
    """Kill a sweep ``n_kills`` times at random moments, rerun it, compare with ``ref_run``.

    Each kill picks a mode (or takes ``modes_wanted[k]``): ``any`` moment of the driver's
    life, after a random number of finished ``tasks``, or while a task's ``capture`` is
    half written.
    """
    t_start = time.monotonic()
    run = work / f"sweep{trial:03d}"
    shutil.rmtree(run, ignore_errors=True)
    argv = sweep_argv(spec, run)
    kills: list[float] = []
    modes: list[str] = []
    snaps: list[SweepSnapshot] = []
    report_note = "not run"
    for k in range(n_kills):
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet_env())
        if report_during and k == 0:  # a report of the run directory while the sweep writes it
            wait_for(partial(_tasks_done_at_least, run, 1), 600, proc)
            rc, _, err = run_cli(cli("report", str(run), "--out", str(work / f"report{trial}.html")))
            report_note = "ok" if rc == 0 else (one_error_line(err) or f"rc {rc}: {err.strip()[-300:]}")
        mode = modes_wanted[k] if modes_wanted else rng.choice(("any", "tasks", "capture"))
        if mode == "any":  # anywhere in the driver's life
            wait_until(t0 + rng.uniform(0, timing.total), proc)
        elif mode == "tasks":  # after a random number of finished tasks, somewhere inside the next one
            wait_for(partial(_tasks_done_at_least, run, rng.randrange(0, n_tasks)), 600, proc)
            wait_until(time.monotonic() + rng.uniform(0, timing.writing / n_tasks), proc)
        else:  # while a task's capture is half written
            skip = rng.randrange(0, n_tasks)
            wait_for(PartialCapture(run, skip), 600, proc)
        modes.append(mode)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(round(time.monotonic() - t0, 2))
        snaps.append(snapshot_sweep(run))
    before = snaps[-1]
    rc, _, err = runner(argv)
    snaps.append(snapshot_sweep(run))
    redone, touched = [], []
    for prev, later in zip(snaps, snaps[1:], strict=False):  # what one run left, the next kept
        redone += [k for k, v in prev.results.items() if later.results.get(k) != v]
        touched += [k for k, v in prev.captures.items() if later.captures.get(k) != v]
        # an interrupted capture is resumed, not created again (its creation time stays)
        touched += [
            k
            for k, created in prev.partial.items()
            if created is not None and later.created.get(k) != created
        ]
    partial_seen = len({k for snap in snaps[:-1] for k, c in snap.partial.items() if c is not None})
    status = task_statuses(run)
    skipped_ok = all(status.get(k) == "skipped" for k in before.results)
    metrics_equal = (run / "metrics.csv").exists() and (
        read_metrics(run / "metrics.csv") == read_metrics(ref_run / "metrics.csv")
    )
    fits_equal = (run / "fits.json").exists() and (
        json.loads((run / "fits.json").read_text()) == json.loads((ref_run / "fits.json").read_text())
    )
    report_ok = report_note in ("not run", "ok") or report_note.startswith("scalelens: error:")
    survived = (
        rc == 0 and not redone and not touched and skipped_ok and metrics_equal and fits_equal and report_ok
    )
    return SweepTrial(
        trial,
        kills,
        modes,
        len(before.results),
        len(before.captures),
        partial_seen,
        rc,
        redone,
        touched,
        skipped_ok,
        metrics_equal,
        fits_equal,
        report_note,
        survived,
        round(time.monotonic() - t_start, 2),
    )


def task_statuses(run: Path) -> dict[str, str]:
    """Task key -> status of the last sweep run (from tasks.json or run.json, whichever lists them)."""
    for name in ("tasks.json", "run.json"):
        path = run / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        tasks = data.get("tasks", data) if isinstance(data, dict) else data
        if isinstance(tasks, list):
            return {t["key"]: t["status"] for t in tasks if isinstance(t, dict) and "key" in t}
    return {}


def time_sweep(argv: list[str], runner: Runner = run_cli) -> Timing:
    """Run a sweep uninterrupted; measure it."""
    t0 = time.monotonic()
    rc, _, err = runner(argv)
    if rc != 0:
        raise RuntimeError(f"reference sweep failed: {err[-2000:]}")
    total = time.monotonic() - t0
    return Timing(total, total)
