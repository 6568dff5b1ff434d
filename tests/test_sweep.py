"""Sweeps over the micro suite: metrics.csv/fits.json, skip on rerun, retry and report failures, Ray."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from scalelens.errors import ScalelensError
from scalelens.models.suite import read_manifest
from scalelens.sweeps.metrics import COLUMNS, write_metrics
from scalelens.sweeps.run import sweep
from scalelens.sweeps.rundir import RUN_TABLES
from scalelens.sweeps.spec import SweepSpec, expand, select_steps
from scalelens.sweeps.tasks import task_dir

FAST = {"context_lengths": [24], "depths": [0.2, 0.8], "n_needles": 1, "ablation_k": 0,
        "n_sequences": 2, "seq_length": 24, "dilutions": [1, 2], "dominance_prompts": 2,
        "batch_size": 4, "gate": -1.0}


@pytest.fixture(scope="module")
def suite_copy(micro_suite, tmp_path_factory):
    """A private copy, so breaking a checkpoint does not affect other tests."""
    dst = tmp_path_factory.mktemp("suite") / "micro"
    shutil.copytree(micro_suite, dst)
    return dst


def _spec(suite, **kw):
    manifest = read_manifest(suite)
    base = dict(suite=str(suite), sizes=tuple(manifest.sizes[:3]),
                checkpoints=tuple(manifest.steps[-2:]), settings=dict(FAST))
    base.update(kw)
    return SweepSpec(**base)


def test_log_steps_thin_the_linear_part():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 144000, 1000))
    picked = select_steps(steps, "log")
    assert picked[:11] == steps[:11] and picked[-1] == 143000 and len(picked) == 11 + 8
    assert select_steps(steps, "final") == [143000] and len(select_steps(steps, "all")) == 154


def test_local_sweep_writes_metrics_and_fits_and_skips_on_rerun(suite_copy, tmp_path):
    spec = _spec(suite_copy)
    summary = sweep(spec, tmp_path)
    assert summary.count("done") == 6 and not summary.failed
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    sizes = {r["size"] for r in rows}
    assert sizes == set(spec.sizes)
    fractions = [r for r in rows if r["metric"] == "fraction" and r["analysis"] == "retrieval_heads"]
    assert len(fractions) == 6 and all(0 <= float(r["value"]) <= 1 for r in fractions)
    manifest = read_manifest(suite_copy)
    overlap = [r for r in rows if r["metric"] == "mean_sq_overlap"]
    assert {int(r["n_params"]) for r in overlap} == {manifest.models[s]["n_params"] for s in spec.sizes}
    fits = json.loads((tmp_path / "fits.json").read_text())
    names = {(f["metric"], f["x_name"]) for f in fits["fits"]}
    assert ("superposition.mean_sq_overlap", "n_params") in names
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["sizes"] == list(spec.sizes)
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / "tasks").rglob("results.json"))
    tables = _tables(tmp_path)
    assert set(tables) == {"metrics.csv", "metrics.parquet", "fits.json"}
    again = sweep(spec, tmp_path)
    assert again.count("skipped") == 6 and again.count("done") == 0
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "tasks").rglob("results.json")) == stamps
    assert _tables(tmp_path) == tables  # nothing changed: the same bytes, not rewritten
    sweep(dataclasses.replace(spec, sizes=spec.sizes[:2]), tmp_path)  # other tables: remade
    remade = _tables(tmp_path)
    assert all(remade[name][0] != tables[name][0] for name in tables)
    with (tmp_path / "metrics.csv").open() as fh:
        assert {r["size"] for r in csv.DictReader(fh)} == set(spec.sizes[:2])


def _tables(run: Path) -> dict[str, tuple[bytes, int]]:
    """The run's tables: each one's bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in map(run.joinpath, RUN_TABLES)
            if p.is_file()}


def _sweep_with_a_broken_config(suite, spec, run_dir, broken):
    """Sweep ``spec`` with ``broken``'s config.json unreadable (restored after): that task fails."""
    cfg = suite / broken.size / broken.revision / "config.json"
    saved = cfg.read_text()
    cfg.write_text("{not json")
    try:
        return sweep(spec, run_dir)
    finally:
        cfg.write_text(saved)


def test_failing_task_is_reported_without_stopping_others(suite_copy, tmp_path):
    """A broken checkpoint fails the same way every time: one attempt, then the others run."""
    spec = _spec(suite_copy, analyses=("superposition",))
    broken = expand(spec)[0]
    summary = _sweep_with_a_broken_config(suite_copy, spec, tmp_path, broken)
    assert [o.key for o in summary.failed] == [broken.key]
    assert summary.failed[0].attempts == 1 and summary.count("done") == 5
    assert (tmp_path / "tasks" / broken.key / "error.log").is_file()
    rerun = sweep(spec, tmp_path)
    assert rerun.count("done") == 1 and rerun.count("skipped") == 5


def test_a_task_failing_under_a_path_that_is_not_utf8_is_reported_not_fatal(micro_suite, tmp_path):
    """A path holding a byte that is not UTF-8 (legal on Linux) ends up in the task's traceback;
    writing that error.log must not end the sweep with an internal error."""
    suite = tmp_path / os.fsdecode(b"suite \xff")
    shutil.copytree(micro_suite, suite)
    manifest = read_manifest(suite)
    spec = _spec(suite, analyses=("superposition",), sizes=tuple(manifest.sizes[:2]),
                 checkpoints=(manifest.steps[-1],))
    summary = sweep(spec, tmp_path / "run")
    assert len(summary.outcomes) == 2 and summary.count("failed") == 2  # the tokenizers library
    assert all("no usable tokenizer" in o.error for o in summary.failed)  # cannot open such a path
    log = tmp_path / "run" / "tasks" / summary.failed[0].key / "error.log"
    assert "suite \\udcff" in log.read_text()


def test_a_size_that_failed_everywhere_is_named_in_the_fits(suite_copy, tmp_path):
    manifest = read_manifest(suite_copy)
    spec = _spec(suite_copy, analyses=("superposition",), sizes=tuple(manifest.sizes),
                 checkpoints=(manifest.steps[-1],))
    broken = expand(spec)[-1]
    _sweep_with_a_broken_config(suite_copy, spec, tmp_path, broken)
    fits = json.loads((tmp_path / "fits.json").read_text())["fits"]
    overlap = [f for f in fits if f["metric"] == "superposition.mean_sq_overlap"]
    assert overlap and all(f"size {broken.size} has no value" in f["note"] for f in overlap)


def test_a_transient_failure_is_retried(suite_copy, tmp_path):
    """A capture locked by another writer may be free a moment later: that task is retried."""
    from scalelens.cache.lock import WriteLock
    from scalelens.sweeps.tasks import task_dir

    spec = _spec(suite_copy, analyses=("massive_activations",), sizes=(read_manifest(suite_copy).sizes[0],),
                 checkpoints=(read_manifest(suite_copy).steps[-1],))
    (task,) = expand(spec)
    task_dir(tmp_path, task).mkdir(parents=True)
    lock = WriteLock(task_dir(tmp_path, task) / "massive.h5").acquire()
    try:
        summary = sweep(spec, tmp_path)
    finally:
        lock.release()
    assert summary.failed[0].attempts == 2 and "being written by another capture" in summary.failed[0].error
    assert (task_dir(tmp_path, task) / "error.log").is_file()
    assert sweep(spec, tmp_path).count("done") == 1
    assert not (task_dir(tmp_path, task) / "error.log").exists()  # the failure it told of is over


@pytest.fixture
def out_of_memory(tmp_path):
    """A model directory whose model runs out of memory on its first ``raises`` passes.

    As on a GPU that another job holds for a moment: a real model class, transformers'
    Llama with a pre-hook on its decoder stack, registered for Llama configs while the test
    runs (transformers' own restored after). Set ``raises`` on the yielded class; ``passes``
    counts the decoder passes tried; ``watch``, when set, is called before each (it sees the
    sweep while the sweep runs). The directory is the class's ``path``.
    """
    import torch
    import transformers
    from tiny_models import tiny_model, word_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    class OutOfMemoryLlama(transformers.LlamaForCausalLM):
        raises = 0
        passes = 0
        watch: Callable[[], None] | None = None
        path = tmp_path / "llama"

        def __init__(self, config: LlamaConfig) -> None:
            super().__init__(config)
            self.model.register_forward_pre_hook(self._out_of_memory)

        @classmethod
        def _out_of_memory(cls, module, args) -> None:  # type: ignore[no-untyped-def]
            cls.passes += 1
            if cls.watch is not None:
                cls.watch()
            if cls.raises > 0:
                cls.raises -= 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB; "
                                             "another process holds the GPU")

    tiny_model("llama").save_pretrained(OutOfMemoryLlama.path)
    word_tokenizer().save_pretrained(OutOfMemoryLlama.path)
    AutoModelForCausalLM.register(LlamaConfig, OutOfMemoryLlama, exist_ok=True)
    try:
        yield OutOfMemoryLlama
    finally:
        AutoModelForCausalLM.register(LlamaConfig, transformers.LlamaForCausalLM, exist_ok=True)


def _one_task_spec(model_dir: Path) -> SweepSpec:
    return SweepSpec(models={"tiny": str(model_dir)}, checkpoints="final", analyses=("massive_activations",),
                     settings=dict(FAST))


