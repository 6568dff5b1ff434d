from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from cli_run import assert_one_line, file_size_limit, run_cli
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig

from scalelens.errors import ScalelensError
from scalelens.models import cli as models_cli
from scalelens.models import load_model
from scalelens.models.corpus import CorpusConfig, generate_documents
from scalelens.models.params import count_parameters
from scalelens.models.presets import PRESETS, checkpoint_steps, size_name
from scalelens.models.suite import (
    SuiteSettingsMismatch,
    build_suite,
    default_suite_dir,
    read_manifest,
)


@pytest.fixture(scope="module")
def manifest(micro_suite):
    return read_manifest(micro_suite)


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


# --- manifest --------------------------------------------------------------------


def test_manifest_records_the_promised_fields(micro_suite, manifest):
    preset = PRESETS["micro"]
    assert manifest.format_version == 1 and manifest.preset == "micro"
    assert manifest.steps == checkpoint_steps(preset.train.total_steps, preset.checkpoint_every)
    assert len(manifest.sizes) == 4
    assert manifest.corpus["kind"] == "builtin" and manifest.corpus["seed"] == 0
    assert manifest.corpus["n_train_tokens"] > manifest.training["tokens_per_step"]
    assert manifest.training["optimizer"] == "AdamW" and manifest.training["seed"] == 0
    assert manifest.build["device"] == "cpu" and manifest.build["seconds"] > 0
    assert AutoTokenizer.from_pretrained(micro_suite / manifest.tokenizer).is_fast
    assert (micro_suite / manifest.valid_text).read_text().count(" .\n") > 10
    on_disk = json.loads((micro_suite / "manifest.json").read_text())
    assert on_disk == manifest.to_dict()


def test_sizes_grow_and_counts_come_from_the_config(manifest):
    totals = [manifest.models[s]["n_params"] for s in manifest.sizes]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    for name in manifest.sizes:
        record = manifest.models[name]
        config = GPTNeoXConfig.from_dict(record["config"])
        assert count_parameters(config) == (record["n_params"], record["n_params_non_embedding"])
        assert size_name(record["n_params"]) == name
        assert config.use_parallel_residual and not config.tie_word_embeddings
        assert config.rope_parameters["partial_rotary_factor"] == 0.25
        assert config.intermediate_size == 4 * config.hidden_size


def test_every_size_saw_the_same_token_stream(manifest):
    hashes = {manifest.models[s]["token_stream_sha256"] for s in manifest.sizes}
    assert len(hashes) == 1 and len(hashes.pop()) == 64


def test_every_size_learned(manifest):
    for name in manifest.sizes:
        ckpts = manifest.models[name]["checkpoints"]
        first, last = ckpts["0"]["valid_loss"], ckpts[str(manifest.steps[-1])]["valid_loss"]
        assert last < first - 1.0, name
        assert manifest.models[name]["final_loss"] == last


def test_every_manifest_checkpoint_loads(micro_suite, manifest):
    for size, step, path in manifest.checkpoints():
        lm = load_model(micro_suite / size, revision=f"step{step}")
        assert (lm.info.step, lm.info.source_kind) == (step, "suite")
        assert lm.info.n_params == manifest.models[size]["n_params"]
        record = json.loads((path / "scalelens_checkpoint.json").read_text())
        assert (record["size"], record["step"]) == (size, step)
        assert record["tokens_seen"] == step * manifest.training["tokens_per_step"]
    leftovers = [p for p in micro_suite.rglob(".tmp-*")]
    assert leftovers == []


def test_read_manifest_of_a_plain_directory(tmp_path):
    with pytest.raises(ScalelensError, match="suite build --out"):
        read_manifest(tmp_path)


# --- caching -------------------------------------------------------------------------


def test_rerun_reuses_the_finished_suite(micro_suite, manifest):
    before = _mtimes(micro_suite)
    started = time.perf_counter()
    again = build_suite(micro_suite, preset="micro", progress=False)
    assert time.perf_counter() - started < 2.0
    assert again == manifest and _mtimes(micro_suite) == before


