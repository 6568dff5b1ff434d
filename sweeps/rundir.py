"""A sweep's run directory: one sweep at a time, and never resumed with other settings."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from scalelens.cache.lock import WriteLock
from scalelens.errors import ScalelensError
from scalelens.textfiles import make_dirs

RUN_TABLES = ("metrics.csv", "metrics.parquet", "fits.json")
"""What a sweep derives from its finished tasks (remade by every run; one that comes out
as it was is left untouched, mtime too)."""
LOCK_NAME = ".sweep.lock"


@contextmanager
def locked_run_dir(out: Path) -> Iterator[None]:
    """Create ``out`` if needed and hold its sweep lock inside (another sweep: one line)."""
    from scalelens.commands.measure import check_out_dir

    check_out_dir(out, "run directory", "a run directory")
    make_dirs(out)
    lock = WriteLock(out, writer="sweep", lock_path=out / LOCK_NAME).acquire()
    try:
        yield
    finally:
        lock.release()


RUN_SPEC = "sweep_spec.json"
RUN_INFO = "run.json"
"""The plan (written when a sweep starts) and each task's outcome (when it ends)."""
# Spec fields that change what a finished task's results mean; the rest (sizes,
# checkpoints, executor, address, device) may change between runs into the same directory.
_IDENTITY = ("suite", "family", "models", "dtype", "tokenizer", "analyses", "settings")
# Recorded only when set.
_OPTIONAL = ("models", "dtype", "tokenizer")
# A suite rebuilt in place with other settings holds other models under the same task keys.
_SUITE_BUILD = "suite_build"
# How the finished tasks were measured (measure.run.RESULTS_FORMAT); absent before it was recorded.
_FORMAT = "results_format"
# Settings that do not change a task's results (an interrupted capture resumes with another
# batch size): neither recorded nor compared.
_NOT_IDENTITY_SETTINGS = ("batch_size",)


def _identity_settings(settings: object) -> object:
    """``settings`` without the ones that do not change results (anything else: as it is).

    An input file (``haystack``, ``text``, ``needles``) is recorded by its content
    (:func:`_file_content`), not its path: the same file reached from another working
    directory, or moved with the project, is the same setting; an edited one is not.
    """
    if not isinstance(settings, dict):
        return settings
    return {k: _file_content(k, v) for k, v in settings.items() if k not in _NOT_IDENTITY_SETTINGS}


_CONTENT = "sha256:"


def _file_content(key: str, value: object) -> object:
    """``sha256:<hex>`` of the file a file setting names.

    Other settings, and a file that cannot be read (for the task to report), as they are.
    """
    from scalelens.probes.haystack import NEEDLE_SETS
    from scalelens.sweeps.spec import SETTING_FILES

    if key not in SETTING_FILES or not isinstance(value, str) or value in NEEDLE_SETS:
        return value
    digest = hashlib.sha256()
    try:
        _hash_file(digest, Path(value).expanduser())
    except OSError:
        return value
    return _CONTENT + digest.hexdigest()


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    """Feed the bytes of ``path`` to ``digest``, a block at a time."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _recorded_as_paths(have: dict, want: dict, given: object) -> dict:
    """``have`` with ``want``'s file contents where it recorded the path given now.

    Run directories before files were recorded by content hold their paths; the same
    path given again is the same setting (as it was then), recorded by content from now on.
    """
    old, new = have.get("settings"), want.get("settings")
    if not (isinstance(old, dict) and isinstance(new, dict) and isinstance(given, dict)):
        return have
    upgraded = {k: new[k] if k in new and isinstance(v, str) and not v.startswith(_CONTENT)
                and v == given.get(k) else v for k, v in old.items()}
    return {**have, "settings": upgraded}


def run_identity(spec) -> dict:
    """What a run directory's finished tasks were measured with (``sweep_spec.json``)."""
    from scalelens.measure.run import RESULTS_FORMAT
    from scalelens.models.manifest import read_manifest

    want = {k: v for k, v in spec.to_dict().items()
            if k in _IDENTITY and not (k in _OPTIONAL and v is None)}
    want[_FORMAT] = RESULTS_FORMAT
    if "settings" in want:
        want["settings"] = _identity_settings(want["settings"])
    if spec.suite is not None:
        want[_SUITE_BUILD] = read_manifest(spec.suite).settings_hash
    if "tokenizer" in want:
        want["tokenizer"] = _tokenizer_content(want["tokenizer"])
    return want


# What a tokenizer directory's tokenizer is read from (a model directory's weights are not).
_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges",
                       "spiece", "sentencepiece", "chat_template")


