"""Where a sweep's run directory stands: planned, finished, failed and unfinished tasks.

Read from the directory alone (``run.json``, written when a sweep starts and again
when it ends, the task directories, and the sweep lock), so it works while a sweep
is running, after one was killed, and after one finished. ``scalelens inspect RUN``
prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from scalelens.cache.lock import lock_holder
from scalelens.errors import ScalelensError

from .rundir import LOCK_NAME, RUN_INFO, RUN_SPEC, RUN_TABLES

_OUTPUTS = (*RUN_TABLES, "report.html", "report.md")


@dataclass
class RunStatus:
    """A run directory's state.

    Attributes:
        path: The run directory.
        running: The pid of the sweep writing it now, or None.
        info: ``run.json`` (the last sweep's plan and outcomes), or None.
        state: Each task's state by key (``size/revision``): ``done``, ``failed``,
            ``unfinished`` (started, neither done nor failed) or ``pending``.
        errors: The last line of each failed task's ``error.log``.
        outputs: The derived files present (metrics, fits, report).
    """

    path: Path
    running: str | None
    info: dict | None
    state: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        """Tasks in ``state``."""
        return sum(1 for s in self.state.values() if s == state)

    def lines(self) -> list[str]:
        """The status as printable lines."""
        out = [f"{self.path}: {self._headline()}"]
        if self.info and isinstance(self.info.get("analyses"), list):
            out.append(f"analyses: {', '.join(map(str, self.info['analyses']))}")
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("done", "failed", "unfinished", "pending")
                           if self.count(s))
        out.append(f"tasks: {len(self.state)} ({counts or 'none yet'})")
        out += [f"  {size}: {text}" for size, text in self._per_size().items()]
        out += [f"failed {key}: {self.errors.get(key) or 'no error.log'}"
                for key, s in self.state.items() if s == "failed"]
        out.append(self._outputs_line())
        return out

    def _outputs_line(self) -> str:
        if not self.outputs:
            return "outputs: none yet"
        if self.running is not None:  # the tables of the sweep before, until this one ends
            return f"outputs (of the sweep before; remade when this one ends): {', '.join(self.outputs)}"
        return f"outputs: {', '.join(self.outputs)}"

    def _headline(self) -> str:
        started = (self.info or {}).get("started") or (self.info or {}).get("created")
        since = f", started {started}" if started else ""
        if self.running is not None:
            return f"a sweep is running now (process {self.running}{since})"
        if self.info is None:
            return "no sweep is running; it stopped before it recorded its plan (rerun it to resume)"
        if self.info.get("finished") is False:
            return f"the last sweep stopped before finishing{since}; rerun the same command to resume"
        ended = self.info.get("created")
        return f"the last sweep finished{f' at {ended}' if ended else ''}"

    def _per_size(self) -> dict[str, str]:
        sizes: dict[str, dict[str, list[str]]] = {}
        for key, s in self.state.items():
            size, _, revision = key.partition("/")
            sizes.setdefault(size, {}).setdefault(s, []).append(revision)
        out = {}
        for size, by_state in sizes.items():
            total = sum(len(v) for v in by_state.values())
            parts = [f"{len(by_state.get('done', []))}/{total} done"]
            parts += [f"{s}: {', '.join(by_state[s])}" for s in ("failed", "unfinished") if s in by_state]
            if "pending" in by_state:
                parts.append(f"{len(by_state['pending'])} pending")
            out[size] = "; ".join(parts)
        return out


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a sweep's run directory."""
    return path.is_dir() and ((path / RUN_SPEC).is_file() or (path / RUN_INFO).is_file())


def run_status(path: str | Path) -> RunStatus:
    """Read the state of the sweep run directory ``path`` (see :class:`RunStatus`)."""
    path = Path(path)
    if not is_run_dir(path):
        raise ScalelensError(f"{path} is not a sweep's run directory (no {RUN_SPEC} or {RUN_INFO})")
    info = _read_info(path / RUN_INFO)
    status = RunStatus(path, lock_holder(path / LOCK_NAME), info)
    planned = [t.get("key") for t in (info or {}).get("tasks", []) if isinstance(t, dict)]
    on_disk = sorted(f"{d.parent.name}/{d.name}" for d in (path / "tasks").glob("*/*") if d.is_dir())
    for key in dict.fromkeys([k for k in planned if isinstance(k, str)] + on_disk):
        status.state[key] = _task_state(path / "tasks" / key)
        if status.state[key] == "failed":
            status.errors[key] = _last_line(path / "tasks" / key / "error.log")
    status.outputs = [name for name in _OUTPUTS if (path / name).is_file()]
    return status


def _read_info(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _task_state(folder: Path) -> str:
    if (folder / "results.json").is_file():
        return "done"
    if (folder / "error.log").is_file():
        return "failed"
    return "unfinished" if folder.is_dir() and any(folder.iterdir()) else "pending"


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