def test_a_finished_suite_on_a_read_only_file_system_is_used_as_built(micro_suite, manifest, tmp_path):
    """A finished suite needs no lock: a copy on read-only media (or a shared cache) still serves."""
    from benchmarks import reliability as rel

    if not rel.can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "ro"
    rel.mount_tmpfs(mnt, "64m")
    try:
        shutil.copytree(micro_suite, mnt / "suite", ignore=shutil.ignore_patterns(".lock"))
        rel.mount_tmpfs(mnt, "64m", read_only=True)
        built = build_suite(mnt / "suite", preset="micro", progress=False)
        assert built == read_manifest(mnt / "suite") and built.settings_hash == manifest.settings_hash
        with pytest.raises(SuiteSettingsMismatch, match="with other settings"):
            build_suite(mnt / "suite", preset="micro", seed=1, progress=False)
        assert not (mnt / "suite" / ".lock").exists()
    finally:
        rel.unmount(mnt)


def test_other_settings_in_the_same_directory_are_refused(micro_suite):
    with pytest.raises(SuiteSettingsMismatch, match="with other settings"):
        build_suite(micro_suite, preset="micro", seed=1, progress=False)


def test_interrupted_build_is_completed(micro_suite, manifest, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(micro_suite, suite)
    broken, kept = manifest.sizes[1], manifest.sizes[0]
    last = manifest.steps[-1]
    reference = _state(suite / broken / f"step{last}")
    (suite / "manifest.json").unlink()
    (suite / broken / "size.json").unlink()
    shutil.rmtree(suite / broken / f"step{last}")
    (suite / broken / f".tmp-step{last}").mkdir()  # a half-written checkpoint
    kept_before = _mtimes(suite / kept)
    rebuilt = build_suite(suite, preset="micro", progress=False)
    assert _mtimes(suite / kept) == kept_before  # finished sizes are not retrained
    assert rebuilt.models[broken]["token_stream_sha256"] == manifest.models[broken]["token_stream_sha256"]
    state = _state(suite / broken / f"step{last}")
    assert all(torch.allclose(state[k], reference[k], atol=1e-6) for k in reference)
    assert not (suite / broken / f".tmp-step{last}").exists()


def test_a_size_missing_an_inner_checkpoint_is_retrained(micro_suite, manifest, tmp_path):
    """A size whose size.json is there but one of its middle checkpoints is gone (deleted by
    hand) is not finished: the rebuild puts that checkpoint back, with the same weights."""
    suite = tmp_path / "suite"
    shutil.copytree(micro_suite, suite)
    size, step = manifest.sizes[0], manifest.steps[len(manifest.steps) // 2]
    assert step not in (manifest.steps[0], manifest.steps[-1])
    shutil.rmtree(suite / size / f"step{step}")
    rebuilt = build_suite(suite, preset="micro", progress=False)
    assert all(path.is_dir() for _, _, path in rebuilt.checkpoints())
    ours = load_file(suite / size / f"step{step}" / "model.safetensors")
    theirs = load_file(micro_suite / size / f"step{step}" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)


def test_a_build_that_runs_out_of_room_stops_with_one_line_and_resumes(micro_suite, manifest, tmp_path,
                                                                      capsys):
    """The weights' writer (safetensors, Rust) fails past a file-size limit as on a full disk:
    one line and exit 2, not an internal error; the same command then completes the suite."""
    suite = tmp_path / "suite"
    argv = ["suite", "build", "--out", str(suite), "--preset", "micro", "--quiet"]
    with file_size_limit(32 * 1024):  # the tokenizer and JSON files fit, no model.safetensors does
        rc, _, err = run_cli(capsys, argv)
    assert_one_line(rc, err, "file-size limit")
    assert run_cli(capsys, argv)[0] == 0
    for size, step, path in read_manifest(suite).checkpoints():
        ours = load_file(path / "model.safetensors")
        theirs = load_file(micro_suite / size / f"step{step}" / "model.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert not list(suite.rglob(".tmp-*"))


@pytest.mark.parametrize("limit", [4096, 32 * 1024])
def test_a_build_that_runs_out_of_room_leaves_no_temporary_directory(tmp_path, capsys, limit):
    """The tokenizer (4 KiB: its tokenizer.json is cut) and each checkpoint are written into a
    hidden .tmp-<name> directory; a failed write left it behind, half-written, until a rerun."""
    suite = tmp_path / "suite"
    with file_size_limit(limit):
        rc, _, err = run_cli(capsys, ["suite", "build", "--out", str(suite), "--preset", "micro", "--quiet"])
    assert_one_line(rc, err, "file-size limit")
    assert sorted(str(p.relative_to(suite)) for p in suite.rglob(".tmp-*")) == []


def test_a_module_first_imported_under_a_file_size_limit_leaves_no_broken_bytecode(tmp_path, monkeypatch):
    """Python writes a .pyc without checking how much was written: under RLIMIT_FSIZE it was cut
    at the limit and then read back by every later process ("marshal data too short", the
    CLI's lazily imported sweeps.spec after the test above). No bytecode is written inside."""
    import importlib
    import subprocess
    import sys

    source = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(400))
    (tmp_path / "big_module.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    with file_size_limit(1024):
        assert importlib.import_module("big_module").f399(1) == 400
    assert sys.dont_write_bytecode is False
    later = subprocess.run([sys.executable, "-c", "import big_module; print(big_module.f7(1))"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert (later.returncode, later.stdout.strip()) == (0, "8"), later.stderr[-300:]


def test_parallel_workers_train_the_same_models(micro_suite, manifest, tmp_path):
    # Workers are ``python -m scalelens.models.suite_worker`` subprocesses, so a calling
    # script needs no ``if __name__ == "__main__"`` guard (multiprocessing would need one).
    parallel = build_suite(tmp_path / "par", preset="micro", progress=False, workers=2)
    assert parallel.build["workers"] == 2 and parallel.settings_hash == manifest.settings_hash
    for name in manifest.sizes:
        ours, theirs = parallel.models[name], manifest.models[name]
        assert ours["token_stream_sha256"] == theirs["token_stream_sha256"]
        assert ours["final_loss"] == pytest.approx(theirs["final_loss"], abs=1e-4)
    assert not (tmp_path / "par" / ".jobs").exists()


# --- user corpus, sizes, CLI -------------------------------------------------------


def test_user_corpus_file_and_custom_size(tmp_path):
    docs = generate_documents(CorpusConfig(n_docs=80, seed=5))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(d.strip() for d in docs))
    built = build_suite(
        tmp_path / "s",
        corpus_file=corpus,
        sizes=["1x16x2", "1x32x4"],
        steps=4,
        preset="micro",
        progress=False,
    )
    assert built.corpus["kind"] == "file" and built.corpus["n_docs"] == 80
    assert built.steps == [0, 1, 2, 3, 4]
    assert [built.models[s]["shape"] for s in built.sizes] == ["1x16x2", "1x32x4"]
    lm = load_model(tmp_path / "s" / built.sizes[0])
    assert lm.info.step == 4 and len(lm.tokenizer) <= PRESETS["micro"].vocab_size


def test_missing_corpus_file(tmp_path):
    with pytest.raises(ScalelensError, match="does not exist"):
        build_suite(tmp_path / "s", corpus_file=tmp_path / "nope.txt", preset="micro")
    assert not (tmp_path / "s").exists()


def test_a_bad_corpus_leaves_nothing_that_blocks_the_fixed_rerun(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one lonely document\n")
    with pytest.raises(ScalelensError):
        build_suite(tmp_path / "s", corpus_file=corpus, sizes=["1x16x2"], steps=2, preset="micro",
                    progress=False)
    assert not (tmp_path / "s").exists()
    corpus.write_text("\n\n".join(d.strip() for d in generate_documents(CorpusConfig(n_docs=40, seed=5))))
    built = build_suite(tmp_path / "s", corpus_file=corpus, sizes=["1x16x2"], steps=2, preset="micro",
                        progress=False)
    assert built.steps == [0, 1, 2]


def test_a_folder_that_holds_no_suite_is_never_adopted(tmp_path):
    """A build replaces size directories it finds: a user's folder named like a size must
    not be deleted."""
    out = tmp_path / "mine"
    (out / "1x16x2").mkdir(parents=True)
    (out / "1x16x2" / "notes.txt").write_text("keep me")
    with pytest.raises(ScalelensError, match="is not empty and holds no suite"):
        build_suite(out, sizes=["1x16x2"], steps=2, preset="micro", progress=False)
    assert (out / "1x16x2" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.rglob("*")) == ["1x16x2", "notes.txt"]


SUITE_BUILD_CASES = {  # options after `suite build --preset micro` (t: an empty directory), needles
    "--corpus is a directory": (lambda t: ["--out", str(t / "s"), "--corpus", str(t)],
                                ("corpus file", "is a directory; pass a text file")),
    "--out under a file": (lambda t: ["--out", str(t / "file" / "x")],  # was "Not a directory (.../x)"
                           ("--out", "lies under", "which is a file; give a directory for the suite")),
    "empty --sizes": (lambda t: ["--out", str(t / "s"), "--sizes", ""],  # built every size, as sweep refuses
                      ("--sizes is empty", "leave it out for all")),
    "--sizes of commas only": (lambda t: ["--out", str(t / "s"), "--sizes", " , "],
                               ("--sizes is empty",)),
}


@pytest.mark.parametrize("name", list(SUITE_BUILD_CASES))
def test_bad_suite_build_input(name, tmp_path, capsys):
    """A bad input of ``suite build`` is one line naming what is wrong, and nothing is written."""
    build, needles = SUITE_BUILD_CASES[name]
    (tmp_path / "file").write_text("x")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc, _, err = run_cli(capsys, ["suite", "build", "--preset", "micro", "--quiet", *build(tmp_path)])
    assert_one_line(rc, err, *needles)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_unknown_size_and_preset(tmp_path):
    with pytest.raises(ScalelensError, match="unknown size 'huge'"):
        build_suite(tmp_path / "s", sizes=["huge"], preset="micro")
    with pytest.raises(ScalelensError, match="unknown suite preset 'big'"):
        build_suite(tmp_path / "s", preset="big")


@pytest.mark.parametrize("seed", [str(2**64), str(-(2**63) - 1)])
def test_a_seed_torch_cannot_take_is_one_line_before_anything_is_written(seed, tmp_path, capsys):
    """--seed past torch.manual_seed's range failed mid-build as an internal error (exit 1,
    "Overflow when unpacking long long"), after the corpus and tokenizer were written."""
    from scalelens.cli import main

    out = tmp_path / "s"
    rc, _, err = run_cli(capsys, ["suite", "build", "--out", str(out), "--preset", "micro", "--sizes", "16k",
                                  f"--seed={seed}"])
    assert_one_line(rc, err, f"seed {seed} is out of range", "--seed")
    assert not out.exists()
    assert main(["suite", "build", "--out", str(out), "--preset", "micro", "--sizes", "16k", "--quiet",
                 f"--seed={2**64 - 1}"]) == 0


def test_cli_build_and_info(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-suite"
    args = parser.parse_args(
        [
            "suite",
            "build",
            "--out",
            str(out),
            "--preset",
            "micro",
            "--sizes",
            "1x16x2",
            "--steps",
            "2",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    manifest = read_manifest(out)
    args = parser.parse_args(["suite", "info", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert manifest.sizes[0] in printed and "valid loss" in printed
    assert set(models_cli.PRESET_NAMES) == set(PRESETS)


def test_default_suite_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALELENS_CACHE", str(tmp_path))
    assert default_suite_dir("micro") == tmp_path / "suite-micro-v1"
    monkeypatch.delenv("SCALELENS_CACHE")
    assert default_suite_dir().parts[-3:] == (".cache", "scalelens", "suite-default-v1")


def test_default_suite_dir_expands_a_tilde_in_the_env(monkeypatch, tmp_path):
    # as HF_HOME / HF_HUB_CACHE are: SCALELENS_CACHE="~/x" is not a folder named ~ in the working directory
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SCALELENS_CACHE", "~/sl cache")
    assert default_suite_dir("micro") == tmp_path / "sl cache" / "suite-micro-v1"


def test_default_preset_is_a_pythia_like_family():
    preset = PRESETS["default"]
    configs = preset.size_configs()
    assert len(configs) >= 4
    totals = [count_parameters(c)[0] for c in configs.values()]
    assert totals == sorted(totals)
    assert all(c.use_parallel_residual and not c.tie_word_embeddings for c in configs.values())


def test_explicit_checkpoint_steps(tmp_path):
    built = build_suite(tmp_path / "s", sizes=["1x16x2"], steps=[3, 0, 5], preset="micro", progress=False)
    assert built.steps == [0, 3, 5] and built.training["total_steps"] == 5
    assert sorted(p.name for p in (tmp_path / "s" / built.sizes[0]).glob("step*")) == [
        "step0",
        "step3",
        "step5",
    ]


def test_size_names_follow_pythia_style():
    assert [size_name(n) for n in (91_008, 231_168, 1_055_488, 70_426_624, 11_846_072_320)] == [
        "91k",
        "231k",
        "1.1m",
        "70m",
        "12b",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda(tmp_path):
    with pytest.raises(ScalelensError, match="CUDA is not available"):
        build_suite(tmp_path / "s", preset="micro", device="cuda")


def test_a_resumed_build_cleans_worker_scratch_and_respects_the_umask(tmp_path):
    """An interrupted parallel build leaves pickled jobs (MBs each) in .jobs; the build that
    completes the suite removes them. JSON files get the umask's mode, like the rest."""
    import os

    out = tmp_path / "s"
    kw = dict(sizes=["1x16x2"], steps=2, preset="micro", progress=False)
    build_suite(out, **kw)
    (out / "manifest.json").unlink()  # as if interrupted before the end
    (out / ".jobs").mkdir()
    (out / ".jobs" / "1x16x2.pkl").write_bytes(b"x" * 1000)
    build_suite(out, **kw)
    assert (out / "manifest.json").is_file() and not (out / ".jobs").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_resumed_parallel_build_gives_the_same_weights(tmp_path):
    """An interrupted build that has one size left trains it in-process; it used two torch
    threads there against one per worker before, which changes the floating-point sums."""
    from safetensors.torch import load_file

    out = tmp_path / "s"
    kw = dict(preset="default", sizes=["1x16x2", "2x32x2"], steps=6, progress=False)
    built = build_suite(out, **kw)
    last = f"step{built.steps[-1]}"
    ref = {s: load_file(out / s / last / "model.safetensors") for s in built.sizes}
    (out / "manifest.json").unlink()  # what an interrupt while the second size trained left
    (out / built.sizes[1] / "size.json").unlink()
    resumed = build_suite(out, **kw)
    assert resumed.build["workers"] == 1
    for size in built.sizes:
        new = load_file(out / size / last / "model.safetensors")
        assert all(torch.equal(ref[size][k], new[k]) for k in ref[size]), size


@pytest.mark.parametrize("workers", [1, 2])
def test_each_sizes_log_line_is_timed_from_its_own_start(workers, tmp_path, monkeypatch, capsys):
    """A size's progress bar counts from when its training starts, not the build's start.

    Every bar was made when the build began, so in a log a size trained later showed the
    whole build's elapsed time and a rate (and ETA) diluted by it (the demo's log:
    ``suite 231k: 1/160 steps [05:56<15:45:51, 356.93s/step]``). Here the clock moves
    1,000 s as each size starts and stands still otherwise, so each size's own line must
    read 16:40, where the last size to start read 50:00.
    """
    from scalelens.models import suite_train

    clock = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: clock[0])
    starts = suite_train.train_size if workers == 1 else suite_train._Worker.__init__
    name = "train_size" if workers == 1 else "__init__"
    owner = suite_train if workers == 1 else suite_train._Worker

    def started(*args, **kwargs):
        clock[0] += 1000.0
        return starts(*args, **kwargs)

    monkeypatch.setattr(owner, name, started)
    sizes = ["16k", "37k", "50k"]
    build_suite(tmp_path / "s", sizes=sizes, preset="micro", progress=True, workers=workers)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("suite ")]
    finals = {ln.split(":")[0].removeprefix("suite "): ln for ln in lines}
    assert sorted(finals) == sorted(sizes), lines
    last = sizes[0]  # trained last: sequentially in order; in parallel largest first
    assert "[16:40<" in finals[last], finals[last]
    if workers == 1:
        assert all("[16:40<" in ln for ln in finals.values()), lines
