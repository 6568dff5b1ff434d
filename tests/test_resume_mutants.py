"""Tests that kill the mutants that survived in the sweep resume checks added since commit 2cb5d30.

Each pins a case the end-to-end tests left open: which recorded paths count as the file given
now, what a tokenizer directory's identity is made of, a suite moved or rebuilt, which finished
tasks are read and how their odd results.json are passed over, and how an own model is told
moved. Run directories are written by hand (``sweep_spec.json``, ``results.json``) and checked
with :func:`check_run_dir`: no task is run (but for the one model swept in bfloat16).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalelens.errors import ScalelensError
from scalelens.measure.run import RESULTS_FORMAT
from scalelens.sweeps.rundir import RUN_SPEC, check_run_dir, run_identity
from scalelens.sweeps.spec import SweepSpec


def _spec(model: Path, **kw) -> SweepSpec:
    return SweepSpec(models={"x": str(model)}, checkpoints="final", analyses=("superposition",), **kw)


def _recorded(out: Path, spec: SweepSpec, **changes) -> None:
    """``out/sweep_spec.json`` as ``spec`` records it, with ``changes`` to its settings."""
    want = run_identity(spec)
    want["settings"] = {**want.get("settings", {}), **changes}
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_SPEC).write_text(json.dumps(want))


# -- setting files recorded as paths (run directories before they were recorded by content) -------

def test_a_recorded_setting_path_resumes_only_for_that_path(tiny_model_dir, tmp_path):
    """A run that recorded ``text`` as a path resumes with that path given again, and is refused
    with another file: only the path given now is taken for the content it has now."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha beta " * 50)
    b.write_text("gamma delta " * 50)
    spec = _spec(tiny_model_dir, settings={"text": str(b)})
    out = tmp_path / "run"
    _recorded(out, spec, text=str(b))
    check_run_dir(out, spec, overwrite=False)
    assert json.loads((out / RUN_SPEC).read_text())["settings"]["text"].startswith("sha256:")
    _recorded(out, spec, text=str(a))  # made with a.txt; b.txt given now
    with pytest.raises(ScalelensError, match="holds a sweep with different settings"):
        check_run_dir(out, spec, overwrite=False)



