"""A sweep: expand the spec, run or skip every task, then collect metrics and fits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scalelens import __version__
from scalelens.errors import ScalelensError, ScalelensNote
from scalelens.sweeps.executors import EXECUTORS
from scalelens.sweeps.fits import write_fits
from scalelens.sweeps.metrics import write_metrics
from scalelens.sweeps.rundir import RUN_INFO, RUN_TABLES, check_run_dir, locked_run_dir
from scalelens.sweeps.spec import SweepSpec, expand, hub_listing_notes, incomplete_checkpoints
from scalelens.sweeps.tasks import TaskOutcome, is_done, task_dir


@dataclass
class SweepSummary:
    """Outcome of a sweep run."""

    run_dir: Path
    outcomes: list[TaskOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Tasks with ``status`` (done, skipped, failed)."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[TaskOutcome]:
        """The failed tasks."""
        return [o for o in self.outcomes if o.status == "failed"]


def sweep(spec: SweepSpec, run_dir: str | Path, *, overwrite: bool = False) -> SweepSummary:
    """Run ``spec`` into ``run_dir``: tasks, then metrics.csv, fits.json and run.json.

    Finished tasks are skipped. ``run_dir`` records the spec's identity and is refused
    when it holds a sweep with other analyses, settings or suite (``overwrite``: discard
    its finished tasks and start afresh), or while another sweep is writing it. Checkpoints
    left out as half-written, and hub ids whose revisions the hub could not list, are
    each a :class:`~scalelens.errors.ScalelensNote` warning.
    """
    if not isinstance(spec, SweepSpec):  # before the run directory is created
        raise ScalelensError(
            f"spec must be a SweepSpec (e.g. SweepSpec(suite=DIR), or "
            f"scalelens.sweeps.spec.read_spec(PATH) for a spec file), got a {type(spec).__name__}")
    run_dir = Path(run_dir)
    with locked_run_dir(run_dir):
        check_run_dir(run_dir, spec, overwrite)
        return _sweep(spec, run_dir)


def _sweep(spec: SweepSpec, run_dir: Path) -> SweepSummary:
    from scalelens.measure.run import write_json

    tasks = expand(spec)
    for text in (*incomplete_checkpoints(spec), *hub_listing_notes(spec)):
        warnings.warn(text, ScalelensNote, stacklevel=3)  # at the caller of sweep()
    summary = SweepSummary(run_dir)
    plan = [{"key": t.key, "status": "skipped" if is_done(run_dir, t) else "pending"} for t in tasks]
    started = _now()
    write_json(run_dir / RUN_INFO, _run_info(spec, tasks, plan, started, finished=False))  # `inspect RUN`
    EXECUTORS[spec.executor](tasks, spec, run_dir, summary.outcomes.append)
    finished = [(t.size, task_dir(run_dir, t) / "results.json") for t in tasks if is_done(run_dir, t)]
    if finished:
        write_metrics(run_dir, finished)
        write_fits(run_dir, sizes=list(dict.fromkeys(t.size for t in tasks)),
                   last_steps=_last_steps(tasks))
    else:  # no stale tables from an earlier run may pass for this one's
        for name in RUN_TABLES:
            (run_dir / name).unlink(missing_ok=True)
    outcomes = [{"key": o.key, "status": o.status, "attempts": o.attempts, "error": o.error}
                for o in summary.outcomes]
    write_json(run_dir / RUN_INFO, _run_info(spec, tasks, outcomes, started, finished=True))
    return summary


def _last_steps(tasks: list) -> dict[str, int | None]:
    """Each size's last planned checkpoint (sizes of a family may train for different lengths).

    None for a size measured without a training step (a final model), not step 0.
    """
    last: dict[str, int | None] = {}
    for t in tasks:
        last.setdefault(t.size, None)
        if t.step is not None:
            last[t.size] = max(last[t.size] or 0, t.step)
    return last


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _run_info(spec: SweepSpec, tasks: list, outcomes: list[dict[str, Any]], started: str,
              finished: bool) -> dict[str, Any]:
    """``run.json``: the plan and, once ``finished``, each task's outcome in this run."""
    return {
        "scalelens_version": __version__,
        "created": _now(),
        "started": started,
        "finished": finished,
        "models": list(dict.fromkeys(t.source for t in tasks)),  # as the sizes: the spec's order
        "sizes": list(dict.fromkeys(t.size for t in tasks)),
        "analyses": list(spec.analyses),
        "settings": spec.to_dict(),
        "tasks": outcomes,
    }