def test_a_failure_that_clears_is_retried_and_the_task_finishes(tmp_path, out_of_memory):
    """The first try runs out of memory, the retry runs: done in 2 attempts, its data written."""
    spec = _one_task_spec(out_of_memory.path)
    (task,) = expand(spec)
    run = tmp_path / "run"
    out_of_memory.raises = 1
    summary = sweep(spec, run)
    assert [(o.status, o.attempts) for o in summary.outcomes] == [("done", 2)]
    assert out_of_memory.raises == 0 and out_of_memory.passes > 1  # the retry ran the model
    results = json.loads((task_dir(run, task) / "results.json").read_text())
    assert len(results["analyses"]["massive_activations"]["per_layer"]) == results["model"]["n_layers"]
    with (run / "metrics.csv").open() as fh:
        assert any(r["metric"] == "max_ratio" and r["size"] == task.size for r in csv.DictReader(fh))
    assert not (task_dir(run, task) / "error.log").exists()  # the first try's failure is over
    info = json.loads((run / "run.json").read_text())
    assert info["tasks"] == [{"key": task.key, "status": "done", "attempts": 2, "error": None}]


def test_a_failure_on_both_tries_is_reported_after_exactly_two(tmp_path, out_of_memory):
    """Out of memory on every try: two tries made (not one, not three), then failed with its log."""
    spec = _one_task_spec(out_of_memory.path)
    (task,) = expand(spec)
    run = tmp_path / "run"
    out_of_memory.raises = 5
    summary = sweep(spec, run)
    assert [(o.status, o.attempts) for o in summary.outcomes] == [("failed", 2)]
    assert out_of_memory.raises == 3 and out_of_memory.passes == 2  # each try ran the model once
    assert summary.failed[0].error.startswith("OutOfMemoryError: CUDA out of memory.")
    log = (task_dir(run, task) / "error.log").read_text()
    assert "Traceback" in log
    assert log.splitlines()[-1].startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert not (task_dir(run, task) / "results.json").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["tasks"] == [{"key": task.key, "status": "failed", "attempts": 2,
                             "error": summary.failed[0].error}]


def test_a_rerun_plans_the_tasks_finished_earlier_as_skipped(tmp_path, out_of_memory):
    """run.json as a rerun writes it when it starts, read while its task runs: the task
    finished earlier is "skipped" (as the outcome at the end says), the other "pending";
    `inspect` counts them from disk: 1 done, the running one unfinished."""
    from scalelens.sweeps.status import run_status

    shutil.copytree(out_of_memory.path, tmp_path / "other")
    models = {"first": str(out_of_memory.path), "second": str(tmp_path / "other")}
    run = tmp_path / "run"
    spec = SweepSpec(models=models, checkpoints="final", analyses=("massive_activations",),
                     settings=dict(FAST))
    first, second = expand(spec)
    assert sweep(dataclasses.replace(spec, sizes=("first",)), run).count("done") == 1
    seen: list[tuple[dict, object]] = []
    out_of_memory.watch = lambda: seen.append((json.loads((run / "run.json").read_text()), run_status(run)))
    summary = sweep(spec, run)
    assert [(o.key, o.status) for o in summary.outcomes] == [(first.key, "skipped"), (second.key, "done")]
    info, status = seen[0]
    assert info["finished"] is False
    assert info["tasks"] == [{"key": first.key, "status": "skipped"},
                             {"key": second.key, "status": "pending"}]
    assert status.running == str(os.getpid())
    assert status.state == {first.key: "done", second.key: "unfinished"}  # its capture is begun
    assert status.lines()[2:5] == ["tasks: 2 (1 done, 1 unfinished)", "  first: 1/1 done",
                                   "  second: 0/1 done; unfinished: main"]
    assert status.lines()[-1] == ("outputs (of the sweep before; remade when this one ends): "
                                  "metrics.csv, metrics.parquet, fits.json")
    assert run_status(run).lines()[-1] == "outputs: metrics.csv, metrics.parquet, fits.json"
    end = json.loads((run / "run.json").read_text())
    assert end["finished"] is True and [t["status"] for t in end["tasks"]] == ["skipped", "done"]


def test_ray_executor_runs_tasks_on_a_local_cluster(suite_copy, tmp_path):
    """Ray's tasks write the same metrics.csv and fits.json, byte for byte, as the local executor's."""
    import dataclasses

    import ray

    manifest = read_manifest(suite_copy)
    spec = _spec(suite_copy, analyses=("superposition", "massive_activations"), executor="ray",
                 sizes=tuple(manifest.sizes[:3]), checkpoints=(manifest.steps[-1],))
    try:
        summary = sweep(spec, tmp_path / "ray")
    finally:
        ray.shutdown()
    assert summary.count("done") == 3 and not summary.failed
    with (tmp_path / "ray" / "metrics.csv").open() as fh:
        assert {r["size"] for r in csv.DictReader(fh)} == set(spec.sizes)
    local = sweep(dataclasses.replace(spec, executor="local"), tmp_path / "local")
    assert local.count("done") == 3
    for table in ("metrics.csv", "fits.json"):
        assert (tmp_path / "ray" / table).read_bytes() == (tmp_path / "local" / table).read_bytes(), table
    assert json.loads((tmp_path / "local" / "fits.json").read_text())["fits"]  # 3 sizes: fitted


class _Stopped(Exception):
    """What the SIGTERM handler of test_starting_ray_keeps_this_processs_sigterm_handler raises."""


def test_starting_ray_keeps_this_processs_sigterm_handler():
    """ray.init replaced the CLI's SIGTERM handler with sys.exit(15) (and its core worker added a
    C handler printing a native stack dump), so `timeout` or a scheduler's stop ended a Ray sweep
    with exit 15 or an abort and no line, instead of the CLI's cleanup, one line and exit 143."""
    import ray

    from scalelens.sweeps.executors import _ray_init

    def stop(signum, frame):
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _ray_init(None)
        assert signal.getsignal(signal.SIGTERM) is stop
        with pytest.raises(_Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises as soon as the signal is delivered
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _ray_head(tmp_path, pythonpath: str | None = None, env: dict[str, str] | None = None, cpus: int = 1):
    """A Ray cluster as a user starts one (``ray start --head``), in a directory of its own.

    Yields its address; killed afterwards (the ``ray start --block`` process group, so no
    other Ray on the machine is touched). ``pythonpath``: put first on its workers' path;
    ``env``: more environment for the cluster.
    """
    import ray

    home = tmp_path / "head"
    home.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), **(env or {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    port = _free_port()
    log = home / "ray_start.log"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
             f"--temp-dir={temp}", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--ray-client-server-port={_free_port()}"],
            cwd=home, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        with suppress(ProcessLookupError):  # SIGTERM: Ray's processes take 30 s to wind down
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_writes_a_relative_run_dir_where_the_driver_runs(suite_copy, tmp_path, monkeypatch):
    """A cluster's workers took a relative --out from the directory `ray start` ran in: the
    tasks wrote there, and the sweep said "done" and then "no task finished"."""
    manifest = read_manifest(suite_copy)
    driver = tmp_path / "driver"
    driver.mkdir()
    with _ray_head(tmp_path) as address:
        monkeypatch.chdir(driver)
        spec = _spec(suite_copy, analyses=("superposition",), executor="ray", address=address,
                     sizes=(manifest.sizes[0],), checkpoints=(manifest.steps[-1],))
        summary = sweep(spec, "run")
    assert summary.count("done") == 1 and not summary.failed
    assert (driver / "run" / "metrics.csv").is_file()
    assert not (tmp_path / "head" / "run").exists()


def test_tasks_ray_loses_are_reported_failed_and_the_sweep_goes_on(suite_copy, tmp_path):
    """A task whose Ray worker died (killed, out of memory, node lost) or could not import
    scalelens ended the whole sweep with "internal error ... report it", abandoning the rest;
    now each is a failed task with one clear line and an error.log, as any other failure."""
    manifest = read_manifest(suite_copy)
    shadow = tmp_path / "shadow" / "scalelens"
    shadow.mkdir(parents=True)  # a node whose Python cannot import scalelens
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'scalelens'\", "
                                        "name='scalelens')\n")
    with _ray_head(tmp_path, pythonpath=str(shadow.parent)) as address:
        spec = _spec(suite_copy, analyses=("superposition",), executor="ray", address=address,
                     sizes=tuple(manifest.sizes[:2]), checkpoints=(manifest.steps[-1],))
        summary = sweep(spec, tmp_path / "run")
    assert [o.status for o in summary.outcomes] == ["failed", "failed"]
    for o in summary.outcomes:
        assert o.error.startswith("ModuleNotFoundError: a Ray worker cannot import scalelens")
        log = (tmp_path / "run" / "tasks" / o.key / "error.log").read_text()
        assert log.splitlines()[-1] == o.error
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"] is True


def test_a_cuda_sweep_on_a_cluster_without_gpus_says_why_it_waits(tmp_path):
    """Ray holds a task that asks for a GPU until a node with one joins: a --device cuda sweep
    on a CPU-only cluster sat at 0% with no word of why."""
    import ray

    from scalelens.errors import ScalelensWarning
    from scalelens.sweeps.executors import _warn_without_gpus

    with _ray_head(tmp_path) as address:
        ray.init(address=address, log_to_driver=False)
        with pytest.warns(ScalelensWarning, match="cluster has no GPU.*--device cpu"):
            _warn_without_gpus(ray, 1, "cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _warn_without_gpus(ray, 0, "cpu")


def test_a_cluster_refusing_our_token_is_named_not_called_unreachable(tmp_path, monkeypatch):
    """A cluster with token authentication (Ray's default where a token exists) refused a driver
    without its token: "cannot reach the Ray cluster ... check --address" (or, with
    RAY_AUTH_MODE=token and no token at all, "internal error: AuthenticationError")."""
    import secrets

    from scalelens.sweeps.executors import _ray_init

    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "1")  # one try, not Ray's 20
    cluster = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with _ray_head(tmp_path, env=cluster) as address:
        with pytest.raises(ScalelensError, match="uses token authentication.*RAY_AUTH_MODE=token"):
            _ray_init(address)


def _holders(path) -> set[int]:
    """Other processes that have ``path`` open (from /proc, as lsof finds them)."""
    want = os.stat(path)
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with suppress(OSError):
            st = os.stat(fd)
            if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev) and int(fd.parts[2]) != os.getpid():
                pids.add(int(fd.parts[2]))
    return pids