def test_a_built_in_needle_set_is_recorded_by_name_beside_a_file_so_named(tiny_model_dir, tmp_path,
                                                                         monkeypatch):
    """``needles = "english"`` names the built-in set even where a file ``english`` lies in the
    working directory: it is recorded as the name, not that file's content."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "english").write_text("not needles")
    spec = _spec(tiny_model_dir, settings={"needles": "english"})
    assert run_identity(spec)["settings"]["needles"] == "english"

# -- a --tokenizer directory's identity ------------------------------------------------------------

def test_a_tokenizer_directory_counts_by_its_tokenizer_files_only(tiny_model_dir, tmp_path):
    """A model directory given as ``--tokenizer`` is the same tokenizer when its weights change
    (retrained), and another one when a tokenizer file changes."""
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, tok)
    first = run_identity(_spec(tiny_model_dir, tokenizer=str(tok)))["tokenizer"]
    assert first.startswith("sha256:")
    (tok / "model.safetensors").write_bytes(b"retrained")
    (tok / "config.json").write_text("{}")
    assert run_identity(_spec(tiny_model_dir, tokenizer=str(tok)))["tokenizer"] == first
    (tok / "special_tokens_map.json").write_text("{}")
    assert run_identity(_spec(tiny_model_dir, tokenizer=str(tok)))["tokenizer"] != first


def test_a_tokenizer_hub_id_is_recorded_as_it_is(tiny_model_dir):
    """A hub id names no files: it is recorded as given, so two hub tokenizers stay apart."""
    ids = [run_identity(_spec(tiny_model_dir, tokenizer=t))["tokenizer"] for t in ("org/one", "org/two")]
    assert ids == ["org/one", "org/two"]


def test_tokenizer_files_count_by_name_and_bytes_not_their_concatenation(tiny_model_dir, tmp_path):
    """The same bytes split otherwise between two files, or under another file name, are
    another tokenizer."""
    def ident(files: dict[str, str]) -> str:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        return run_identity(_spec(tiny_model_dir, tokenizer=str(d)))["tokenizer"]

    split = ident({"tokenizer.json": "ab", "vocab.txt": "c"})
    assert split != ident({"tokenizer.json": "a", "vocab.txt": "bc"})
    assert ident({"tokenizer.json": "abc"}) != ident({"vocab.json": "abc"})



# -- a suite moved ---------------------------------------------------------------------------------

def _suite_spec(suite: Path) -> SweepSpec:
    from scalelens.models.suite import read_manifest

    manifest = read_manifest(suite)
    return SweepSpec(suite=str(suite), sizes=(manifest.sizes[0],), checkpoints="final",
                     analyses=("superposition",))


def test_a_suite_at_another_path_that_was_rebuilt_is_named_as_another_suite(micro_suite, tmp_path):
    """Only the same build at another path is the suite moved; another build at another path is
    refused naming both."""
    spec = _suite_spec(micro_suite)
    out = tmp_path / "run"
    out.mkdir()
    have = {**run_identity(spec), "suite": str(tmp_path / "old suite"), "suite_build": "0" * 16}
    (out / RUN_SPEC).write_text(json.dumps(have))
    with pytest.raises(ScalelensError, match=r"different suite, suite build settings \(the suite was "
                       r"rebuilt\); use another --out"):
        check_run_dir(out, spec, overwrite=False)


def test_the_demo_remakes_a_moved_suites_run_of_an_older_results_format(micro_suite, tmp_path):
    """``measured_by_older_scalelens``: the same sweep, of an older results format, with its suite
    since moved, is still this sweep measured by an older scalelens (the demo remakes it)."""
    from scalelens.sweeps.rundir import measured_by_older_scalelens

    spec = _suite_spec(micro_suite)
    out = tmp_path / "run"
    out.mkdir()
    have = {**run_identity(spec), "suite": str(tmp_path / "old suite"), "results_format": RESULTS_FORMAT - 1}
    (out / RUN_SPEC).write_text(json.dumps(have))
    assert measured_by_older_scalelens(out, spec)
    (out / RUN_SPEC).write_text(json.dumps({**have, "suite_build": "0" * 16}))
    assert not measured_by_older_scalelens(out, spec)

# -- finished tasks' own settings (results.json) ----------------------------------------------------

def _task(out: Path, data: object, task: str = "x/main") -> Path:
    path = out / "tasks" / task / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_a_setting_this_scalelens_lacks_is_passed_over_and_a_changed_one_refused(tiny_model_dir, tmp_path):
    """A finished task's results.json may record a setting this scalelens has no more, and another
    batch size: both resume. A setting measured otherwise is refused, naming the task."""
    from dataclasses import asdict

    from scalelens.sweeps.tasks import measure_settings

    spec = _spec(tiny_model_dir, settings={"batch_size": 2})
    out = tmp_path / "run"
    _recorded(out, spec)
    settings = json.loads(json.dumps(asdict(measure_settings(spec.settings)), default=str))
    settings["massive"]["a_setting_since_removed"] = 3
    settings["massive"]["batch_size"] = 8  # measured with another batch size: the same numbers
    path = _task(out, {"results_format": RESULTS_FORMAT, "settings": settings})
    check_run_dir(out, spec, overwrite=False)
    settings["massive"]["topk"] = settings["massive"]["topk"] + 1
    path.write_text(json.dumps({"results_format": RESULTS_FORMAT, "settings": settings}))
    with pytest.raises(ScalelensError, match="finished task x/main was measured with massive topk"):
        check_run_dir(out, spec, overwrite=False)


def test_a_results_json_that_is_no_object_is_passed_over(tiny_model_dir, tmp_path):
    """A finished task's results.json that holds a list (truncated, hand-edited) is named when the
    tables are made, not a traceback in the resume checks."""
    from scalelens.sweeps.rundir import _recorded_weights

    spec = _spec(tiny_model_dir)
    out = tmp_path / "run"
    _recorded(out, spec)
    path = _task(out, [1, 2])
    check_run_dir(out, spec, overwrite=False)
    assert _recorded_weights(path) == ""



def _models_recorded(out: Path, spec: SweepSpec, source: str) -> None:
    want = {**run_identity(spec), "models": {"x": source}}
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_SPEC).write_text(json.dumps(want))


def test_a_size_that_measured_nothing_may_be_pointed_at_any_model(tiny_model_dir, tmp_path):
    """Size x's tasks left only an error log: x may name a hub model now (nothing to mix)."""
    spec = SweepSpec(models={"x": "org/other"}, checkpoints="final", analyses=("superposition",))
    out = tmp_path / "run"
    _models_recorded(out, spec, str(tiny_model_dir))
    (out / "tasks" / "x" / "main").mkdir(parents=True)
    (out / "tasks" / "x" / "main" / "error.log").write_text("OSError: boom\n")
    check_run_dir(out, spec, overwrite=False)
    assert json.loads((out / RUN_SPEC).read_text())["models"] == {"x": "org/other"}


