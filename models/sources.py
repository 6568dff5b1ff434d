"""Turn a model source string into something ``from_pretrained`` can load.

Accepted: an existing HF directory, a suite size directory (``<suite>/<size>`` with
``step<N>`` or HF Trainer ``checkpoint-<N>`` subdirectories) with or without a revision,
a checkpoint directory inside one (``<suite>/<size>/step3000``), a ``*.gguf`` file, or a
hub id.
"""

from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScalelensError
from ..output import shown
from .revisions import parse_step

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass(frozen=True)
class ResolvedSource:
    """Where to load from.

    Attributes:
        kind: ``hub``, ``local``, ``suite`` or ``gguf`` (``ModelInfo.source_kind``).
        location: Hub id or directory passed to ``from_pretrained``.
        revision: Hub revision or suite checkpoint name.
        step: Training step parsed from the revision or directory name.
        gguf_file: File name inside ``location`` for GGUF sources.
        name: Short human name.
    """

    kind: str
    location: str
    revision: str | None
    step: int | None
    gguf_file: str | None
    name: str


def _step_number(value: object) -> int | None:
    """An integer (a numpy one too, e.g. a step from an array) as an int; None otherwise."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def checkpoint_revision(revision: str | None, checkpoint: int | None) -> str | None:
    """Merge ``checkpoint=3000`` sugar into ``revision="step3000"`` (a revision of that step is kept).

    A hub repo's own name for the step (``global_step3000``) is found by ``load_model``.
    """
    if checkpoint is None:
        return revision
    step = _step_number(checkpoint)
    if step is None or step < 0:
        raise ScalelensError(f"checkpoint must be a step number >= 0, got {checkpoint!r}")
    if revision is not None and parse_step(revision) != step:
        raise ScalelensError(f"revision={revision!r} and checkpoint={step} disagree; pass only one")
    return revision or f"step{step}"


def _complete(folder: Path) -> bool:
    """Whether a checkpoint directory holds a ``config.json`` and weights (else it is half-written)."""
    from .hub_cache import WEIGHT_FILES

    weights = (folder / name for pair in WEIGHT_FILES for name in pair)
    return (folder / "config.json").is_file() and any(w.is_file() for w in weights)


def _named_checkpoints(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir() and parse_step(p.name) is not None]


def step_dirs(path: Path) -> dict[str, Path]:
    """Checkpoint subdirectories (``stepN``, ``checkpoint-N``, ``global_stepN``) with config and weights.

    One without either (an HF Trainer save still being written, or interrupted) is left out.
    """
    found = [p for p in _named_checkpoints(path) if _complete(p)]
    return {p.name: p for p in sorted(found, key=lambda p: (parse_step(p.name), p.name))}


def incomplete_step_dirs(path: Path) -> list[str]:
    """Names of checkpoint subdirectories that ``step_dirs`` leaves out (no config or weights)."""
    return sorted(p.name for p in _named_checkpoints(path) if not _complete(p))


def resolve_source(source: str, revision: str | None, gguf_file: str | None) -> ResolvedSource:
    """Classify ``source`` and pick the directory / revision to load.

    Args:
        source: Path or hub id.
        revision: Requested revision (``step3000``), if any.
        gguf_file: GGUF file name inside a directory or hub repo, if any.

    Returns:
        The resolved source.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _file_source(path, revision)
    if path.is_dir():
        return _dir_source(path, revision, gguf_file)
    if not looks_like_hub_id(source):
        raise ScalelensError(f"model path {shown(source)} does not exist; pass an existing path or hub id")
    _not_a_mistyped_path(source)
    kind = "gguf" if gguf_file else "hub"
    rev = revision or "main"
    return ResolvedSource(kind, source, rev, parse_step(rev), gguf_file, source.split("/")[-1])


def _not_a_mistyped_path(source: str) -> None:
    """Refuse ``dir/name`` where ``dir`` is a local directory: a path with a typo, not a hub id."""
    head = source.split("/")[0]
    if "/" in source and Path(head).is_dir():
        raise ScalelensError(
            f"model path {shown(source)} does not exist (though {shown(head)}/ does); check the name, "
            f"or to load the hub repository {shown(source)}, run from a directory without a "
            f"{shown(head)}/ folder"
        )


