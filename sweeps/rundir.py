"""A sweep's run directory: one sweep at a time, and never resumed with other settings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scalelens.cache.lock import WriteLock
from scalelens.errors import ScalelensError

RUN_TABLES = ("metrics.csv", "metrics.parquet", "fits.json")
"""What a sweep derives from its finished tasks (rewritten by every run)."""
LOCK_NAME = ".sweep.lock"


@contextmanager
def locked_run_dir(out: Path) -> Iterator[None]:
    """Create ``out`` if needed and hold its sweep lock inside (another sweep: one line)."""
    from scalelens.commands.measure import check_out_dir

    check_out_dir(out, "run directory", "a run directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = WriteLock(out, writer="sweep", lock_path=out / LOCK_NAME).acquire()
    try:
        yield
    finally:
        lock.release()


RUN_SPEC = "sweep_spec.json"
# Spec fields that change what a finished task's results mean; the rest (sizes,
# checkpoints, executor, address, device) may change between runs into the same directory.
_IDENTITY = ("suite", "family", "analyses", "settings")
# A suite rebuilt in place with other settings holds other models under the same task keys.
_SUITE_BUILD = "suite_build"


def run_identity(spec) -> dict:
    """What a run directory's finished tasks were measured with (``sweep_spec.json``)."""
    from scalelens.models.manifest import read_manifest

    want = {k: v for k, v in spec.to_dict().items() if k in _IDENTITY}
    if spec.suite is not None:
        want[_SUITE_BUILD] = read_manifest(spec.suite).settings_hash
    return want


def check_run_dir(out: Path, spec, overwrite: bool) -> None:
    """Refuse to resume a run directory made with other settings; record them for new runs.

    A sweep resumes by skipping tasks whose results.json exists, so a rerun with other
    analyses, settings or models would silently mix results.
    """
    from scalelens.measure.run import write_json

    want = run_identity(spec)
    path = out / RUN_SPEC
    if path.is_file() and not overwrite:
        try:
            have = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            have = None
        if not isinstance(have, dict) or not have:
            raise ScalelensError(
                f"{path} is unreadable (not the JSON object a sweep writes), so what its tasks were "
                "measured with is unknown; pass --overwrite to start afresh, or use another --out"
            )
        older = isinstance(have, dict) and _SUITE_BUILD in want and _SUITE_BUILD not in have
        if older:  # recorded by a scalelens that did not note the suite build: trusted
            have = {**have, _SUITE_BUILD: want[_SUITE_BUILD]}
        if have != want:
            diff = sorted(k for k in want if not isinstance(have, dict) or have.get(k) != want.get(k))
            what = ", ".join("suite build settings (the suite was rebuilt)" if k == _SUITE_BUILD else k
                             for k in diff)
            raise ScalelensError(
                f"{out} holds a sweep with different {what}; use another --out, or pass "
                "--overwrite to discard its finished tasks"
            )
        if older:
            write_json(path, want)
        return
    if overwrite:  # afresh: the old tasks and everything made from them
        from scalelens.reports.render import DEFAULT_NAME

        if (out / "tasks").exists():
            shutil.rmtree(out / "tasks")
        for name in (*RUN_TABLES, "run.json", DEFAULT_NAME, Path(DEFAULT_NAME).with_suffix(".md").name):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)
