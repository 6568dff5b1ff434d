"""Sweep specifications: which (size, checkpoint) models to measure, from flags or a TOML file."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.errors import ScalelensError
from scalelens.probes.haystack import NEEDLE_SETS
from scalelens.textfiles import read_utf8

DTYPES = ("float32", "float16", "bfloat16")
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
        models: Your own family, ``{size label: source}``: a directory (with ``stepN`` /
            ``checkpoint-N`` checkpoints, or one final model), a hub id or a .gguf file; or None.
        sizes: Sizes to include; None: all of the suite / family / models.
        checkpoints: ``log``, ``all``, ``final`` or explicit steps.
        analyses: Analyses to run per task.
        executor: ``local`` or ``ray``.
        address: Ray cluster address (None: start a local Ray).
        device: Device each task runs on.
        dtype: Compute dtype of every model (``bfloat16``...); None: float32.
        tokenizer: Tokenizer (directory or hub id) for models that ship none; None: each
            model's own.
        settings: Analysis options (names as the measure CLI flags, underscores).
    """

    suite: str | None = None
    family: str | None = None
    models: dict[str, str] | None = None
    sizes: tuple[str, ...] | None = None
    checkpoints: str | tuple[int, ...] = "log"
    analyses: tuple[str, ...] = field(default_factory=lambda: _all_analyses())
    executor: str = "local"
    address: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    tokenizer: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.suite, self.family, self.models)) != 1:
            raise ScalelensError("a sweep needs exactly one of suite=DIR, family='pythia' or "
                                 "models={size: source} (on the command line --suite DIR, "
                                 "--family pythia or --model SIZE=SOURCE)")
        self._python_values()
        if self.dtype not in (None, *DTYPES):
            raise ScalelensError(f"unknown dtype {self.dtype!r}; use {', '.join(DTYPES)}")
        if self.models is not None:
            object.__setattr__(self, "models", _checked_models(self.models))
        if self.family is not None and self.family != "pythia":
            raise ScalelensError(f"unknown family {self.family!r}; only 'pythia' is built in")
        if self.suite is not None and not Path(self.suite).is_dir():
            raise ScalelensError(f"suite directory {self.suite} does not exist; build it with "
                                 f"`scalelens suite build --out {self.suite}`")
        if self.executor not in ("local", "ray"):
            raise ScalelensError(f"unknown executor {self.executor!r}; use local or ray")
        if isinstance(self.checkpoints, str) and self.checkpoints not in ("log", "all", "final"):
            raise ScalelensError(
                f"bad checkpoints {self.checkpoints!r}; use log, all, final or a list of steps"
            )
        if isinstance(self.checkpoints, tuple) and not self.checkpoints:
            raise ScalelensError("checkpoints is an empty list; give steps, or log, all or final")
        if self.sizes is not None and not self.sizes:
            raise ScalelensError("sizes is an empty list; give sizes or leave it out for all")
        _check_analyses(self.analyses)
        self._canonical()
        if not isinstance(self.settings, dict):
            raise ScalelensError(f"settings must be a table of analysis options, got {self.settings!r}")
        if self.settings:
            from scalelens.sweeps.tasks import measure_settings

            unknown = sorted(set(self.settings) - set(_setting_names()))
            if unknown:
                raise ScalelensError(f"unknown sweep setting(s) {', '.join(unknown)}"
                                     f"{_did_you_mean(unknown, _setting_names())}; valid: "
                                     f"{', '.join(_setting_names())}")
            measure_settings(self.settings)  # values are checked as the measure CLI checks them
            _check_setting_files(self.settings)

    def _python_values(self) -> None:
        """Lists as tuples, numpy integers as ints and paths as strings, as a notebook passes them.

        A list of steps would otherwise fall through to ``log``, and a list of analyses be
        refused as no list.
        """
        for name in ("sizes", "analyses"):
            value = getattr(self, name)
            if isinstance(value, str):  # one alone ("70m"; analyses also as measure takes them)
                object.__setattr__(self, name, _one_or_parsed(name, value))
            elif _is_collection(value):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "checkpoints", _checkpoint_steps(self.checkpoints))
        for name in ("suite", "tokenizer"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.suite, str):  # "~/suite" from a spec file or a quoted argument
            object.__setattr__(self, "suite", os.path.expanduser(self.suite))
        if isinstance(self.models, dict):
            object.__setattr__(self, "models", {size: os.fspath(src) if isinstance(src, os.PathLike) else src
                                                for size, src in self.models.items()})

    def _canonical(self) -> None:
        """Each size, step and analysis once (a repeat would run a task twice).

        The suite is an absolute path, steps ascend and analyses keep their standard order,
        so equal sweeps compare equal.
        """
        from scalelens.measure.run import ANALYSES

        if self.suite is not None:  # ./suite and /abs/suite are the same suite
            object.__setattr__(self, "suite", str(Path(self.suite).resolve()))
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", _tokenizer_source(self.tokenizer))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(dict.fromkeys(self.sizes)))
        if isinstance(self.checkpoints, tuple):
            object.__setattr__(self, "checkpoints", tuple(sorted(set(self.checkpoints))))
        object.__setattr__(self, "analyses", tuple(a for a in ANALYSES if a in self.analyses))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in run.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