def test_a_size_measured_from_a_hub_id_is_not_taken_for_a_local_copy(tiny_model_dir, tmp_path):
    """Only a model directory moves: a size measured from a hub id and now given a directory of
    the same weights is refused (a hub revision is no checkpoint directory)."""
    from scalelens.models.describe import weights_fingerprint
    from scalelens.models.load import load_model

    spec = _spec(tiny_model_dir)
    out = tmp_path / "run"
    _models_recorded(out, spec, "org/m")
    same = weights_fingerprint(load_model(str(tiny_model_dir), device="cpu").model)
    _task(out, {"results_format": RESULTS_FORMAT, "weights_fingerprint": same})
    with pytest.raises(ScalelensError, match=r"size x was org/m, not .*gpt_neox; use another --out"):
        check_run_dir(out, spec, overwrite=False)

# -- finished tasks and no sweep_spec.json ---------------------------------------------------------

def test_tasks_of_this_format_beside_ones_of_none_are_an_older_scalelenss(tiny_model_dir, tmp_path):
    spec = _spec(tiny_model_dir)
    out = tmp_path / "run"
    _task(out, {"results_format": RESULTS_FORMAT}, "x/step1")
    _task(out, {}, "x/step2")
    with pytest.raises(ScalelensError, match=r"written by an older scalelens .*record no results format;"):
        check_run_dir(out, spec, overwrite=False)


def test_a_results_format_that_is_no_number_is_named_as_it_is(tiny_model_dir, tmp_path):
    spec = _spec(tiny_model_dir)
    out = tmp_path / "run"
    _task(out, {"results_format": [3]})
    with pytest.raises(ScalelensError, match=r"record results format '\[3\]'; this one writes"):
        check_run_dir(out, spec, overwrite=False)


def test_a_directory_named_results_json_is_no_finished_task(tiny_model_dir, tmp_path):
    spec = _spec(tiny_model_dir)
    out = tmp_path / "run"
    (out / "tasks" / "x" / "main" / "results.json").mkdir(parents=True)
    check_run_dir(out, spec, overwrite=False)
    assert (out / RUN_SPEC).is_file()


# -- own models moved: loaded as their tasks loaded them ---------------------------------------------

def test_a_moved_model_without_checkpoints_swept_in_bfloat16_resumes(tiny_model_dir, tmp_path):
    """A model directory with no step checkpoints (its task: ``main``), swept with dtype bfloat16,
    then moved: its weights at the new path are loaded as the task loaded them (no revision, in
    bfloat16) and found the same."""
    import shutil

    from scalelens.sweeps.run import sweep

    first, moved = tmp_path / "scratch" / "m", tmp_path / "home" / "m"
    shutil.copytree(tiny_model_dir, first)
    kw = dict(checkpoints="final", analyses=("superposition",), dtype="bfloat16",
              settings={"n_sequences": 2, "seq_length": 16})
    out = tmp_path / "out"
    assert sweep(SweepSpec(models={"x": str(first)}, **kw), out).count("done") == 1
    assert [p.parent.name for p in (out / "tasks" / "x").glob("*/results.json")] == ["main"]
    shutil.move(first, moved)
    again = sweep(SweepSpec(models={"x": str(moved)}, **kw), out)
    assert (again.count("skipped"), again.failed) == (1, [])
