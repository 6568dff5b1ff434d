"""The suite manifest: what was built, how, and where each checkpoint lives."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ScalelensError, ScalelensWarning, naming
from ..textfiles import temp_beside

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """Contents of ``<suite>/manifest.json``.

    Attributes:
        root: The suite directory (not serialised; set when reading).
        format_version: Layout version of the suite directory.
        name: Suite name, ``mini-pythia-<preset>``.
        preset: Preset the suite was built from.
        settings_hash: Hash of everything that determines the weights (not the device).
        settings: The resolved preset, seed and corpus source that were hashed.
        sizes: Size names, smallest first; each is a directory ``<root>/<size>``.
        steps: Checkpoint steps; each is a directory ``<root>/<size>/step<N>``.
        tokenizer: Tokenizer directory relative to root (also copied into every checkpoint).
        valid_text: Held-out documents (relative path), for in-distribution prompts.
        corpus: Corpus description: kind, seed or file, hash, token counts.
        training: Optimisation settings and tokens per step.
        models: Per size: ``config``, ``shape``, ``n_params``, ``n_params_non_embedding``,
            ``final_loss`` (held-out), ``final_train_loss``, ``token_stream_sha256``,
            ``train_seconds``, ``train_cpu_seconds`` and ``checkpoints`` (step ->
            train/valid loss, tokens seen).
        build: Device, worker processes, wall time (``seconds``; ``data_seconds`` of
            it for corpus and tokenizer) and library versions of the build.
    """

    root: Path
    format_version: int
    name: str
    preset: str
    settings_hash: str
    settings: dict[str, Any]
    sizes: list[str]
    steps: list[int]
    tokenizer: str
    valid_text: str
    corpus: dict[str, Any]
    training: dict[str, Any]
    models: dict[str, dict[str, Any]]
    build: dict[str, Any] = field(default_factory=dict)

    def checkpoint_dir(self, size: str, step: int) -> Path:
        """Directory of one checkpoint (loadable with ``from_pretrained``)."""
        if size not in self.sizes:
            raise ScalelensError(f"suite has no size {size!r}; use one of {', '.join(self.sizes)}")
        if step not in self.steps:
            raise ScalelensError(f"suite has no step {step}; use one of {self.steps}")
        return self.root / size / f"step{step}"

    def checkpoints(self) -> list[tuple[str, int, Path]]:
        """Every ``(size, step, directory)``, sizes smallest first, steps ascending."""
        return [(s, t, self.checkpoint_dir(s, t)) for s in self.sizes for t in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serialisable manifest (without ``root``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "root"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path) -> Manifest:
        """Build from parsed JSON, warning about (and dropping) unknown keys."""
        names = {f.name for f in fields(cls)} - {"root"}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"ignoring unknown manifest keys: {unknown}", ScalelensWarning, stacklevel=2)
        missing = sorted(names - set(data) - {"build"})
        if missing:
            raise ScalelensError(f"manifest in {root} lacks {missing}; rebuild the suite")
        return cls(root=root, **{k: v for k, v in data.items() if k in names})


def read_manifest(suite_dir: str | Path) -> Manifest:
    """Read ``<suite_dir>/manifest.json``.

    Args:
        suite_dir: A directory made by ``build_suite``.

    Returns:
        The manifest, with ``root`` set to ``suite_dir``.
    """
    root = Path(suite_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ScalelensError(
            f"no {MANIFEST_NAME} in {root}; build the suite with `scalelens suite build --out {root}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ScalelensError(f"{path} is not valid JSON ({exc}); delete the suite and rebuild") from exc
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ScalelensError(
            f"{path} has format version {version}, this scalelens reads {FORMAT_VERSION}; rebuild it"
        )
    return Manifest.from_dict(data, root)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temp file in the same directory, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # this write's own name (see temp_beside), opened with "x" (mkstemp would make it 0600)
    tmp = temp_beside(path)
    try:
        with naming(path), open(tmp, "x", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A hidden ``.tmp-<name>`` directory beside ``final``, renamed onto ``final`` when the block ends.

    One a killed build left is removed first, and one whose writing fails (a full disk,
    Ctrl-C) is removed before the error goes on: a failed build leaves no half-written
    files, and ``final`` is replaced only by a whole directory. An I/O error that names
    no file names ``final``.
    """
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with naming(final):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