def _waited(predicate, seconds: float = 60.0) -> bool:
    """Whether ``predicate()`` holds within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_an_interrupted_ray_sweep_leaves_no_task_running(suite_copy, tmp_path):
    """Ctrl-C in a driver that lives on (a notebook, the Python API) left the sweep's tasks
    running on the cluster, writing into the run directory after its lock was released, so a
    rerun raced them. Here the tasks hang reading the suite's probe text (a FIFO nobody writes),
    as tasks stuck on a slow disk would, and Ctrl-C comes while they do."""
    import threading

    manifest = read_manifest(suite_copy)
    with _probe_text_that_hangs(suite_copy) as text, _ray_head(tmp_path, cpus=2) as address:

        def ctrl_c():
            if _waited(lambda: _holders(text)):
                os.kill(os.getpid(), signal.SIGINT)

        spec = _spec(suite_copy, analyses=("massive_activations",), executor="ray", address=address,
                     sizes=tuple(manifest.sizes[:2]), checkpoints=(manifest.steps[-1],))
        threading.Thread(target=ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            sweep(spec, tmp_path / "run")
        assert _waited(lambda: not _holders(text), 30), "tasks still run after Ctrl-C"


@contextmanager
def _probe_text_that_hangs(suite: Path):
    """The suite's probe text as a FIFO nobody writes, restored after: tasks reading it hang,
    as tasks stuck on a slow disk would."""
    text = suite / read_manifest(suite).valid_text
    saved = text.read_bytes()
    text.unlink()
    os.mkfifo(text)
    held = os.open(text, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes: readers wait
    try:
        yield text
    finally:
        os.close(held)
        text.unlink()
        text.write_bytes(saved)


def test_sigterm_stops_a_ray_sweep_with_its_own_line_and_exit_code(suite_copy, tmp_path):
    """SIGTERM while a Ray sweep waited on its tasks read "interrupted", exit 130: ray.wait
    catches the CLI's Terminated and raises a KeyboardInterrupt of its own. The tasks hang on
    the suite's probe text (a FIFO nobody writes), so the signal comes while the driver waits."""
    manifest = read_manifest(suite_copy)
    run = tmp_path / "run"
    with _probe_text_that_hangs(suite_copy) as text:
        proc = subprocess.Popen([sys.executable, "-m", "scalelens.cli", "sweep", "--suite", str(suite_copy),
                                 "--sizes", manifest.sizes[0], "--checkpoints", str(manifest.steps[-1]),
                                 "--analyses", "massive_activations", "--executor", "ray", "--out", str(run)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert _waited(lambda: _holders(text) - {proc.pid} or proc.poll() is not None, 120)
            assert proc.pid not in _holders(text)  # a Ray worker waits, not the driver
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "sweep"))]
    assert lines == ["scalelens: terminated (SIGTERM); rerun the same command to resume"], err[-2000:]
    assert not (run / ".sweep.lock").exists()


def test_ray_reserves_gpus_by_the_sweeps_device_not_the_drivers(suite_copy):
    """A CPU sweep asked one GPU per task whenever the driver saw CUDA (one task per GPU, none on
    CPU-only workers); a cuda:N sweep kept the index Ray hides (each task sees its GPU as cuda:0)."""
    from scalelens.sweeps.executors import ray_placement

    cpu = _spec(suite_copy)
    assert ray_placement(cpu) == (0, cpu)
    gpus, spec = ray_placement(_spec(suite_copy, device="cuda:3"))
    assert gpus == 1 and spec.device == "cuda" and spec.suite == cpu.suite


def test_extra_metrics_reach_metrics_csv_and_the_scaling_fits(suite_copy, tmp_path):
    manifest = read_manifest(suite_copy)
    spec = _spec(suite_copy, analyses=("information_capacity", "activation_sparsity"),
                 sizes=tuple(manifest.sizes), checkpoints=(manifest.steps[-1],))
    summary = sweep(spec, tmp_path)
    assert summary.count("done") == len(manifest.sizes) and not summary.failed
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["analysis"], r["metric"]), []).append(r)
    scalars = [("information_capacity", m) for m in ("information_capacity", "nll_bits_per_token",
                                                     "text_bits_per_token", "flops_per_token")]
    scalars += [("activation_sparsity", f"hoyer_{p}_mean") for p in ("resid_post", "mlp_out")]
    for key in scalars:
        assert len(by_key[key]) == len(manifest.sizes) and all(r["layer"] == "" for r in by_key[key]), key
    for size in manifest.sizes:
        task = tmp_path / "tasks" / size / f"step{manifest.steps[-1]}"
        results = json.loads((task / "results.json").read_text())
        cap = results["analyses"]["information_capacity"]
        row = next(r for r in by_key[("information_capacity", "information_capacity")] if r["size"] == size)
        assert float(row["value"]) == pytest.approx(cap["information_capacity"])
        layers = [r for r in by_key[("activation_sparsity", "hoyer_resid_post")] if r["size"] == size]
        per_layer = results["analyses"]["activation_sparsity"]["points"]["resid_post"]["per_layer"]
        assert [float(r["value"]) for r in layers] == pytest.approx([p["hoyer"] for p in per_layer])
    flops = {r["size"]: float(r["value"]) for r in by_key[("information_capacity", "flops_per_token")]}
    assert sorted(flops.values()) == [flops[s] for s in manifest.sizes]  # sizes listed small to large
    fits = json.loads((tmp_path / "fits.json").read_text())["fits"]
    fitted = {(f["metric"], f["form"]) for f in fits if f["x_name"] == "n_params"}
    assert ("information_capacity.information_capacity", "saturating") in fitted
    assert ("information_capacity.nll_bits_per_token", "power_law") in fitted
    assert ("activation_sparsity.hoyer_resid_post_mean", "power_law") in fitted
    assert not {m for m, _ in fitted} & {"information_capacity.flops_per_token",
                                           "information_capacity.text_bits_per_token"}


def test_repeated_sizes_steps_and_analyses_run_once(suite_copy):
    """A repeat in --sizes / --checkpoints / --analyses would run the same task twice (on the
    same task directory, concurrently under Ray) and repeat its rows in metrics.csv."""
    manifest = read_manifest(suite_copy)
    a, b = manifest.sizes[:2]
    last, prev = manifest.steps[-1], manifest.steps[-2]
    spec = SweepSpec(suite=str(suite_copy), sizes=(b, a, b), checkpoints=(last, prev, last),
                     analyses=("superposition", "massive_activations", "superposition"))
    assert spec.sizes == (b, a) and spec.checkpoints == (prev, last)
    assert spec.analyses == ("massive_activations", "superposition")  # the standard order
    keys = [t.key for t in expand(spec)]
    assert len(keys) == len(set(keys)) == 4
    rel = os.path.relpath(suite_copy)
    assert SweepSpec(suite=rel, analyses=spec.analyses[::-1]).to_dict() == SweepSpec(
        suite=str(suite_copy), analyses=spec.analyses).to_dict()


def _rows(values: dict[tuple[str, int], float]) -> list[dict[str, str]]:
    n_params = {"s1": 1e3, "s2": 1e4, "s3": 1e5, "s4": 1e6}
    return [{"model": size, "size": size, "revision": f"step{step}", "step": str(step),
             "n_params": str(n_params[size]), "n_params_non_embedding": str(n_params[size] / 2),
             "analysis": "superposition", "metric": "mean_sq_overlap", "layer": "", "head": "",
             "value": str(v)} for (size, step), v in values.items()]


def test_scaling_fits_compare_sizes_at_one_checkpoint():
    """A size whose last checkpoint failed is left out of the fit, with a note; its earlier
    checkpoint is not mixed in with the other sizes' last one."""
    from scalelens.sweeps.fits import scaling_fits

    values = {(s, step): 0.1 * (i + 1) * (1 if step == 20 else 100)
              for i, s in enumerate(("s1", "s2", "s3", "s4")) for step in (10, 20)}
    del values[("s4", 20)]
    fits = [f for f in scaling_fits(_rows(values))
            if f.x_name == "n_params" and f.form == "power_law"]
    assert len(fits) == 1
    assert fits[0].x == [1e3, 1e4, 1e5] and fits[0].y == pytest.approx([0.1, 0.2, 0.3])
    assert "size s4 has no value at step 20 and is left out" in fits[0].note
    gone = {k: v for k, v in values.items() if k[0] != "s4"}  # s4 failed at every step
    (fit,) = [f for f in scaling_fits(_rows(gone), sizes=["s1", "s2", "s3", "s4"])
              if f.x_name == "n_params" and f.form == "power_law"]
    assert "size s4 has no value at step 20 and is left out" in fit.note
    (fit,) = [f for f in scaling_fits(_rows(gone), sizes=["s1", "s2", "s3", "s4", "s5"])
              if f.x_name == "n_params" and f.form == "power_law"]
    assert "sizes s4, s5 have no value at step 20 and are left out" in fit.note
    whole = {(s, 20): 0.1 * (i + 1) for i, s in enumerate(("s1", "s2", "s3", "s4"))}
    assert all(f.note == "" or "no value" not in f.note for f in scaling_fits(_rows(whole)))