_FIELDS = {f.name for f in dataclasses.fields(SweepSpec)}


def _is_collection(value: Any) -> bool:
    """A list, tuple, set or array of values (not a string)."""
    return (isinstance(value, Sequence | AbstractSet | np.ndarray)
            and not isinstance(value, str | bytes))


def _one_or_parsed(name: str, value: str) -> tuple[str, ...]:
    """``sizes`` or ``analyses`` given as one string: one size; analyses as ``measure`` reads them."""
    if name == "analyses":
        from scalelens.measure.run import parse_analyses

        return parse_analyses(value)
    return (value,)


def _checkpoint_steps(value: Any) -> str | tuple[int, ...]:
    """``checkpoints`` as a mode string or a tuple of steps.

    Steps come as one step alone, or a list, set or array of them. Anything else is
    refused: a set or a lone step was swept as ``log``, the default.
    """
    if isinstance(value, str):
        return value
    if _is_collection(value):
        return tuple(_step(v) for v in value)
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return (_step(value),)
    raise ScalelensError(f"checkpoints must be 'log', 'all', 'final' or a list of steps, got {value!r}")


def _step(value: Any) -> int:
    """A checkpoint step: a non-negative int (numpy integers too)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ScalelensError(f"checkpoint steps must be integers >= 0, got {value!r}; "
                             "or pass checkpoints='log', 'all' or 'final'")
    return int(value)


_SIZE_LABEL = re.compile(r"[A-Za-z0-9][\w.+-]*")


def _local_or_hub(source: str) -> str:
    """An existing path, resolved (so another spelling is the same model); else as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _tokenizer_source(source: str) -> str:
    """An existing tokenizer path (resolved) or a hub id; a missing path is refused up front."""
    from scalelens.models.sources import looks_like_hub_id

    resolved = _local_or_hub(source)
    if not Path(resolved).exists() and not looks_like_hub_id(source):
        raise ScalelensError(f"tokenizer path {source} does not exist; pass a tokenizer directory or hub id")
    return resolved


def _checked_models(models: Any) -> dict[str, str]:
    """Size labels that can name a directory; each source loadable (paths resolved)."""
    from scalelens.models.sources import resolve_source

    if not isinstance(models, dict) or not models:
        raise ScalelensError("models must be a non-empty table of size = source "
                             '(e.g. small = "runs/small", large = "EleutherAI/pythia-160m")')
    out = {}
    for size, source in models.items():
        if not isinstance(size, str) or not _SIZE_LABEL.fullmatch(size):
            raise ScalelensError(f"bad size label {size!r}; use letters, digits and . _ + - "
                                 "(it names the task's directory)")
        if not isinstance(source, str) or not source:
            raise ScalelensError(f"model of size {size} must be a path or hub id, got {source!r}")
        try:
            resolve_source(source, None, None)
        except ScalelensError as e:
            raise ScalelensError(f"size {size}: {e}") from None
        out[size] = _local_or_hub(source)
    pair = case_twins(out)
    if pair is not None:
        raise ScalelensError(f"size labels {pair[0]} and {pair[1]} differ only in case; their task "
                             "directories would be one on a case-insensitive file system (macOS, "
                             "Windows); name them apart")
    return out