def _tokenizer_content(source: str) -> str:
    """``sha256:<hex>`` of a tokenizer directory's tokenizer files (names and bytes).

    The same tokenizer moved with the project, or reached another way, is the same
    setting; an edited one is not. A hub id, or a directory with no such files (for its
    task to report), as it is.
    """
    folder = Path(source)
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.startswith(_TOKENIZER_PREFIXES)) \
        if folder.is_dir() else []
    if not files:
        return source
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        _hash_file(digest, f)
    return _CONTENT + digest.hexdigest()


def _check_resume(out: Path, path: Path, want: dict, spec) -> None:
    """Refuse ``out`` when its recorded identity differs from ``want``; record additions.

    ``spec``: the sweep (its settings as given: file paths, which older run directories
    recorded; its own models, loaded to tell one moved from another).
    """
    from scalelens.measure.run import write_json

    try:
        have = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        have = None
    if not isinstance(have, dict) or not have:
        raise ScalelensError(
            f"{path} is unreadable (not the JSON object a sweep writes), so what its tasks were "
            "measured with is unknown; pass --overwrite to start afresh, or use another --out"
        )
    _check_format(out, have.get(_FORMAT), want[_FORMAT])
    recorded = have
    if "tokenizer" in want and "tokenizer" not in have:  # only for models without one: earlier
        have = {**have, "tokenizer": want["tokenizer"]}  # tasks all loaded their own
    if spec.tokenizer is not None and have.get("tokenizer") == spec.tokenizer:
        # recorded as a path (before contents were): the same path is the same tokenizer
        have = {**have, "tokenizer": want.get("tokenizer")}
    have = _same_suite_moved(have, want)
    have = _recorded_as_paths(have, want, spec.settings)
    models = _earlier_and_new_models(out, have, want, spec)
    if models is not None:  # sizes added or dropped: the same sweep, recorded with every size
        have, want = {**have, "models": models}, {**want, "models": models}
    if have != want:
        diff = sorted(k for k in {*want, *have} if have.get(k) != want.get(k))
        what = ", ".join("suite build settings (the suite was rebuilt)" if k == _SUITE_BUILD else k
                         for k in diff)
        raise ScalelensError(
            f"{out} holds a sweep with different {what}; use another --out, or pass --overwrite "
            "(overwrite=True in Python) to discard its finished tasks"
        )
    if want != recorded:
        write_json(path, want)


def _check_task_settings(out: Path, spec) -> None:
    """Refuse ``out`` when a finished task was measured with other settings than ``spec`` gives now.

    ``sweep_spec.json`` records the settings as given; what they measure also depends on how
    the scalelens reads them, and that changed within one results format: a run made before
    commit 4d1efa1 with ``context_lengths = [16, 16, 32]`` measured every 16-token test twice
    (30 tests, not 20). Each finished task's ``results.json`` records the settings it was
    measured with; a value that differs (batch sizes aside) is refused. Keys it lacks (a
    setting added later) and unreadable files (named when the tables are made) are passed over.
    """
    from scalelens.sweeps.tasks import measure_settings

    want = _comparable(asdict(measure_settings(spec.settings)))
    for path in sorted((out / "tasks").rglob("results.json")):
        try:
            have = _comparable(json.loads(path.read_text(encoding="utf-8")).get("settings"))
        except (OSError, ValueError, AttributeError):
            continue
        for group, values in have.items():
            for key, value in values.items():
                now = want.get(group, {}).get(key, value)
                if value != now:
                    task = path.parent.relative_to(out / "tasks")
                    raise ScalelensError(
                        f"{out}: finished task {task} was measured with {group} {key} {value!r}, "
                        f"where this scalelens measures the same spec with {now!r} (an older "
                        "scalelens read it otherwise); pass --overwrite (overwrite=True in Python) "
                        "to start afresh, or use another --out"
                    )


def _comparable(settings: object) -> dict[str, dict]:
    """``results.json``'s settings as JSON gives them, by group.

    Batch sizes are left out, and so are setting files (``text``, ``haystack``, ``needles``):
    a task records the path it was given, and ``sweep_spec.json`` compares them by content,
    so a moved project, or one run from another directory, is the same settings.
    """
    from scalelens.sweeps.spec import SETTING_FILES

    data = json.loads(json.dumps(settings, default=str))
    if not isinstance(data, dict):
        return {}
    skip = (*_NOT_IDENTITY_SETTINGS, *SETTING_FILES)
    return {group: {k: v for k, v in values.items() if k not in skip}
            for group, values in data.items() if isinstance(values, dict)}