def test_sizes_that_train_for_different_lengths_are_compared_at_their_own_last_step():
    """A family whose larger models train longer (its sizes' checkpoints end at different
    steps) is fitted at each size's last planned checkpoint, said in the note; with fewer than
    three sizes left, fits.json says why there is no fit instead of being silently empty."""
    from scalelens.sweeps.fits import scaling_fits, unfitted_note

    ends = {"s1": 10, "s2": 10, "s3": 20, "s4": 20}
    values = {(s, step): 0.1 * (i + 1) * (1 if step == ends[s] else 100)
              for i, s in enumerate(ends) for step in (5, 10, 20) if step <= ends[s]}
    rows = _rows(values)
    assert unfitted_note(rows) != ""  # at the run's last step (20) only s3 and s4 have values
    assert "only s3 (step 20), s4 (step 20) have them" in unfitted_note(rows, list(ends))
    (fit,) = [f for f in scaling_fits(rows, last_steps=ends)
              if f.x_name == "n_params" and f.form == "power_law"]
    assert fit.y == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "compared at their own last checkpoint (s1: 10, s2: 10, s3: 20, s4: 20)" in fit.note
    assert unfitted_note(rows, list(ends), ends) == ""
    del values[("s4", 20)]  # a failed last task is still left out, not replaced by step 10
    (fit,) = [f for f in scaling_fits(_rows(values), sizes=list(ends), last_steps=ends)
              if f.x_name == "n_params" and f.form == "power_law"]
    assert fit.y == pytest.approx([0.1, 0.2, 0.3])
    assert "size s4 has no value at step 20 and is left out" in fit.note


def test_loss_is_fitted_against_width_as_liu_et_al():
    """DESIGN: L = C / m^alpha + L_inf across widths m (the LM head's, superposition.m); the fit
    recovers a planted exponent, and a sweep without superposition has no width to fit."""
    from scalelens.sweeps.fits import scaling_fits

    widths = {"s1": 32, "s2": 64, "s3": 128, "s4": 256, "s5": 512}
    loss = {s: 40.0 / m ** 0.9 + 2.5 for s, m in widths.items()}

    def rows(with_width: bool) -> list[dict[str, str]]:
        table = {("superposition", "m"): widths} if with_width else {}
        table[("information_capacity", "nll_bits_per_token")] = loss
        return [{"model": size, "size": size, "revision": "step9", "step": "9",
                 "n_params": str(m ** 2 * 100), "n_params_non_embedding": str(m ** 2 * 50),
                 "analysis": a, "metric": metric, "layer": "", "head": "", "value": str(v)}
                for (a, metric), per_size in table.items() for size, v in per_size.items()
                for m in [widths[size]]]

    (fit,) = [f for f in scaling_fits(rows(True)) if f.x_name == "superposition.m"]
    assert fit.metric == "information_capacity.nll_bits_per_token" and fit.form == "saturating"
    assert fit.params["alpha"] == pytest.approx(0.9, rel=1e-3)
    assert fit.params["y_inf"] == pytest.approx(2.5, rel=1e-3) and fit.n_points == 5
    assert not [f for f in scaling_fits(rows(False)) if f.x_name == "superposition.m"]
    assert not [f for f in scaling_fits(rows(True)) if f.metric == "superposition.m"]


def test_max_ratio_is_left_out_when_a_layer_has_no_ratio():
    """A layer whose every entry was NaN/inf has no ratio: the max over layers is unknown,
    not the max over the finite layers."""
    from scalelens.sweeps.metrics import rows_of

    model = {"name": "m", "n_params": 10, "n_params_non_embedding": 5}

    def metrics(ratios):
        layers = [{"layer": i, "ratio": r, "max_abs": 1.0, "median_abs": 0.1} for i, r in enumerate(ratios)]
        rows = rows_of({"model": model, "analyses": {"massive_activations": {"per_layer": layers}}}, "s")
        return {(r["metric"], r["layer"]): r["value"] for r in rows}

    assert metrics([3.0, 7.0])[("max_ratio", "")] == 7.0
    broken = metrics([3.0, None])
    assert ("max_ratio", "") not in broken and broken[("ratio", 0)] == 3.0


def test_spec_settings_are_parsed_as_the_command_line_parses_them():
    """A TOML setting of the wrong type is one clear error (it was a TypeError mid-sweep);
    values the CLI would take are taken, lists as comma-separated values."""
    from scalelens.sweeps.tasks import measure_settings

    for bad, words in (({"batch_size": "x"}, "--batch-size: invalid int value: 'x'"),
                       ({"depths": ["a"]}, "--depths: expected comma-separated numbers"),
                       ({"retrieval_mode": "slow"}, "invalid choice: 'slow'"),
                       ({"threshold": {"a": 1}}, "give a number, a string or a list")):
        with pytest.raises(ScalelensError, match=re.escape(words)):
            measure_settings(bad)
    ok = measure_settings({"dilutions": 5, "depths": [0.2, 0.8], "capacity_bias": -27, "batch_size": 2})
    assert ok.dominance.dilutions == (5,) and ok.retrieval.depths == (0.2, 0.8)
    assert ok.capacity.bias == -27 and ok.massive.batch_size == 2


def test_a_damaged_results_or_spec_file_is_one_clear_error(tmp_path):
    """A results.json or sweep_spec.json that is not what a sweep writes is named, with what to
    do, not an internal KeyError / claimed to differ in every field."""
    from scalelens.sweeps.metrics import write_metrics
    from scalelens.sweeps.rundir import RUN_SPEC, check_run_dir

    bad = tmp_path / "results.json"
    for text in ("", "[]", "{}", '{"analyses": 5}'):
        bad.write_text(text)
        with pytest.raises(ScalelensError, match="results.json is unreadable .*delete it and rerun"):
            write_metrics(tmp_path, [("s1", bad)])
    assert not (tmp_path / "metrics.csv").exists()
    spec = SweepSpec(family="pythia", sizes=("70m",), checkpoints=(0,))
    for raw in (b"", b"[]", b"{}", b"\xff"):
        (tmp_path / RUN_SPEC).write_bytes(raw)
        with pytest.raises(ScalelensError, match="sweep_spec.json is unreadable .*--overwrite"):
            check_run_dir(tmp_path, spec, overwrite=False)


def _trainer_run(suite, size, dst):
    """An HF Trainer-style run: ``checkpoint-N`` directories, the tokenizer beside them."""
    manifest = read_manifest(suite)
    for step in manifest.steps[-2:]:
        ckpt = dst / f"checkpoint-{step}"
        shutil.copytree(suite / size / f"step{step}", ckpt)
        for f in ckpt.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                f.unlink()
    shutil.copytree(suite / size / f"step{manifest.steps[-1]}", dst / "tmp")
    for f in (dst / "tmp").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.rename(dst / f.name)
    shutil.rmtree(dst / "tmp")
    return dst


def test_a_sweep_of_own_models_runs_each_checkpoint_and_fits_across_sizes(suite_copy, tmp_path):
    """Own models: two Trainer-style runs (checkpoint-N, tokenizer in the run directory) and one
    plain final model; each size measured at its checkpoints, fitted at each size's last."""
    manifest = read_manifest(suite_copy)
    a, b, c = manifest.sizes[:3]
    last, prev = manifest.steps[-1], manifest.steps[-2]
    final = tmp_path / "final"
    shutil.copytree(suite_copy / c / f"step{last}", final)
    models = {a: str(_trainer_run(suite_copy, a, tmp_path / "run_a")),
              b: str(_trainer_run(suite_copy, b, tmp_path / "run_b")), c: os.path.relpath(final)}
    spec = SweepSpec(models=models, checkpoints="all", analyses=("superposition",), settings=dict(FAST))
    assert spec.models[c] == str(final)  # stored resolved
    keys = [t.key for t in expand(spec)]
    assert keys == [f"{a}/checkpoint-{prev}", f"{a}/checkpoint-{last}", f"{b}/checkpoint-{prev}",
                    f"{b}/checkpoint-{last}", f"{c}/main"]
    run = tmp_path / "out"
    summary = sweep(spec, run)
    assert summary.count("done") == 5 and not summary.failed
    with (run / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "mean_sq_overlap"]
    assert {(r["size"], r["step"]) for r in rows} == {(a, str(prev)), (a, str(last)), (b, str(prev)),
                                                      (b, str(last)), (c, "")}
    fits = json.loads((run / "fits.json").read_text())
    assert any(f["metric"] == "superposition.mean_sq_overlap" for f in fits["fits"])
    assert SweepSpec(models={b: models[b]}, checkpoints="final", analyses=("superposition",),
                     settings=dict(FAST)).models  # a later run may name fewer sizes ...
    again = sweep(SweepSpec(models={b: models[b]}, checkpoints="final", analyses=("superposition",),
                            settings=dict(FAST)), run)
    assert again.count("skipped") == 1
    recorded = json.loads((run / "sweep_spec.json").read_text())["models"]
    assert recorded == spec.models  # ... and the record keeps every size measured
    with pytest.raises(ScalelensError, match=f"size {b} was .*run_b, not .*run_a"):
        sweep(SweepSpec(models={b: models[a]}, analyses=("superposition",), settings=dict(FAST)), run)


def test_own_models_are_checked_before_anything_runs(suite_copy, tmp_path):
    size = read_manifest(suite_copy).sizes[0]
    with pytest.raises(ScalelensError, match="size x: model path .*nowhere does not exist"):
        SweepSpec(models={"x": str(tmp_path / "nowhere")})
    with pytest.raises(ScalelensError, match="bad size label '../up'"):
        SweepSpec(models={"../up": str(suite_copy / size)})
    plain = str(suite_copy / size / f"step{read_manifest(suite_copy).steps[-1]}")
    with pytest.raises(ScalelensError, match="has no step<N> or checkpoint-<N> directories"):
        expand(SweepSpec(models={"x": plain}, checkpoints=(8,)))
    with pytest.raises(ScalelensError, match=r"size x \(.*\): checkpoint step\(s\) \[7\] not available"):
        expand(SweepSpec(models={"x": str(suite_copy / size)}, checkpoints=(7,)))
    hub = expand(SweepSpec(models={"70m": "EleutherAI/pythia-70m", "gpt2": "gpt2"}, checkpoints="final"))
    assert [(t.key, t.step) for t in hub] == [("70m/step143000", 143000), ("gpt2/main", None)]


