"""Running one sweep task: load the checkpoint, measure it, write its results.json."""

from __future__ import annotations

import argparse
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from scalelens.errors import ScalelensError, TransientError, is_disk_full
from scalelens.sweeps.spec import SweepSpec, Task


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one task.

    Attributes:
        key: The task's key (``size/revision``).
        status: ``done`` (ran now), ``skipped`` (finished earlier) or ``failed``.
        attempts: Attempts made in this run.
        error: The last error line, when failed.
    """

    key: str
    status: str
    attempts: int
    error: str | None = None


class _SettingsParser(argparse.ArgumentParser):
    """The measure CLI's analysis options, raising (not exiting) on a bad value."""

    def error(self, message: str) -> NoReturn:
        raise ScalelensError(f"sweep settings: {message.replace('argument ', '', 1)}")


def measure_settings(options: dict[str, Any]):
    """MeasureSettings from measure-CLI-style options (``{"n_needles": 1, ...}``).

    Each value goes through the measure CLI's own parsing (a list as ``1,5,10``), so a spec
    is checked as the command line is: ``batch_size = "x"`` is one clear error.
    """
    from scalelens.commands.measure import add_analysis_args, settings_from_args

    parser = _SettingsParser(add_help=False)
    add_analysis_args(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    unknown = sorted(set(options) - set(flags))
    if unknown:
        raise ScalelensError(
            f"unknown sweep setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(flags))}"
        )
    argv = []
    for key, value in options.items():
        if isinstance(value, dict | bool) or value is None:
            raise ScalelensError(f"sweep setting {key} = {value!r}: give a number, a string or a list")
        text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        argv.append(f"{flags[key]}={text}")
    return settings_from_args(parser.parse_args(argv))


def task_dir(run_dir: Path, task: Task) -> Path:
    """Where a task writes its captures and results.json."""
    return run_dir / "tasks" / task.key


def is_done(run_dir: Path, task: Task) -> bool:
    """A task is finished when its results.json exists (it is written last, atomically)."""
    return (task_dir(run_dir, task) / "results.json").is_file()


def run_task(task: Task, spec: SweepSpec, run_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Load ``task``'s model and run the spec's analyses; raises on failure."""
    from scalelens.measure.run import measure
    from scalelens.models.load import load_model

    settings = measure_settings(spec.settings)
    loaded = load_model(task.source, revision=task.revision, default_tokenizer=spec.tokenizer,
                        device=spec.device, dtype=spec.dtype)
    out = task_dir(run_dir, task)
    data = measure(loaded, tuple(spec.analyses), out, settings, progress=progress)
    return {"size": task.size, "revision": task.revision, "step": task.step, **data["model"]}


def write_error_log(run_dir: Path, task: Task, text: str) -> None:
    """Write ``task``'s error.log (its last line is what ``scalelens inspect RUN`` shows)."""
    folder = task_dir(run_dir, task)
    folder.mkdir(parents=True, exist_ok=True)
    # a path that is not UTF-8 (os.fsdecode: lone surrogates) may be in the text
    (folder / "error.log").write_text(text, errors="backslashreplace")


def attempt(task: Task, spec: SweepSpec, run_dir: Path, retries: int = 1,
            stop_on_full_disk: bool = False) -> TaskOutcome:
    """Run ``task`` unless done; never raise, except a full disk with ``stop_on_full_disk``.

    A failure is retried ``retries`` times, except a ScalelensError that is not a
    TransientError: bad settings or a broken checkpoint fail the same way every time.
    With ``stop_on_full_disk``, a full disk (or file-size limit) is raised as it came, with
    no error.log (there may be no room for one): every later task would fail on it too,
    so the sweep stops as at Ctrl-C and a rerun resumes the task.
    """
    if is_done(run_dir, task):
        return TaskOutcome(task.key, "skipped", 0)
    error = None
    for n in range(1, retries + 2):
        try:
            run_task(task, spec, run_dir)
            (task_dir(run_dir, task) / "error.log").unlink(missing_ok=True)  # an earlier attempt's
            return TaskOutcome(task.key, "done", n)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # reported per task; the sweep goes on
            if stop_on_full_disk and is_disk_full(e):
                raise
            error = f"{type(e).__name__}: {e}".splitlines()[0]
            write_error_log(run_dir, task, traceback.format_exc())
            if isinstance(e, ScalelensError) and not isinstance(e, TransientError):
                return TaskOutcome(task.key, "failed", n, error)
    return TaskOutcome(task.key, "failed", retries + 1, error)