def _check_unrecorded(out: Path, want: int) -> None:
    """Refuse ``out`` when it holds finished tasks but no ``sweep_spec.json`` to say how they were made.

    A sweep records its spec before any task runs, but scalelens's demo (before commit
    658d448) and ``sweep()`` from Python (before c59702f) did not: their finished tasks would
    be skipped as done and their numbers, measured otherwise, mixed with this scalelens's.
    """
    tasks = out / "tasks"
    finished = [f for f in tasks.rglob("results.json") if f.is_file()] if tasks.is_dir() else []
    if not finished:  # captures left by a task are checked by the capture that resumes them
        return
    fix = "pass --overwrite (overwrite=True in Python) to start afresh, or use another --out"
    formats = {_results_format(f) for f in finished}
    if formats - {want}:
        said = ", ".join(sorted("no results format" if v is None else f"results format {v!r}"
                                for v in formats - {want}))
        newer = any(type(v) is int and v > want for v in formats)
        raise ScalelensError(
            f"{out} was written by {'a newer' if newer else 'an older'} scalelens (no {RUN_SPEC}; "
            f"its finished tasks record "
            f"{said}; this one writes {want}), whose tasks may be measured otherwise than new "
            f"ones would be; {fix}"
        )
    raise ScalelensError(
        f"{out} holds finished tasks but no {RUN_SPEC}, so what they were measured with is "
        f"unknown; {fix}"
    )