def looks_like_hub_id(source: str) -> bool:
    """Whether ``source`` (not an existing path) can name a hub repository (``org/name``)."""
    return not _looks_like_path(source) and bool(_HUB_ID.fullmatch(source))


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep + os.sep in source or source.count("/") > 1


def _file_source(path: Path, revision: str | None) -> ResolvedSource:
    if path.suffix.lower() != ".gguf":
        raise ScalelensError(
            f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file"
        )
    _no_revision(path, revision)
    return ResolvedSource("gguf", str(path.parent), None, None, path.name, path.stem)


def _no_revision(path: Path, revision: str | None) -> None:
    if revision is not None:
        raise ScalelensError(
            f"{path} has no revisions; drop revision/checkpoint or pass the suite size directory"
        )


def _dir_source(path: Path, revision: str | None, gguf_file: str | None) -> ResolvedSource:
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise ScalelensError(f"{path / gguf_file} does not exist; check gguf_file")
        _no_revision(path, revision)
        return ResolvedSource("gguf", str(path), None, None, gguf_file, Path(gguf_file).stem)
    steps = step_dirs(path)
    if (path / "config.json").is_file() and not (revision and steps):
        return _checkpoint_dir(path, revision)  # (a final model beside its stepN checkpoints too)
    if steps:
        return _suite_size(path, steps, revision)
    if (path / "manifest.json").is_file():
        sizes = sorted(p.name for p in path.iterdir() if p.is_dir() and step_dirs(p))
        raise ScalelensError(
            f"{path} is a suite; load one size, e.g. {path / (sizes[0] if sizes else '<size>')}"
            f" (sizes: {', '.join(sizes)})"
        )
    ggufs = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
    if ggufs:  # a GGUF download: the file is the model
        raise ScalelensError(f"{path} has no config.json but holds GGUF file(s) ({', '.join(ggufs[:3])}"
                             f"{', ...' if len(ggufs) > 3 else ''}); pass the .gguf file itself, e.g. "
                             f"{path / ggufs[0]}")
    raise ScalelensError(f"{path} has no config.json or step<N> / checkpoint-<N> checkpoints; "
                         "pass a model directory")


def _checkpoint_dir(path: Path, revision: str | None) -> ResolvedSource:
    step = parse_step(path.name)
    in_suite = step is not None and bool(step_dirs(path.parent))
    if revision is not None and revision != path.name:
        _no_revision(path, revision)
    if in_suite:
        return ResolvedSource("suite", str(path), path.name, step, None, _suite_name(path.parent))
    return ResolvedSource("local", str(path), None, None, None, path.name)


def _suite_size(path: Path, steps: dict[str, Path], revision: str | None) -> ResolvedSource:
    rev = _checkpoint_name(steps, revision or list(steps)[-1])
    if rev is None:
        raise ScalelensError(f"unknown revision {revision!r} in {path}; available: {', '.join(steps)}")
    return ResolvedSource("suite", str(steps[rev]), rev, parse_step(rev), None, _suite_name(path))


def _checkpoint_name(steps: dict[str, Path], revision: str) -> str | None:
    """The checkpoint directory ``revision`` names: itself, or the one of its step.

    ``step3000`` (``checkpoint=3000``) finds ``checkpoint-3000`` of an HF Trainer run.
    """
    if revision in steps:
        return revision
    step = parse_step(revision)
    same = [name for name in steps if step is not None and parse_step(name) == step]
    return same[0] if len(same) == 1 else None


def _suite_name(size_dir: Path) -> str:
    """``<suite name>-<size>`` when the parent holds a manifest, else the size directory name."""
    manifest = size_dir.parent / "manifest.json"
    try:
        suite = json.loads(manifest.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        suite = None
    return f"{suite}-{size_dir.name}" if suite else size_dir.name