def test_a_sweep_tokenizer_serves_models_that_ship_none(suite_copy, tmp_path):
    size, last = read_manifest(suite_copy).sizes[0], read_manifest(suite_copy).steps[-1]
    bare = tmp_path / "bare"
    shutil.copytree(suite_copy / size / f"step{last}", bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    kw = dict(models={"x": str(bare)}, analyses=("superposition",), settings=dict(FAST))
    without = sweep(SweepSpec(**kw), tmp_path / "without")
    assert without.count("failed") == 1 and "no usable tokenizer" in without.failed[0].error
    given = sweep(SweepSpec(**kw, tokenizer=str(suite_copy / size / f"step{last}")), tmp_path / "with")
    assert given.count("done") == 1


def test_a_rerun_with_another_batch_size_resumes_the_run(suite_copy, tmp_path):
    """A sweep that ran out of memory is rerun with a smaller batch_size: the run directory is
    not refused (batch size does not change results) and the interrupted capture resumes with
    it; another setting is still refused."""
    import h5py
    import numpy as np

    from scalelens.cache.reader import CaptureFile
    from scalelens.sweeps.rundir import RUN_SPEC
    from scalelens.sweeps.tasks import task_dir

    manifest = read_manifest(suite_copy)

    def spec(**settings):
        return _spec(suite_copy, analyses=("massive_activations",), sizes=(manifest.sizes[0],),
                     checkpoints=(manifest.steps[-1],), settings={**FAST, "n_sequences": 6, **settings})

    assert sweep(spec(), tmp_path).count("done") == 1
    (task,) = expand(spec())
    h5 = task_dir(tmp_path, task) / "massive.h5"
    with h5py.File(h5, "r+") as f:  # as a capture killed after its first batch of 4 leaves it
        before = {k: v[()] for k, v in f["probes/massive"].items()}
        f["progress"][...] = [4, 0]
    (task_dir(tmp_path, task) / "results.json").unlink()
    again = sweep(spec(batch_size=1), tmp_path)
    assert again.count("done") == 1 and not again.failed, again.outcomes
    with CaptureFile(h5) as f:
        assert f.complete and f.batch_sizes.tolist() == [4, 4, 4, 4, 1, 1]
        for k, v in f.probe("massive").items():
            np.testing.assert_allclose(v.data, before[k], rtol=1e-5, atol=1e-5, err_msg=k)
    with pytest.raises(ScalelensError, match="holds a sweep with different settings"):
        sweep(spec(gate=-2.0), tmp_path)
    assert "batch_size" not in json.loads((tmp_path / RUN_SPEC).read_text())["settings"]


def test_a_rerun_may_add_a_size_to_a_sweep_of_own_models(suite_copy, tmp_path):
    """A size added on a rerun is measured beside the finished ones (it was refused as
    'different models'), and the record keeps every size."""
    manifest = read_manifest(suite_copy)
    a, b = manifest.sizes[:2]
    models = {s: str(suite_copy / s / f"step{manifest.steps[-1]}") for s in (a, b)}
    kw = dict(analyses=("superposition",), settings=dict(FAST))
    run = tmp_path / "out"
    assert sweep(SweepSpec(models={a: models[a]}, **kw), run).count("done") == 1
    both = SweepSpec(models=models, **kw)
    again = sweep(both, run)
    assert (again.count("skipped"), again.count("done"), again.failed) == (1, 1, [])
    assert json.loads((run / "sweep_spec.json").read_text())["models"] == both.models
    with (run / "metrics.csv").open() as fh:
        assert {r["size"] for r in csv.DictReader(fh)} == {a, b}


def test_a_size_that_measured_nothing_may_be_pointed_at_another_model(suite_copy, tmp_path):
    """A size whose first source was wrong (its task failed, nothing measured) is corrected on
    the rerun; once it has measurements it may not be re-pointed."""
    manifest = read_manifest(suite_copy)
    good = suite_copy / manifest.sizes[0] / f"step{manifest.steps[-1]}"
    bare = tmp_path / "bare"
    shutil.copytree(good, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    kw = dict(analyses=("superposition",), settings=dict(FAST))
    run = tmp_path / "out"
    assert sweep(SweepSpec(models={"x": str(bare)}, **kw), run).count("failed") == 1
    assert sweep(SweepSpec(models={"x": str(good)}, **kw), run).count("done") == 1
    other = suite_copy / manifest.sizes[1] / f"step{manifest.steps[-1]}"
    with pytest.raises(ScalelensError, match="size x was .*, not .*"):
        sweep(SweepSpec(models={"x": str(other)}, **kw), run)


def test_a_half_written_checkpoint_is_left_out_with_a_note(suite_copy, tmp_path):
    """A Trainer killed while saving (or still saving) leaves checkpoint-N with a config but no
    weights: ``final`` is the last complete checkpoint and the sweep names the one left out."""
    from scalelens.models import load_model

    manifest = read_manifest(suite_copy)
    last = manifest.steps[-1]
    run = _trainer_run(suite_copy, manifest.sizes[0], tmp_path / "run")
    (run / "checkpoint-999").mkdir()
    shutil.copy(run / f"checkpoint-{last}" / "config.json", run / "checkpoint-999")
    spec = SweepSpec(models={"x": str(run)}, checkpoints="final", analyses=("superposition",),
                     settings=dict(FAST))
    assert [t.key for t in expand(spec)] == [f"x/checkpoint-{last}"]
    from scalelens.sweeps.spec import incomplete_checkpoints

    (note,) = incomplete_checkpoints(spec)
    assert "checkpoint-999" in note and "no weights" in note
    assert load_model(run).info.revision == f"checkpoint-{last}"  # the last complete one
    with pytest.raises(ScalelensError, match="unknown revision 'step999'"):
        load_model(run, checkpoint=999)


def test_relative_paths_in_a_spec_file_are_found_beside_it(suite_copy, tmp_path, monkeypatch):
    """``small = "runs/small"`` in project/sweep.toml names project/runs/small from any working
    directory (it was taken for a hub id, and the sweep tried the hub)."""
    from scalelens.sweeps.spec import read_spec

    project = tmp_path / "project"
    run = _trainer_run(suite_copy, read_manifest(suite_copy).sizes[0], project / "runs" / "small")
    (project / "sweep.toml").write_text('analyses = ["superposition"]\ncheckpoints = "final"\n'
                                        '[models]\nsmall = "runs/small"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = read_spec(project / "sweep.toml")
    assert spec.models == {"small": str(run.resolve())}
    assert [t.source for t in expand(spec)] == [str(run.resolve())]


def test_home_relative_paths_in_a_spec_file_are_expanded(suite_copy, tmp_path, monkeypatch):
    """``suite = "~/suite"`` and ``haystack = "~/hay.txt"`` (TOML does not expand ``~``) name the
    files under the home directory: the suite was refused as missing, and every retrieval task
    failed with 'haystack file ~/hay.txt does not exist'."""
    from scalelens.sweeps.spec import read_spec

    home = suite_copy.parent
    monkeypatch.setenv("HOME", str(home))
    (home / "hay.txt").write_text("The sky is blue. The grass is green. Water is wet.\n")
    (tmp_path / "sweep.toml").write_text(
        f'suite = "~/{suite_copy.name}"\nanalyses = ["retrieval_heads"]\n'
        f'checkpoints = "final"\nsizes = ["{read_manifest(suite_copy).sizes[0]}"]\n'
        '[settings]\nhaystack = "~/hay.txt"\nn_needles = 1\ncontext_lengths = [24]\n')
    spec = read_spec(tmp_path / "sweep.toml")
    assert spec.suite == str(suite_copy.resolve())
    summary = sweep(spec, tmp_path / "run")
    assert summary.count("done") == 1, [o.error for o in summary.failed]


def test_relative_setting_files_in_a_spec_file_are_found_beside_it(suite_copy, tmp_path, monkeypatch):
    """``text``, ``haystack`` and ``needles`` under [settings] are paths like the models': every task
    failed with 'text file probe #1.txt does not exist' when run from another directory."""
    from scalelens.sweeps.spec import read_spec

    project = tmp_path / "project é"
    (project / "data").mkdir(parents=True)
    (project / "data" / "probe #1.txt").write_text("alpha beta gamma delta. " * 200)
    (project / "hay.txt").write_text("The sky is blue. The grass is green.\n")
    (project / "sweep.toml").write_text(
        f'suite = "{suite_copy}"\nanalyses = ["massive_activations"]\ncheckpoints = "final"\n'
        f'sizes = ["{read_manifest(suite_copy).sizes[0]}"]\n'
        '[settings]\ntext = "data/../data/probe #1.txt"\nhaystack = "hay.txt"\nneedles = "english"\n'
        'n_sequences = 2\nseq_length = 16\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = read_spec(project / "sweep.toml")
    assert spec.settings["text"] == str(project / "data" / "probe #1.txt")
    assert spec.settings["haystack"] == str(project / "hay.txt") and spec.settings["needles"] == "english"
    summary = sweep(spec, tmp_path / "run")
    assert summary.count("done") == 1, [o.error for o in summary.failed]


def test_a_sweep_tokenizer_does_not_replace_a_models_own(suite_copy, tmp_path):
    """``--tokenizer`` is for models that ship none: one with its own keeps it (a 64-token word
    tokenizer, far too small for it, would be refused), and adding ``--tokenizer`` on a rerun
    leaves the finished tasks valid."""
    from tiny_models import word_tokenizer

    manifest = read_manifest(suite_copy)
    words = tmp_path / "words"
    word_tokenizer().save_pretrained(words)
    kw = dict(models={"x": str(suite_copy / manifest.sizes[0])}, analyses=("superposition",),
              settings=dict(FAST))
    given = sweep(SweepSpec(**kw, checkpoints="final", tokenizer=str(words)), tmp_path / "given")
    assert (given.count("done"), given.failed) == (1, [])
    run = tmp_path / "out"
    first = sweep(SweepSpec(**kw, checkpoints=(manifest.steps[-2],)), run)
    assert first.count("done") == 1
    again = sweep(SweepSpec(**kw, checkpoints=tuple(manifest.steps[-2:]), tokenizer=str(words)), run)
    assert (again.count("skipped"), again.count("done"), again.failed) == (1, 1, [])


def test_checkpoints_missing_from_the_hub_cache_are_summed_up_with_the_cached_steps(micro_suite, tmp_path):
    """Offline, a log sweep of Pythia sizes fails every step not downloaded, one line each (42 of
    57 in a cache of 5 steps); a last note counts them and names the steps every size has, as
    --checkpoints. A revision with a config and no weights counts as not cached."""
    import subprocess
    import sys

    from scalelens.models.testing import write_hub_cache

    manifest = read_manifest(micro_suite)
    cache = tmp_path / "hub"
    for name, size in (("14m", manifest.sizes[0]), ("31m", manifest.sizes[1])):
        revisions = {f"step{n}": manifest.checkpoint_dir(size, s) for n, s in ((0, 0), (1000, 1), (2000, 2))}
        write_hub_cache(cache, f"EleutherAI/pythia-{name}", revisions)
    partial = cache / "models--EleutherAI--pythia-31m"
    commit = (partial / "refs" / "step1000").read_text()
    (partial / "snapshots" / commit / "model.safetensors").unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "scalelens.cli", "sweep", "--family", "pythia", "--sizes", "14m,31m",
            "--checkpoints", "0,1000,2000,3000", "--analyses", "superposition",
            "--out", str(tmp_path / "run")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "5 done, 0 skipped, 3 failed" in proc.stdout, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"note: 3 of 8 tasks failed on checkpoints that are not (fully) in the local hub cache "
                    f"{cache}; steps cached for every size: 0, 2000 (sweep only those with --checkpoints "
                    "0,2000), or download the rest"), proc.stderr


def test_a_reader_of_the_metrics_tables_keeps_a_whole_file_while_a_rerun_rewrites_them(suite_copy, tmp_path):
    """metrics.csv was renamed into place but metrics.parquet rewritten in place: a reader
    (pandas, pyarrow) that had it open while a rerun wrote it read the new bytes under the old
    file's offsets. Both are now written aside and renamed: an open reader keeps the old file."""
    pq = pytest.importorskip("pyarrow.parquet")
    spec = _spec(suite_copy, analyses=("superposition",), checkpoints=(read_manifest(suite_copy).steps[-1],))
    sweep(spec, tmp_path)
    tasks = [(t.size, task_dir(tmp_path, t) / "results.json") for t in expand(spec)]
    with (tmp_path / "metrics.parquet").open("rb") as parquet, (tmp_path / "metrics.csv").open() as table:
        rows = pq.read_table(tmp_path / "metrics.parquet").num_rows
        write_metrics(tmp_path, tasks[:1])  # a rerun that has fewer rows to write
        assert pq.read_table(parquet).num_rows == rows
        assert len(list(csv.DictReader(table))) == rows
    assert 0 < pq.read_table(tmp_path / "metrics.parquet").num_rows < rows
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".metrics")) == []


def test_inspect_a_run_directory_names_failed_tasks_and_their_errors(suite_copy, tmp_path, capsys):
    """`scalelens inspect RUN`: where a finished sweep stands, per size, with each failed task's
    last error line."""
    from scalelens.cli import main
    from scalelens.sweeps.status import run_status

    spec = _spec(suite_copy, analyses=("superposition",))
    broken = expand(spec)[0]
    _sweep_with_a_broken_config(suite_copy, spec, tmp_path, broken)
    status = run_status(tmp_path)
    assert status.running is None and status.info["finished"] is True
    assert status.count("done") == 5 and [k for k, s in status.state.items() if s == "failed"] == [broken.key]
    assert "config.json" in status.errors[broken.key]
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path}: the last sweep finished at ")
    assert out[2] == "tasks: 6 (5 done, 1 failed)"
    assert f"  {broken.size}: 1/2 done; failed: {broken.revision}" in out
    assert f"failed {broken.key}: {status.errors[broken.key]}" in out
    assert out[-1] == "outputs: metrics.csv, metrics.parquet, fits.json"