def _results_format(path: Path) -> object:
    """The ``results_format`` a task's results.json records (None: none, or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(_FORMAT) if isinstance(data, dict) else None
    return value if value is None or isinstance(value, int | str) else repr(value)


def _same_suite_moved(have: dict, want: dict) -> dict:
    """``have`` with ``want``'s suite path when only the path differs: the suite was moved.

    A suite is the models its build settings train (``suite_build``); its path is where it
    lies now. A run directory (or the suite) copied to another machine or renamed resumes
    with the suite at its new path, which is then recorded.
    """
    old, new = have.get("suite"), want.get("suite")
    build = want.get(_SUITE_BUILD)
    if old is None or new is None or old == new or build is None or have.get(_SUITE_BUILD) != build:
        return have
    return {**have, "suite": new}


def _check_format(out: Path, have: object, want: int) -> None:
    """Refuse a run directory whose finished tasks were measured in another results format.

    Their numbers would be mixed, without a word, with those of the tasks run now.
    """
    fix = "pass --overwrite (overwrite=True in Python) to start afresh, or use another --out"
    if type(have) is int and have == want:
        return
    if have is not None and type(have) is not int:
        raise ScalelensError(f"{out / RUN_SPEC} records results format {have!r}, not a whole "
                             f"number (damaged?); {fix}")
    if type(have) is int and have > want:
        raise ScalelensError(
            f"{out} was written by a newer scalelens (results format {have}; this one writes "
            f"{want}); upgrade scalelens to resume it, or {fix}"
        )
    what = f"results format {have}" if have is not None else "no results format"
    raise ScalelensError(
        f"{out} was written by an older scalelens ({what}; this one writes {want}), whose finished "
        f"tasks may be measured otherwise than new ones would be; {fix}"
    )


def measured_by_older_scalelens(out: Path, spec) -> bool:
    """Whether ``out`` holds this very sweep measured in an older results format.

    Only the results format differs from what ``spec`` would record (the demo starts such a
    run afresh by itself: its results are remade in a minute).
    """
    try:
        have = json.loads((out / RUN_SPEC).read_text())
    except (OSError, ValueError):
        return False
    want = run_identity(spec)
    if not isinstance(have, dict):
        return False
    have = _same_suite_moved(have, want)
    old = have.get(_FORMAT)
    older = old is None or (type(old) is int and old < want[_FORMAT])
    same = {k: v for k, v in have.items() if k != _FORMAT} == {k: v for k, v in want.items() if k != _FORMAT}
    return older and same


def _earlier_and_new_models(out: Path, have: dict, want: dict, spec) -> dict | None:
    """The sizes of an earlier run of own models and of this one (sizes may be added or dropped).

    None when either run is not of own models. A size label that now names another model
    with measurements would mix two models' results: refused. A model directory moved or
    copied (its finished tasks' weights found at the new path) is the same model, recorded
    at its new path from now on.
    """
    from scalelens.sweeps.spec import case_twins

    old, new = have.get("models"), want.get("models")
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return None
    pair = case_twins([*old, *(s for s in new if s not in old)])
    if pair is not None:
        raise ScalelensError(
            f"{out} holds a sweep with size {pair[0]}, and size {pair[1]} differs from it only in "
            "case: on a case-insensitive file system (macOS, Windows) their task directories are "
            "one; use that size's label as it was, or another --out"
        )
    for size in new:
        if size in old and old[size] != new[size] and _has_measurements(out, size):
            why = _not_moved(out, size, old[size], new[size], spec)
            if why is not None:
                raise ScalelensError(
                    f"{out} holds a sweep whose size {size} was {old[size]}, not {new[size]}{why}; "
                    "use another --out or size label, or pass --overwrite to discard its finished tasks"
                )
    return {**old, **new}


def _not_moved(out: Path, size: str, old: object, new: str, spec) -> str | None:
    """None when ``new`` holds the weights ``size``'s finished tasks measured (a moved model).

    Else why not, as text to append (``""``: a hub id, or a path before or now, was not
    moved). Each finished task records its weights' fingerprint (in its results.json, or
    in a capture made before results.json did); the model at ``new`` is loaded on the CPU,
    checkpoint by checkpoint, and compared with it. Tasks that only began (captures) are
    checked by the capture they resume.
    """
    if not (isinstance(old, str) and Path(old).is_absolute() and Path(new).exists()):
        return ""
    for results in sorted((out / "tasks" / size).glob("*/results.json")):
        revision = results.parent.name
        recorded = _recorded_weights(results)
        if not recorded:
            return (f" (its finished task {size}/{revision} records no weights fingerprint, so "
                    "whether it is the same model moved is unknown)")
        try:
            found = _weights_at(new, None if revision == "main" else revision, spec)
        except ScalelensError as e:
            return f" ({size}/{revision} does not load from it: {str(e).splitlines()[0]})"
        if found != recorded:
            return " (other weights)"
    return None


def _recorded_weights(results: Path) -> str:
    """The weights fingerprint a finished task records; ``""`` when none.

    results.json's (``measure.run.WEIGHTS_KEY``), else a capture's beside it (tasks
    measured before results.json recorded it).
    """
    import h5py

    from scalelens.cache.writer import WEIGHTS_ATTR
    from scalelens.measure.run import WEIGHTS_KEY

    try:
        value = json.loads(results.read_text(encoding="utf-8")).get(WEIGHTS_KEY)
    except (OSError, ValueError, AttributeError):
        value = None
    if isinstance(value, str) and value:
        return value
    for capture in sorted(results.parent.glob("*.h5")):
        try:
            with h5py.File(capture, "r", locking=False) as f:
                value = f.attrs.get(WEIGHTS_ATTR)
        except OSError:
            continue
        if isinstance(value, str) and value:
            return value
    return ""


def _weights_at(source: str, revision: str | None, spec) -> str:
    """The fingerprint of the weights at ``source`` (a checkpoint), loaded as a task loads them.

    On the CPU: values and dtypes are the same on any device.
    """
    import gc

    from scalelens.models.describe import weights_fingerprint
    from scalelens.models.load import load_model

    loaded = load_model(source, revision=revision, default_tokenizer=spec.tokenizer,
                        device="cpu", dtype=spec.dtype)
    try:
        return weights_fingerprint(loaded.model)
    finally:
        del loaded
        gc.collect()


def _has_measurements(out: Path, size: str) -> bool:
    """Whether a task of ``size`` wrote anything but an error log (results, partial captures).

    A size re-pointed to another model would then mix, or resume, the first model's.
    """
    return any(f.is_file() and f.name != "error.log" for f in (out / "tasks" / size).rglob("*"))


def check_run_dir(out: Path, spec, overwrite: bool) -> None:
    """Refuse to resume a run directory made with other settings; record them for new runs.

    A sweep resumes by skipping tasks whose results.json exists, so a rerun with other
    analyses, settings or models, or by a scalelens that measures in another results
    format (``measure.run.RESULTS_FORMAT``), would silently mix results. The batch size
    is not compared: a rerun may lower it (say after running out of memory).
    """
    from scalelens.measure.run import write_json

    want = run_identity(spec)
    path = out / RUN_SPEC
    if path.is_file() and not overwrite:
        _check_resume(out, path, want, spec)
        _check_task_settings(out, spec)
        return
    if not overwrite:
        _check_unrecorded(out, want[_FORMAT])
    if overwrite:  # afresh: the old tasks and everything made from them
        from scalelens.reports.render import DEFAULT_NAME

        if (out / "tasks").exists():
            shutil.rmtree(out / "tasks")
        for name in (*RUN_TABLES, RUN_INFO, DEFAULT_NAME, Path(DEFAULT_NAME).with_suffix(".md").name):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)
