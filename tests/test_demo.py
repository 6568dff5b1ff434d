"""``scalelens demo`` end to end on the micro suite: report, resume, rebuilt cache, bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from cli_run import assert_one_line
from cli_run import run_cli as _run


class DemoRun(NamedTuple):
    """One finished ``demo`` run: its --out, exit code, stdout and stderr."""

    out: Path
    rc: int
    stdout: str
    err: str


def _demo_argv(suite: Path, out: Path) -> list[str]:
    return ["demo", "--suite", str(suite), "--checkpoints", "final", "--out", str(out)]


@pytest.fixture(scope="module")
def demo_run(micro_suite, tmp_path_factory) -> DemoRun:
    """``demo --suite MICRO --checkpoints final`` run once into a fresh --out (a sweep and a
    report: most of this file's time). Read-only: a test that reruns the demo there runs it
    in a copy (``shutil.copytree``); a run directory records no path of its own."""
    from scalelens.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    stdout, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        rc = main(_demo_argv(micro_suite, out))
    return DemoRun(out, rc, stdout.getvalue(), err.getvalue())


def _copy(run: DemoRun, dst: Path) -> Path:
    """A copy of ``run``'s --out at ``dst`` for a test to rerun the demo in."""
    shutil.copytree(run.out, dst)
    return dst


def _another_suite(suite: Path, dst: Path) -> Path:
    """A copy of ``suite`` at ``dst`` recorded as built with other settings (a mere copy, the
    same build moved, is the same suite)."""
    shutil.copytree(suite, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["settings_hash"] = "0" * 16
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _sizes_measured(out) -> set[str]:
    with (out / "metrics.csv").open() as fh:
        return {r["size"] for r in csv.DictReader(fh)}


def test_demo_on_a_micro_suite_reports_every_size_then_resumes(micro_suite, demo_run, tmp_path, capsys):
    """A finished --suite is used as built: the micro suite's 64-position models get
    settings that fit them (the default settings need 195 positions)."""
    assert demo_run.rc == 0, demo_run.err
    assert "4 done, 0 skipped, 0 failed" in demo_run.stdout
    assert _sizes_measured(demo_run.out) == {"16k", "37k", "50k", "94k"}
    assert "<html" in (demo_run.out / "report.html").read_text().lower()
    out = _copy(demo_run, tmp_path / "demo")
    rc, stdout, err = _run(capsys, _demo_argv(micro_suite, out))
    assert rc == 0 and "0 done, 4 skipped" in stdout, err


def test_demo_starts_afresh_when_its_cached_suite_is_rebuilt(micro_suite, tmp_path, capsys, monkeypatch):
    """Results measured on the old cached suite may not be skipped as if finished."""
    monkeypatch.setenv("SCALELENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["demo", "--preset", "micro", "--checkpoints", "final", "--out", str(out)]
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0 and "4 done" in stdout, err
    cached = next((tmp_path / "cache").iterdir()) / "manifest.json"
    manifest = json.loads(cached.read_text())
    manifest["settings_hash"] = "0" * 16  # as if built by a scalelens with another preset
    cached.write_text(json.dumps(manifest))
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    assert "rebuilding it" in stdout and "starting afresh" in stdout
    assert "4 done, 0 skipped" in stdout


def test_demo_starts_afresh_on_results_of_an_older_scalelens(micro_suite, demo_run, tmp_path, capsys):
    """A demo run measured in an older results format is remade, not refused (a plain sweep
    refuses it), also with its suite moved since; another suite's older run in the same --out
    is still refused, untouched."""
    from scalelens.measure.run import RESULTS_FORMAT

    assert demo_run.rc == 0, demo_run.err
    out = _copy(demo_run, tmp_path / "demo")
    moved = tmp_path / "moved suite"
    shutil.copytree(micro_suite, moved)
    argv = _demo_argv(moved, out)
    recorded = json.loads((out / "sweep_spec.json").read_text())
    (out / "sweep_spec.json").write_text(json.dumps({**recorded, "results_format": RESULTS_FORMAT - 1}))
    other = _another_suite(micro_suite, tmp_path / "other")
    rc, _, err = _run(capsys, ["demo", "--suite", str(other), "--checkpoints", "final", "--out", str(out)])
    assert_one_line(rc, err, "written by an older scalelens", "--overwrite")
    assert (out / "tasks").is_dir()
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    assert f"the results in {out} were measured by an older scalelens; starting afresh" in stdout
    assert "4 done, 0 skipped" in stdout
    assert json.loads((out / "sweep_spec.json").read_text())["results_format"] == RESULTS_FORMAT


def test_demo_refuses_another_suite_in_the_same_out(micro_suite, demo_run, tmp_path, capsys):
    assert demo_run.rc == 0, demo_run.err  # the run of the micro suite in --out
    out = _copy(demo_run, tmp_path / "demo")
    other = _another_suite(micro_suite, tmp_path / "other")
    base = ["demo", "--checkpoints", "final", "--out", str(out)]
    rc, _, err = _run(capsys, [*base, "--suite", str(other)])
    assert_one_line(rc, err, "different suite", "--overwrite")
    rc, stdout, err = _run(capsys, [*base, "--suite", str(other), "--overwrite"])
    assert rc == 0 and "4 done" in stdout, err


def test_demo_names_a_preset_that_does_not_match_the_suite(micro_suite, demo_run, tmp_path, capsys):
    out = tmp_path / "demo"
    rc, _, err = _run(capsys, ["demo", "--suite", str(micro_suite), "--preset", "default",
                               "--out", str(out)])
    assert_one_line(rc, err, "built from the 'micro' preset", "leave out --preset to use it as built")
    assert not out.exists()
    # as the line says: the same command without --preset, on an --out the refusal left absent,
    # is demo_run's command on its fresh --out
    assert demo_run.rc == 0 and "4 done" in demo_run.stdout, demo_run.err


def test_demo_bad_checkpoints_are_one_line_and_write_nothing(micro_suite, tmp_path, capsys):
    out = tmp_path / "demo"
    for steps, needle in (("foo", "checkpoints: log, all, final or steps"), ("5", "[5] not available")):
        rc, _, err = _run(capsys, ["demo", "--suite", str(micro_suite), "--checkpoints", steps,
                                   "--out", str(out)])
        assert_one_line(rc, err, needle)
        assert not out.exists()


def test_demo_refuses_a_file_as_out_before_building_a_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCALELENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report.txt"
    out.write_text("mine")
    rc, _, err = _run(capsys, ["demo", "--preset", "micro", "--out", str(out)])
    assert_one_line(rc, err, "is not a directory")
    assert not (tmp_path / "cache").exists() and out.read_text() == "mine"


def test_demo_refuses_a_file_as_suite_naming_suite_not_out(tmp_path, capsys):
    """``demo --suite notes.txt`` failed with suite build's line "--out notes.txt is a file; give a
    directory for the suite", naming an option the user did not give for that path."""
    suite, out = tmp_path / "notes.txt", tmp_path / "demo"
    suite.write_text("mine")
    rc, _, err = _run(capsys, ["demo", "--preset", "micro", "--suite", str(suite), "--out", str(out)])
    assert_one_line(rc, err, f"--suite {suite} is a file; give a suite directory")
    assert not out.exists() and suite.read_text() == "mine"


def test_demo_with_an_unwritable_cache_names_the_cache_not_out(tmp_path, capsys, monkeypatch):
    """The suite cache cannot be written: the line names SCALELENS_CACHE (the fix), not --out.

    sysfs refuses a new directory to root too (EPERM; EACCES for a user, EROFS where it is
    mounted read-only), so this needs neither a user account nor mount rights."""
    monkeypatch.setenv("SCALELENS_CACHE", "/sys/scalelens-test-cache")
    out = tmp_path / "demo"
    rc, _, err = _run(capsys, ["demo", "--preset", "micro", "--out", str(out)])
    line = assert_one_line(rc, err, "is not writable", "SCALELENS_CACHE")
    assert "--out" not in line
    assert not out.exists()
