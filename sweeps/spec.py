"""Sweep specifications: which (size, checkpoint) models to measure, from flags or a TOML file."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelens.errors import ScalelensError

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
LOG_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Task:
    """One unit of sweep work: one model size at one checkpoint.

    Attributes:
        size: Size label (``70m``, or a suite size name).
        source: What ``load_model`` loads (hub id or directory).
        revision: Checkpoint revision (``step3000``), or None.
        step: Training step, or None.
    """

    size: str
    source: str
    revision: str | None
    step: int | None

    @property
    def key(self) -> str:
        """Directory name under ``RUN_DIR/tasks``."""
        return f"{self.size}/{self.revision or 'main'}"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep over sizes x checkpoints.

    Attributes:
        suite: A mini-suite directory (with manifest.json), or None.
        family: ``pythia`` for the hub family, or None.
        sizes: Sizes to include; None: all of the suite / family.
        checkpoints: ``log``, ``all``, ``final`` or explicit steps.
        analyses: Analyses to run per task.
        executor: ``local`` or ``ray``.
        address: Ray cluster address (None: start a local Ray).
        device: Device each task runs on.
        settings: Analysis options (names as the measure CLI flags, underscores).
    """

    suite: str | None = None
    family: str | None = None
    sizes: tuple[str, ...] | None = None
    checkpoints: str | tuple[int, ...] = "log"
    analyses: tuple[str, ...] = ("retrieval_heads", "massive_activations", "superposition",
                                 "text_dominance")
    executor: str = "local"
    address: str | None = None
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.suite is None) == (self.family is None):
            raise ScalelensError("a sweep needs exactly one of --suite DIR or --family pythia")
        if self.family is not None and self.family != "pythia":
            raise ScalelensError(f"unknown family {self.family!r}; only 'pythia' is built in")
        if self.executor not in ("local", "ray"):
            raise ScalelensError(f"unknown executor {self.executor!r}; use local or ray")
        if isinstance(self.checkpoints, str) and self.checkpoints not in ("log", "all", "final"):
            raise ScalelensError(
                f"bad checkpoints {self.checkpoints!r}; use log, all, final or a list of steps"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in run.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


_FIELDS = {f.name for f in dataclasses.fields(SweepSpec)}


def read_spec(path: str | Path) -> SweepSpec:
    """Read a TOML sweep spec; unknown keys are an error naming the valid ones."""
    p = Path(path)
    if not p.is_file():
        raise ScalelensError(f"sweep spec {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScalelensError(f"sweep spec {p} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ScalelensError(
            f"sweep spec {p}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_FIELDS))}"
        )
    for key in ("sizes", "analyses"):
        if key in data:
            data[key] = tuple(data[key])
    if isinstance(data.get("checkpoints"), list):
        data["checkpoints"] = tuple(int(s) for s in data["checkpoints"])
    return SweepSpec(**data)


def _thin(steps: list[int], linear_points: int = 8) -> list[int]:
    """Pythia's log part (0..512), then ``linear_points`` evenly spaced later steps."""
    early = [s for s in steps if s in LOG_STEPS]
    late = [s for s in steps if s not in LOG_STEPS]
    if len(late) > linear_points:
        idx = {round(i * (len(late) - 1) / (linear_points - 1)) for i in range(linear_points)}
        late = [late[i] for i in sorted(idx)]
    return early + late


def select_steps(available: list[int], checkpoints: str | tuple[int, ...]) -> list[int]:
    """Pick steps from ``available`` by ``log``/``all``/``final`` or an explicit list."""
    available = sorted(available)
    if isinstance(checkpoints, tuple):
        missing = sorted(set(checkpoints) - set(available))
        if missing:
            raise ScalelensError(f"checkpoint step(s) {missing} not available; available: {available}")
        return sorted(checkpoints)
    if checkpoints == "all":
        return available
    if checkpoints == "final":
        return available[-1:]
    return _thin(available)


def _suite_tasks(spec: SweepSpec) -> list[Task]:
    from scalelens.models.suite import read_manifest

    root = Path(spec.suite or "")
    manifest = read_manifest(root)
    sizes = _check_sizes(spec.sizes, list(manifest.sizes))
    steps = select_steps(list(manifest.steps), spec.checkpoints)
    return [Task(size, str(root / size), f"step{step}", step) for size in sizes for step in steps]


def _check_sizes(wanted: tuple[str, ...] | None, available: list[str]) -> list[str]:
    if wanted is None:
        return available
    bad = [s for s in wanted if s not in available]
    if bad:
        raise ScalelensError(f"unknown size(s) {', '.join(bad)}; available: {', '.join(available)}")
    return list(wanted)


def _pythia_tasks(spec: SweepSpec) -> list[Task]:
    from scalelens.models.pythia import PYTHIA_STEPS

    sizes = _check_sizes(spec.sizes, list(PYTHIA_SIZES))
    steps = select_steps(list(PYTHIA_STEPS), spec.checkpoints)
    return [Task(s, f"EleutherAI/pythia-{s}", f"step{t}", t) for s in sizes for t in steps]


def expand(spec: SweepSpec) -> list[Task]:
    """Every (size, checkpoint) task of the sweep, sizes outermost."""
    return _suite_tasks(spec) if spec.suite is not None else _pythia_tasks(spec)