def case_twins(labels: Iterable[str]) -> tuple[str, str] | None:
    """The first two of ``labels`` that differ only in case (``Small``, ``small``), or None.

    Each size label names a task directory: on a case-insensitive file system two such
    labels are one directory, and the second size's tasks would be skipped as done.
    """
    seen: dict[str, str] = {}
    for label in labels:
        first = seen.setdefault(label.casefold(), label)
        if first != label:
            return first, label
    return None


def _did_you_mean(unknown: list[str], valid: list[str] | set[str]) -> str:
    guesses = [(u, m[0]) for u in unknown if (m := difflib.get_close_matches(u, sorted(valid), 1))]
    if not guesses:
        return ""
    if len(unknown) == 1:
        return f" (did you mean {guesses[0][1]}?)"
    return f" (did you mean {', '.join(f'{m} for {u}' for u, m in guesses)}?)"


def _setting_names() -> list[str]:
    import argparse

    from scalelens.commands.measure import add_analysis_args

    parser = argparse.ArgumentParser(add_help=False)
    add_analysis_args(parser)
    return sorted(k for k in vars(parser.parse_args([])) if k != "analyses")


def _all_analyses() -> tuple[str, ...]:
    """Every analysis ``measure`` runs (``--analyses all``): the default of a sweep."""
    from scalelens.measure.run import ANALYSES

    return ANALYSES


def _check_analyses(analyses: Any) -> None:
    from scalelens.measure.run import ANALYSES

    if not isinstance(analyses, tuple) or not analyses:
        raise ScalelensError(f"analyses must be a non-empty list; choose from {', '.join(ANALYSES)}")
    bad = [str(a) for a in analyses if a not in ANALYSES]
    if bad:
        raise ScalelensError(f"unknown analysis {', '.join(bad)}{_did_you_mean(bad, ANALYSES)}; "
                             f"choose from {', '.join(ANALYSES)}")


_TYPES: dict[str, tuple[type, ...]] = {
    "suite": (str,), "family": (str,), "models": (dict,), "sizes": (list,), "checkpoints": (str, list),
    "analyses": (list,), "executor": (str,), "address": (str,), "device": (str,), "dtype": (str,),
    "tokenizer": (str,), "settings": (dict,),
}


def read_spec(path: str | Path) -> SweepSpec:
    """Read a TOML sweep spec; unknown keys and wrong types are one-line errors."""
    p = Path(path)
    if p.is_dir():
        raise ScalelensError(f"sweep spec {p} is a directory; give a TOML file")
    if not p.is_file():
        raise ScalelensError(f"sweep spec {p} does not exist")
    try:
        data = tomllib.loads(read_utf8(p, "sweep spec"))
    except tomllib.TOMLDecodeError as e:
        raise ScalelensError(f"sweep spec {p} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ScalelensError(
            f"sweep spec {p}: unknown key(s) {', '.join(unknown)}{_did_you_mean(unknown, _FIELDS)}; "
            f"valid: {', '.join(sorted(_FIELDS))}"
        )
    for key, value in data.items():
        if not isinstance(value, _TYPES[key]):
            kinds = " or ".join("a list" if t is list else "a table" if t is dict else "a string"
                                for t in _TYPES[key])
            raise ScalelensError(f"sweep spec {p}: {key} must be {kinds}, got {value!r}")
    for key in ("sizes", "analyses"):
        if key in data:
            if not all(isinstance(v, str) for v in data[key]):
                raise ScalelensError(f"sweep spec {p}: {key} must be a list of strings, got {data[key]!r}")
            data[key] = tuple(data[key])
    if isinstance(data.get("checkpoints"), list):
        steps = data["checkpoints"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in steps):
            raise ScalelensError(f"sweep spec {p}: checkpoints must be log, all, final or a list of "
                                 f"step numbers, got {steps!r}")
        data["checkpoints"] = tuple(steps)
    _beside_spec(data, p.parent)
    try:
        return SweepSpec(**data)
    except ScalelensError as e:
        raise ScalelensError(f"sweep spec {p}: {e}") from None