def test_inspect_sees_a_running_sweep_and_one_that_was_interrupted(suite_copy, tmp_path):
    """run.json is written when a sweep starts: `inspect` names the running sweep's process
    (from the kernel's lock table, without taking the lock) and, once it was stopped, says so."""
    import signal
    import subprocess
    import sys
    import time

    from scalelens.sweeps.status import run_status

    manifest = read_manifest(suite_copy)
    steps = ",".join(str(s) for s in manifest.steps)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scalelens.cli", "sweep", "--suite", str(suite_copy),
                             "--checkpoints", steps, "--analyses", "superposition,massive_activations",
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "run.json").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        running = run_status(run)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    planned = len(manifest.sizes) * len(manifest.steps)
    assert running.running == str(proc.pid) and running.info["finished"] is False
    assert len(running.state) == planned and running.count("done") + running.count("pending") + running.count(
        "unfinished") == planned
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err, err[-2000:]
    stopped = run_status(run)
    assert stopped.running is None and stopped.count("failed") == 0 and stopped.count("pending") > 0
    assert "the last sweep stopped before finishing" in stopped.lines()[0]


def test_a_task_done_on_a_node_that_does_not_share_the_run_dir_is_a_failure(suite_copy, tmp_path):
    """A Ray worker on a node without the run directory at the same path writes its results
    where the driver never looks: the sweep said "done" and then "no task finished"; now the
    task fails naming shared storage (here: the results.json the driver cannot see)."""
    from scalelens.sweeps.executors import unseen
    from scalelens.sweeps.status import run_status
    from scalelens.sweeps.tasks import TaskOutcome

    seen, missing = expand(_spec(suite_copy))[:2]
    (task_dir(tmp_path, seen)).mkdir(parents=True)
    (task_dir(tmp_path, seen) / "results.json").write_text("{}")
    done = TaskOutcome(seen.key, "done", 1)
    assert unseen(done, seen, tmp_path) is done
    failed = TaskOutcome(missing.key, "failed", 2, "ValueError: x")
    assert unseen(failed, missing, tmp_path) is failed
    lost = unseen(TaskOutcome(missing.key, "done", 1), missing, tmp_path)
    assert lost.status == "failed" and "storage every node shares at the same path" in lost.error
    (tmp_path / "run.json").write_text(json.dumps({"tasks": [{"key": seen.key}, {"key": missing.key}]}))
    assert run_status(tmp_path).errors[missing.key] == lost.error