def _beside_spec(data: dict[str, Any], folder: Path) -> None:
    """Relative paths in a spec that exist beside it, not in the working directory: beside it.

    ``small = "runs/small"`` in ``project/sweep.toml`` then names ``project/runs/small`` from any
    working directory (it would otherwise be taken for a hub id).
    """
    def moved(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        value = os.path.expanduser(value)  # TOML does not expand "~/data"
        if Path(value).exists():
            return value
        beside = folder / value
        return str(beside.resolve()) if not Path(value).is_absolute() and beside.exists() else value

    for key in ("suite", "tokenizer"):
        if key in data:
            data[key] = moved(data[key])
    if isinstance(data.get("models"), dict):
        data["models"] = {size: moved(source) for size, source in data["models"].items()}
    settings = data.get("settings")
    if isinstance(settings, dict):  # the analyses' input files (needles may also be a built-in set's name)
        for key in SETTING_FILES:
            if key in settings and settings[key] not in NEEDLE_SETS:
                settings[key] = moved(settings[key])


SETTING_FILES = ("text", "haystack", "needles")
"""Settings that name an input file (``needles`` may instead name a built-in set)."""


def _check_setting_files(settings: dict[str, Any]) -> None:
    """Refuse a ``text``, ``haystack`` or ``needles`` file that is not there.

    Checked before any task runs: every task would fail on it.
    """
    for key in SETTING_FILES:
        value = settings.get(key)
        builtin = key == "needles" and value in NEEDLE_SETS
        if value is None or builtin or Path(str(value)).expanduser().is_file():
            continue
        raise ScalelensError(f"sweep setting {key} = {str(value)!r}: no such file (a relative path is "
                             "looked up in the working directory, and beside a --spec file)")


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when a Ray cluster address cannot be reached.

    ``ray.init(address=...)`` retries an unreachable address for minutes while
    printing warnings; a plain TCP connect answers in seconds. ``auto`` and
    ``local`` are left to Ray, which resolves them itself.

    Raises:
        ScalelensError: if the address is malformed or nothing listens there.
    """
    if address in ("auto", "local"):
        return
    text = address.removeprefix("ray://")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ScalelensError(f"bad Ray address {address!r}; use HOST:PORT (e.g. 10.0.0.5:6379), "
                             "ray://HOST:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ScalelensError(
            f"cannot reach the Ray cluster at {address} ({reason}); start it with `ray start --head` "
            "on that machine, fix --address, or drop --address to start a local Ray"
        ) from None


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
            raise ScalelensError(f"checkpoint step(s) {missing} not available; available: "
                                 f"{_steps_text(available)}")
        return sorted(checkpoints)
    if checkpoints == "all":
        return available
    if checkpoints == "final":
        return available[-1:]
    return _thin(available)


def _steps_text(steps: list[int], n: int = 12) -> str:
    if len(steps) <= n:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[: n // 2])) + ", ..., " + ", ".join(map(str, steps[-n // 2:]))


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
        raise ScalelensError(f"unknown size(s) {', '.join(bad)}{_did_you_mean(bad, available)}; "
                             f"available: {', '.join(available)}")
    return list(wanted)


def _pythia_tasks(spec: SweepSpec) -> list[Task]:
    from scalelens.models.pythia import PYTHIA_STEPS

    sizes = _check_sizes(spec.sizes, list(PYTHIA_SIZES))
    steps = select_steps(list(PYTHIA_STEPS), spec.checkpoints)
    return [Task(s, f"EleutherAI/pythia-{s}", f"step{t}", t) for s in sizes for t in steps]


def _model_tasks(spec: SweepSpec) -> list[Task]:
    models = spec.models or {}
    sizes = _check_sizes(spec.sizes, list(models))
    return [t for size in sizes for t in _source_tasks(size, models[size], spec.checkpoints)]


def _source_tasks(size: str, source: str, checkpoints: str | tuple[int, ...]) -> list[Task]:
    """One model's tasks: its checkpoints chosen as for a suite, or its one final model.

    A hub id other than Pythia's chooses from its revisions that give a step (see
    :func:`_hub_tasks`).
    """
    from scalelens.models.sources import resolve_source

    known = _known_checkpoints(source)
    if known is not None:
        return _chosen_tasks(size, source, checkpoints, known, "checkpoints")
    resolved = resolve_source(source, None, None)
    if resolved.kind == "hub":
        return _hub_tasks(size, source, checkpoints)
    if isinstance(checkpoints, tuple):
        raise ScalelensError(f"size {size}: {source} has no step<N> or checkpoint-<N> directories "
                             "to choose from; leave checkpoints out (its one model is measured)")
    return [Task(size, source, None, resolved.step)]


def _chosen_tasks(size: str, source: str, checkpoints: str | tuple[int, ...],
                  known: dict[int, list[str]], where: str) -> list[Task]:
    """The tasks of the steps ``checkpoints`` chooses from ``known`` (``{step: [revisions]}``)."""
    try:
        steps = select_steps(list(known), checkpoints)
    except ScalelensError as e:
        raise ScalelensError(f"size {size} ({source}): {e}{_half_written(source, checkpoints)}") from None
    return [Task(size, source, _one_revision(size, source, n, known[n], where), n) for n in steps]


_HALF_WRITTEN = "no config.json or no weights (a save still being written, or interrupted)"


def _half_written(source: str, checkpoints: str | tuple[int, ...]) -> str:
    """``; checkpoint-N has no config.json ...`` for asked-for steps whose directory is half-written."""
    from scalelens.models.revisions import parse_step
    from scalelens.models.sources import incomplete_step_dirs

    path = Path(source)
    if not isinstance(checkpoints, tuple) or not path.is_dir():
        return ""
    names = [n for n in incomplete_step_dirs(path) if parse_step(n) in checkpoints]
    if not names:
        return ""
    return f"; {', '.join(names)} {'has' if len(names) == 1 else 'have'} {_HALF_WRITTEN}"


def _hub_tasks(size: str, source: str, checkpoints: str | tuple[int, ...]) -> list[Task]:
    """A hub id's tasks: steps chosen from its revisions that give one (``step20000-tokens84B``).

    The revisions are the hub's branches and tags with the locally cached ones. Offline, or
    with the hub unreachable, they are those known here (the local hub cache, the hub's
    last listing), and an explicit step known to neither loads ``step<N>`` (its task fails
    with what the cache lacks). A repo without such revisions measures ``main``; explicit
    steps are refused for it once the hub has said so.
    """
    from scalelens.models.hub import abbreviate
    from scalelens.models.hub_refs import hub_revision_listing
    from scalelens.models.revisions import revisions_by_step

    listing = hub_revision_listing(source)
    known = revisions_by_step(list(listing.names))
    local = not listing.from_hub and set(listing.names) <= set(listing.cached)
    where = "revisions in the local hub cache" if local else "revisions on the hub"
    if isinstance(checkpoints, tuple) and not listing.from_hub:
        return [Task(size, source, _one_revision(size, source, n, known.get(n, [f"step{n}"]), where), n)
                for n in checkpoints]
    if known:
        return _chosen_tasks(size, source, checkpoints, known, where)
    if isinstance(checkpoints, tuple):
        raise ScalelensError(
            f"size {size} ({source}): the hub lists no revision that gives a training step "
            f"(step<N>, step<N>-tokens<K>, stage1-step<N>; it has {abbreviate(listing.names) or 'none'}), "
            "so there are no checkpoint steps to choose; leave checkpoints out to measure main"
        )
    return [Task(size, source, None, None)]


def _one_revision(size: str, source: str, step: int, names: list[str], where: str) -> str:
    """The one checkpoint of ``step``; several (``step1000``, ``checkpoint-1000``) are refused.

    A sweep measures each step once: two checkpoints of one step would be one point on the
    training-step axis twice, or one of them silently left out. ``where`` says where the
    names are: ``checkpoints`` (a run directory's), ``revisions in the local hub cache`` or
    ``revisions on the hub``.
    """
    if len(names) == 1:
        return names[0]
    if where == "revisions in the local hub cache":
        from scalelens.models.hub_cache import repo_cache_dir

        refs = repo_cache_dir(source, None) / "refs"
        fix = f"sweep other steps, or keep one: delete the others' files from {refs}"
    elif where == "checkpoints":
        fix = f"sweep other steps, or keep one: move the others out of {source}"
    else:
        fix = "sweep other steps"
    raise ScalelensError(f"size {size} ({source}): step {step} is given by {len(names)} {where} "
                         f"({', '.join(names)}); {fix}")


_PYTHIA_ID = re.compile(r"EleutherAI/pythia-[\w.]+", re.IGNORECASE)


def _known_checkpoints(source: str) -> dict[int, list[str]] | None:
    """``{step: [revisions]}`` of a local run directory or a Pythia hub id; None when unknown."""
    from scalelens.models.pythia import PYTHIA_STEPS
    from scalelens.models.revisions import revisions_by_step
    from scalelens.models.sources import step_dirs

    path = Path(source)
    if path.is_dir():
        return revisions_by_step(list(step_dirs(path))) or None
    if _PYTHIA_ID.fullmatch(source):
        return {s: [f"step{s}"] for s in PYTHIA_STEPS}
    return None


def incomplete_checkpoints(spec: SweepSpec) -> list[str]:
    """One note per own model whose run directory holds checkpoints left out as half-written."""
    from scalelens.models.sources import incomplete_step_dirs

    if spec.models is None:
        return []
    notes = []
    models = spec.models
    for size in _check_sizes(spec.sizes, list(models)):
        path = Path(models[size])
        skipped = incomplete_step_dirs(path) if path.is_dir() else []
        if skipped:
            notes.append(f"size {size}: left out {', '.join(skipped)} of {path}: {_HALF_WRITTEN}")
    return notes


def hub_listing_notes(spec: SweepSpec) -> list[str]:
    """One note per hub id whose ``log``/``all``/``final`` checkpoints the hub could not list.

    They are then chosen from the revisions known here (the local hub cache, the hub's last
    listing remembered under ``$SCALELENS_CACHE/hub-refs``), or ``main`` when none gives a step.
    """
    from scalelens.models.hub_refs import hub_revision_listing
    from scalelens.models.revisions import revisions_by_step
    from scalelens.models.sources import looks_like_hub_id

    if spec.models is None or isinstance(spec.checkpoints, tuple):
        return []
    notes = []
    for size in _check_sizes(spec.sizes, list(spec.models)):
        source = spec.models[size]
        if Path(source).exists() or not looks_like_hub_id(source) or _known_checkpoints(source) is not None:
            continue
        listing = hub_revision_listing(source)
        if listing.from_hub:
            continue
        steps = len(revisions_by_step(list(listing.names)))
        chosen = (f"checkpoints chosen from the {steps} step(s) known here (local hub cache, the hub's "
                  "last listing)" if steps else "no revision known here gives a step, so main is measured")
        notes.append(f"size {size} ({source}): the hub could not list its revisions ({listing.why}); "
                     f"{chosen}")
    return notes


def expand(spec: SweepSpec) -> list[Task]:
    """Every (size, checkpoint) task of the sweep, sizes outermost."""
    if spec.models is not None:
        return _model_tasks(spec)
    return _suite_tasks(spec) if spec.suite is not None else _pythia_tasks(spec)