def test_a_sweep_asked_for_another_cluster_than_the_connected_one_warns(suite_copy, tmp_path):
    """Ray keeps a process's first connection: in a notebook connected to one cluster, a sweep
    given another --address silently ran on the first; now a warning says where it runs."""
    import warnings

    import ray

    from scalelens.errors import ScalelensWarning
    from scalelens.sweeps.executors import _ray_init

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        here = ray.get_runtime_context().gcs_address
        port = int(here.rpartition(":")[2])
        with pytest.warns(ScalelensWarning, match=f"already connected to the Ray cluster at {here}, so the "
                                                  f"sweep runs there, not at 127.0.0.1:{port + 1}"):
            _ray_init(f"127.0.0.1:{port + 1}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _ray_init(f"127.0.0.1:{port}")
            _ray_init("auto")
            _ray_init(None)
    finally:
        if started:  # a later test's ray.init would otherwise reuse (or warn about) this cluster
            ray.shutdown()


def test_a_missing_setting_file_is_refused_before_any_task_runs(suite_copy, tmp_path, monkeypatch):
    """A spec or --text naming a file that is not there failed every task, one by one; it is now
    one line before anything runs (a built-in needle set is not a file)."""
    from scalelens.sweeps.spec import read_spec

    for key in ("text", "haystack", "needles"):
        with pytest.raises(ScalelensError, match=f"sweep setting {key} = 'nowhere #1.txt': no such file"):
            _spec(suite_copy, settings={**FAST, key: "nowhere #1.txt"})
    assert _spec(suite_copy, settings={**FAST, "needles": "synthetic"}).settings["needles"] == "synthetic"
    (tmp_path / "sweep.toml").write_text(f'suite = "{suite_copy}"\n[settings]\ntext = "probe.txt"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScalelensError, match="sweep setting text = 'probe.txt': no such file"):
        read_spec(tmp_path / "sweep.toml")
    assert not (tmp_path / "run").exists()


def test_parquet_holds_the_csv_cells_layer_head_and_step_as_its_strings(tmp_path):
    """metrics.parquet (its layer/head/step strings interned to save memory) matches metrics.csv
    cell for cell."""
    import csv
    import json

    import pyarrow.parquet as pq

    from benchmarks.report_scale import task_results
    from scalelens.sweeps.metrics import COLUMNS, write_metrics

    done = []
    for size, step in (("70m", 0), ("70m", 1000), ("160m", 143000)):
        path = tmp_path / "tasks" / size / f"step{step}" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(task_results(size, step)))
        done.append((size, path))
    write_metrics(tmp_path, done)
    table = pq.read_table(tmp_path / "metrics.parquet").to_pydict()
    with (tmp_path / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(table["value"]) > 500
    for c in COLUMNS:
        got = [str(v) if c in ("n_params", "n_params_non_embedding", "value") else v for v in table[c]]
        assert got == [r[c] for r in rows], c


def _olmo_cache(micro_suite, cache, names: dict[str, int]) -> dict[str, str]:
    """Hub ids ``olmo-test/m-<size>`` in ``cache``, each with the revisions ``names`` (name -> index
    of the micro suite checkpoint it holds), as ``{size: hub id}``."""
    from scalelens.models.testing import write_hub_cache

    manifest = read_manifest(micro_suite)
    models = {}
    for size in manifest.sizes[:2]:
        revisions = {n: manifest.checkpoint_dir(size, manifest.steps[i]) for n, i in names.items()}
        models[size] = f"olmo-test/m-{size}"
        write_hub_cache(cache, models[size], revisions)
    return models


def test_a_sweep_of_hub_ids_loads_their_cached_olmo_revisions_by_step(micro_suite, tmp_path):
    """OLMo names its checkpoints step<N>-tokens<K>B (OLMo 2: stage1-step<N>-tokens<K>B): explicit
    --checkpoints of a hub id load the cached revision that gives each step (they loaded
    step<N>, which OLMo has not, and failed), recorded at that step; the note on steps not
    cached names the cached OLMo steps (it named none). Stage 2 and main give no step."""
    cache = tmp_path / "hub"
    models = _olmo_cache(micro_suite, cache, {"stage1-step1000-tokens4B": 0, "step2000-tokens8B": 1,
                                              "stage2-ingredient1-step1000-tokens4B": 2, "main": 2})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = tmp_path / "run"
    pairs = [a for s, m in models.items() for a in ("--model", f"{s}={m}")]
    argv = [sys.executable, "-m", "scalelens.cli", "sweep", *pairs, "--checkpoints", "1000,2000,3000",
            "--analyses", "superposition", "--out", str(run)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "4 done, 0 skipped, 2 failed" in proc.stdout, proc.stderr
    with (run / "metrics.csv").open() as fh:
        done = {(r["size"], r["revision"], r["step"]) for r in csv.DictReader(fh)}
    assert done == {(s, rev, step) for s in models
                    for rev, step in (("stage1-step1000-tokens4B", "1000"), ("step2000-tokens8B", "2000"))}
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"note: 2 of 6 tasks failed on checkpoints that are not (fully) in the local hub cache "
                    f"{cache}; steps cached for every size: 1000, 2000 (sweep only those with --checkpoints "
                    "1000,2000), or download the rest"), proc.stderr


def test_two_cached_revisions_of_one_step_are_refused_not_merged(micro_suite, tmp_path, monkeypatch):
    """A step on the sweep's axis is measured once: two cached revisions giving it (OLMo 2 has
    unprefixed step150-tokens1B-style names beside its stage1- ones) are one line naming both
    (the sweep loaded step1000, which neither is); other steps still sweep."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    models = _olmo_cache(micro_suite, cache, {"step1000-tokens4B": 0, "stage1-step1000-tokens4B": 0,
                                              "stage1-step2000-tokens8B": 1})
    size, hub = next(iter(models.items()))
    refs = cache / f"models--olmo-test--m-{size}" / "refs"
    with pytest.raises(ScalelensError, match=re.escape(
            f"size {size} ({hub}): step 1000 is given by 2 revisions in the local hub cache "
            f"(stage1-step1000-tokens4B, step1000-tokens4B); sweep other steps, or keep one: "
            f"delete the others' files from {refs}")):
        expand(SweepSpec(models={size: hub}, checkpoints=(1000, 2000)))
    assert [t.key for t in expand(SweepSpec(models={size: hub}, checkpoints=(2000,)))] == [
        f"{size}/stage1-step2000-tokens8B"]


def test_a_run_with_two_checkpoints_of_one_step_is_refused_not_merged(micro_suite, tmp_path, capsys):
    """A run's step1000 beside checkpoint-1000 is one line naming both, exit 2, nothing written (the
    sweep silently measured checkpoint-1000 alone); a choice without that step still sweeps."""
    from cli_run import assert_one_line, run_cli

    manifest = read_manifest(micro_suite)
    size = manifest.sizes[0]
    own = tmp_path / "own"
    shutil.copytree(micro_suite / size / f"step{manifest.steps[0]}", own / "step1000")
    shutil.copytree(micro_suite / size / f"step{manifest.steps[0]}", own / "checkpoint-1000")
    shutil.copytree(micro_suite / size / f"step{manifest.steps[1]}", own / "step2000")
    rc, _, err = run_cli(capsys, ["sweep", "--model", f"x={own}", "--checkpoints", "all",
                                  "--analyses", "superposition", "--out", str(tmp_path / "run")])
    assert_one_line(rc, err, f"size x ({own}): step 1000 is given by 2 checkpoints "
                    "(checkpoint-1000, step1000)", f"move the others out of {own}")
    assert not (tmp_path / "run").exists()
    assert [t.key for t in expand(SweepSpec(models={"x": str(own)}, checkpoints="final"))] == ["x/step2000"]


def test_overwrite_is_keyword_only_so_an_old_positional_n_boot_cannot_set_it():
    """``sweep(spec, run, 200)`` meant n_boot=200 before n_boot went; positionally it would now
    discard a run directory's finished tasks, so it is refused instead."""
    import inspect

    assert inspect.signature(sweep).parameters["overwrite"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="positional"):
        sweep(None, "run", 200)  # type: ignore[arg-type, misc]


def test_a_half_written_checkpoint_is_noted_by_python_sweep_and_once_by_the_cli(suite_copy, tmp_path, capsys):
    """``sweep()`` from Python warns (ScalelensNote) about the checkpoint it leaves out (only the
    CLI said so before); the CLI prints it once as a ``note:`` line, and ``--quiet`` silences it."""
    from cli_run import run_cli

    from scalelens.errors import ScalelensNote

    run = _trainer_run(suite_copy, read_manifest(suite_copy).sizes[0], tmp_path / "own")
    (run / "checkpoint-999").mkdir()
    shutil.copy(next(run.glob("checkpoint-*/config.json")), run / "checkpoint-999")
    spec = SweepSpec(models={"x": str(run)}, checkpoints="final", analyses=("superposition",),
                     settings=dict(FAST))
    with pytest.warns(ScalelensNote, match=r"size x: left out checkpoint-999 of .*no weights"):
        assert sweep(spec, tmp_path / "py").count("done") == 1
    argv = ["sweep", "--model", f"x={run}", "--checkpoints", "final", "--analyses", "superposition"]
    rc, _, err = run_cli(capsys, [*argv, "--out", str(tmp_path / "cli")])
    assert rc == 0, err
    assert [ln for ln in err.splitlines() if "checkpoint-999" in ln] == [
        f"note: size x: left out checkpoint-999 of {run}: no config.json or no weights (a save still "
        "being written, or interrupted)"]
    rc, _, err = run_cli(capsys, [*argv, "--out", str(tmp_path / "quiet"), "--quiet"])
    assert rc == 0 and "checkpoint-999" not in err, err


def test_a_half_written_checkpoint_asked_for_by_step_is_named_in_the_refusal(suite_copy, tmp_path, capsys):
    """``--checkpoints 999`` with checkpoint-999 half-written: the one error line says why step 999
    is not available (it said only "step(s) [999] not available", and the note naming the
    half-written directory was never reached)."""
    from cli_run import assert_one_line, run_cli

    run = _trainer_run(suite_copy, read_manifest(suite_copy).sizes[0], tmp_path / "own")
    (run / "checkpoint-999").mkdir()
    shutil.copy(next(run.glob("checkpoint-*/config.json")), run / "checkpoint-999")
    rc, _, err = run_cli(capsys, ["sweep", "--model", f"x={run}", "--checkpoints", "999",
                                  "--analyses", "superposition", "--out", str(tmp_path / "out")])
    assert_one_line(rc, err, f"size x ({run}): checkpoint step(s) [999] not available",
                    "; checkpoint-999 has no config.json or no weights (a save still being written, "
                    "or interrupted)")
    assert not (tmp_path / "out").exists()


def _limited(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: RLIMIT_FSIZE (writes past ``limit`` bytes fail with EFBIG, as on a full disk)."""
    import resource

    def set_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return set_limit


def test_a_full_disk_stops_the_sweep_with_one_line_and_a_rerun_resumes(micro_suite, tmp_path, capsys):
    """A full disk fails every task after it too. The sweep went on: each task "failed" with
    HDF5's text (``RuntimeError: Set slist enabled failed (file write failed: ...``), retried,
    with an error.log cut at the limit, exit 1 (or 139: HDF5 crashed at exit closing the files
    whose flush failed). It stops now with the one full-disk line, and the rerun resumes."""
    from cli_run import run_cli

    manifest = read_manifest(micro_suite)
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'suite = "{micro_suite}"\nsizes = ["{manifest.sizes[0]}"]\n'
                    f"checkpoints = {json.dumps(list(manifest.steps[-2:]))}\n[settings]\n"
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in FAST.items()))
    run = tmp_path / "run"
    argv = ["sweep", "--spec", str(spec), "--out", str(run), "--quiet"]
    # run.json fits in 8 KiB, a task's first capture file does not
    p = subprocess.run([sys.executable, "-m", "scalelens.cli", *argv], preexec_fn=_limited(8192),
                       capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert (p.returncode, len(lines)) == (2, 1), p.stderr[-2000:]
    assert lines[0].startswith("scalelens: error: ") and "file-size limit" in lines[0], lines[0]
    assert not [f for f in run.rglob("*") if f.name == "error.log" or f.name.endswith(".creating")]
    assert json.loads((run / "run.json").read_text())["finished"] is False
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0 and "sweep: 2 done, 0 skipped, 0 failed" in out, err


def test_a_table_write_that_fails_leaves_no_fits_of_the_earlier_metrics(suite_copy, tmp_path, capsys):
    """The tables are written in turn (metrics.csv, metrics.parquet, fits.json). A rerun that
    adds a size and fills the disk after metrics.csv left the fits.json (and metrics.parquet)
    of the run before beside the new metrics.csv: the report paired new metrics with old fits.
    The old ones are removed before metrics.csv changes, the report says the sweep stopped,
    and the rerun remakes them."""
    import pyarrow.parquet as pq
    from cli_run import file_size_limit, run_cli

    manifest = read_manifest(suite_copy)
    a, b = manifest.sizes[:2]
    models = {s: str(suite_copy / s / f"step{manifest.steps[-1]}") for s in (a, b)}
    kw = dict(analyses=("superposition",), settings=dict(FAST))
    run = tmp_path / "run"
    sweep(SweepSpec(models={a: models[a]}, **kw), run)
    results = next((run / "tasks").rglob("results.json")).stat().st_size
    parquet = (run / "metrics.parquet").stat().st_size
    limit = results + 200  # b's results.json, run.json and metrics.csv fit; no metrics.parquet does
    assert (run / "metrics.csv").stat().st_size * 2 < limit < parquet
    with file_size_limit(limit), pytest.raises(OSError, match="metrics.parquet"):
        sweep(SweepSpec(models=models, **kw), run)

    def sizes_in_csv() -> set[str]:
        with (run / "metrics.csv").open() as fh:
            return {r["size"] for r in csv.DictReader(fh)}

    assert sizes_in_csv() == {a, b}
    for name in ("fits.json", "metrics.parquet"):  # none of the run before
        assert not (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["finished"] is False
    rc, _, err = run_cli(capsys, ["report", str(run)])
    assert rc == 0 and f"note: the last sweep into {run} stopped before it finished" in err, err
    again = sweep(SweepSpec(models=models, **kw), run)
    assert (again.count("skipped"), again.failed) == (2, [])
    assert sizes_in_csv() == {a, b}
    assert set(json.loads((run / "fits.json").read_text())["last_steps"]) == {a, b}
    assert set(pq.read_table(run / "metrics.parquet").column("size").to_pylist()) == {a, b}


def test_a_run_resumes_after_it_and_its_suite_were_moved(micro_suite, tmp_path):
    """A run directory and its suite copied elsewhere (scratch to home, another machine) resume
    there: finished tasks are skipped, new ones run from the suite's new path, which is then
    recorded. The suite's path was part of the run's identity, so the rerun was refused as
    'a sweep with different suite'."""
    from scalelens.sweeps.rundir import RUN_SPEC

    manifest = read_manifest(micro_suite)
    first, moved = tmp_path / "scratch" / "suite", tmp_path / "home" / "suite ü"
    shutil.copytree(micro_suite, first)
    kw = dict(analyses=("superposition",), sizes=(manifest.sizes[0],))
    assert sweep(_spec(first, checkpoints=(manifest.steps[-1],), **kw), tmp_path / "scratch" / "run"
                 ).count("done") == 1
    shutil.move(first, moved)
    shutil.move(tmp_path / "scratch" / "run", tmp_path / "home" / "run")
    again = sweep(_spec(moved, checkpoints=tuple(manifest.steps[-2:]), **kw), tmp_path / "home" / "run")
    assert (again.count("skipped"), again.count("done"), again.failed) == (1, 1, [])
    assert json.loads((tmp_path / "home" / "run" / RUN_SPEC).read_text())["suite"] == str(moved.resolve())
    assert not (tmp_path / "scratch" / "suite").exists() and not (tmp_path / "scratch" / "run").exists()


def test_a_spec_with_setting_files_resumes_from_any_directory_and_after_a_move(suite_copy, tmp_path,
                                                                               monkeypatch):
    """A run's setting files are recorded by content: ``text = "probe.txt"`` run from the spec's
    folder, then from another one, then with the whole project moved, is one sweep (the second
    run was refused as 'a sweep with different settings': the path was 'probe.txt', then the
    absolute one beside the spec). An edited file is other settings."""
    from scalelens.sweeps.rundir import RUN_SPEC
    from scalelens.sweeps.spec import read_spec

    first, moved = tmp_path / "scratch", tmp_path / "home" / "project ü"
    first.mkdir()
    (first / "probe.txt").write_text("alpha beta gamma delta. " * 200)
    (first / "sweep.toml").write_text(
        f'suite = "{suite_copy}"\nanalyses = ["massive_activations"]\ncheckpoints = "final"\n'
        f'sizes = ["{read_manifest(suite_copy).sizes[0]}"]\n'
        '[settings]\ntext = "probe.txt"\nn_sequences = 2\nseq_length = 16\n')
    monkeypatch.chdir(first)
    assert sweep(read_spec("sweep.toml"), "run").count("done") == 1
    old = json.loads((first / "run" / RUN_SPEC).read_text())
    old["settings"]["text"] = "probe.txt"  # as a run directory recorded it before: the path given
    (first / "run" / RUN_SPEC).write_text(json.dumps(old))
    assert sweep(read_spec("sweep.toml"), "run").count("skipped") == 1  # the same path: accepted
    monkeypatch.chdir(tmp_path)
    assert sweep(read_spec(first / "sweep.toml"), first / "run").count("skipped") == 1
    shutil.move(first, moved)
    assert sweep(read_spec(moved / "sweep.toml"), moved / "run").count("skipped") == 1
    recorded = json.loads((moved / "run" / RUN_SPEC).read_text())["settings"]["text"]
    assert recorded.startswith("sha256:") and "probe" not in recorded
    (moved / "probe.txt").write_text("other text entirely. " * 200)
    with pytest.raises(ScalelensError, match="holds a sweep with different settings"):
        sweep(read_spec(moved / "sweep.toml"), moved / "run")


def test_own_models_moved_elsewhere_resume_and_other_weights_there_are_refused(tmp_path):
    """``--model x=DIR``: the directory moved (scratch to home) and the sweep rerun with its new
    path was refused ('size x was OLD, not NEW'), though the weights were the same. Each finished
    task's recorded weights fingerprint (its results.json's, else its captures') is compared with
    the checkpoint at the new path: the same weights resume there, other weights are refused,
    and a task that records none cannot be told apart, so it is refused too."""
    from tiny_models import tiny_model, word_tokenizer

    from scalelens.sweeps.rundir import RUN_SPEC

    first = tmp_path / "scratch" / "run_x"
    for step, seed in ((1, 0), (2, 1)):
        tiny_model(seed=seed).save_pretrained(first / f"step{step}")
        word_tokenizer().save_pretrained(first / f"step{step}")
    kw = dict(checkpoints="all", analyses=("massive_activations", "superposition"), settings=dict(FAST))
    out = tmp_path / "out"
    assert sweep(SweepSpec(models={"x": str(first)}, **kw), out).count("done") == 2
    moved = tmp_path / "home" / "run x"
    shutil.move(first, moved)
    again = sweep(SweepSpec(models={"x": str(moved)}, **kw), out)
    assert (again.count("skipped"), again.failed) == (2, [])
    assert json.loads((out / RUN_SPEC).read_text())["models"] == {"x": str(moved)}

    other = tmp_path / "other"
    shutil.copytree(moved, other)
    tiny_model(seed=5).save_pretrained(other / "step2")  # retrained: step1 alone is the same
    with pytest.raises(ScalelensError, match=r"size x was .*run x, not .*other \(other weights\)"):
        sweep(SweepSpec(models={"x": str(other)}, **kw), out)

    for results in (out / "tasks").rglob("results.json"):  # as measured before results.json had it
        data = json.loads(results.read_text())
        assert len(data.pop("weights_fingerprint")) == 16
        results.write_text(json.dumps(data))
    third = tmp_path / "third"
    shutil.move(moved, third)
    assert sweep(SweepSpec(models={"x": str(third)}, **kw), out).count("skipped") == 2  # captures tell
    for capture in (out / "tasks").rglob("*.h5"):
        capture.unlink()
    shutil.move(third, moved)
    with pytest.raises(ScalelensError, match=r"size x was .*third, not .*run x \(its finished task "
                       r"x/step1 records no weights fingerprint"):
        sweep(SweepSpec(models={"x": str(moved)}, **kw), out)


def test_a_sweep_tokenizer_moved_elsewhere_is_the_same_tokenizer(tmp_path):
    """``--tokenizer DIR`` counts by its tokenizer files' content, not its path: the directory
    moved with the project resumes (it was refused as 'a sweep with different tokenizer'), an
    edited one is refused, and a run that recorded the path resumes with that path."""
    from tiny_models import tiny_model, word_tokenizer

    from scalelens.sweeps.rundir import RUN_SPEC

    bare, words = tmp_path / "bare", tmp_path / "scratch" / "words"
    tiny_model().save_pretrained(bare)
    word_tokenizer().save_pretrained(words)
    kw = dict(models={"x": str(bare)}, analyses=("superposition",), settings=dict(FAST))
    out = tmp_path / "out"
    assert sweep(SweepSpec(**kw, tokenizer=str(words)), out).count("done") == 1
    recorded = json.loads((out / RUN_SPEC).read_text())["tokenizer"]
    assert recorded.startswith("sha256:")
    moved = tmp_path / "home" / "words"
    shutil.move(words, moved)
    assert sweep(SweepSpec(**kw, tokenizer=str(moved)), out).count("skipped") == 1
    spec = json.loads((out / RUN_SPEC).read_text())
    (out / RUN_SPEC).write_text(json.dumps({**spec, "tokenizer": str(moved)}))  # as recorded before
    assert sweep(SweepSpec(**kw, tokenizer=str(moved)), out).count("skipped") == 1
    assert json.loads((out / RUN_SPEC).read_text())["tokenizer"] == recorded
    config = moved / "tokenizer_config.json"
    config.write_text(config.read_text().replace("[UNK]", "[BOS]", 1))
    with pytest.raises(ScalelensError, match="holds a sweep with different tokenizer"):
        sweep(SweepSpec(**kw, tokenizer=str(moved)), out)
