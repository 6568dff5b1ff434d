"""Executors: run sweep tasks in this process, or fan them out on a Ray cluster."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from scalelens.errors import ScalelensError, ScalelensWarning
from scalelens.progress import progress_bar
from scalelens.sweeps.spec import SweepSpec, Task, check_ray_address
from scalelens.sweeps.tasks import TaskOutcome, attempt, is_done, task_dir, write_error_log

Report = Callable[[TaskOutcome], None]


def run_local(tasks: list[Task], spec: SweepSpec, run_dir: Path, report: Report) -> None:
    """Run tasks one after another in this process; a full disk stops them (raised)."""
    todo = skip_finished(tasks, run_dir, report)
    with sweep_bar(len(tasks), len(tasks) - len(todo), "sweep") as bar:
        for task in todo:
            outcome = attempt(task, spec, run_dir, stop_on_full_disk=True)
            report(outcome)
            tick(bar, outcome)


def skip_finished(tasks: list[Task], run_dir: Path, report: Report) -> list[Task]:
    """Report the tasks finished earlier as skipped; return the others, to run."""
    todo = []
    for task in tasks:
        if is_done(run_dir, task):
            report(TaskOutcome(task.key, "skipped", 0))
        else:
            todo.append(task)
    return todo


def sweep_bar(total: int, skipped: int, desc: str):  # type: ignore[no-untyped-def]
    """The sweep's bar over tasks, from the ``skipped`` ones; in a log, one line per task run."""
    return progress_bar(total=total, initial=skipped, desc=desc, unit="task", log_every=0.0)


def tick(bar, outcome: TaskOutcome) -> None:  # type: ignore[no-untyped-def]
    """Advance ``bar`` by one task, naming the task and how it ended."""
    bar.set_postfix_str(f"{outcome.key} {outcome.status}", refresh=False)
    bar.update(1)


def _ray_init(address: str | None):
    try:
        import ray
    except ImportError:
        raise ScalelensError("the ray executor needs Ray: pip install 'scalelens[ray]'") from None
    if ray.is_initialized():
        _warn_other_cluster(ray, address)
        return ray
    if address:
        check_ray_address(address)  # ray.init retries an unreachable address for minutes
    try:
        # logging_level: no "Started a local Ray instance" or token-authentication notice on stderr
        with _sigterm_kept():
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as e:
        if _token_refused(e):
            raise ScalelensError(
                f"the Ray cluster at {address or 'local'} uses token authentication and this process "
                "has no token it accepts; set RAY_AUTH_MODE=token and give the cluster's token "
                "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
            ) from None
        raise ScalelensError(
            f"cannot reach the Ray cluster at {address or 'local'} ({str(e).splitlines()[0]}); "
            "check --address or drop it to start a local Ray"
        ) from None
    return ray


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Give SIGTERM back to this process's own Python handler once ``ray.init`` has run.

    ``ray.init`` replaces it with ``sys.exit(15)``, and its core worker adds a C handler
    that prints a native stack dump: the CLI's SIGTERM (``timeout``, a scheduler's stop)
    then ended a Ray sweep with exit 15 or an abort and no line, instead of its cleanup,
    one line and exit 143. Only a handler set from Python is given back; where there was
    none (the default), Ray's stays, as Ray wants it.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def ray_where(ray, address: str | None) -> str:  # type: ignore[no-untyped-def]
    """One line saying which Ray runs the sweep and what it has (Ray's own banner is silenced)."""
    res = ray.cluster_resources()
    gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
    where = f"the Ray cluster at {address}" if address else "a local Ray started by this process"
    return f"sweeping on {where} ({res.get('CPU', 0):g} CPUs{gpus})"


def _warn_other_cluster(ray, address: str | None) -> None:
    """Warn when this process is connected to another cluster than ``address``.

    Ray keeps a process's first connection (a notebook's), so the sweep runs there.
    """
    current = ray.get_runtime_context().gcs_address or ""
    if not address or address == "auto" or not current:
        return
    host, _, port = address.rpartition(":")
    here, _, here_port = current.rpartition(":")
    loopback = {"localhost", "127.0.0.1", "::1"}
    if port == here_port and (host == here or host in loopback or here in loopback):
        return
    warnings.warn(f"this process is already connected to the Ray cluster at {current}, so the sweep "
                  f"runs there, not at {address}; call ray.shutdown() first to change clusters",
                  ScalelensWarning, stacklevel=3)


def _token_refused(e: BaseException | None) -> bool:
    """Whether connecting failed on Ray's token authentication (no token, or another one).

    Ray names it only deep in the chain; the outer error reads as an unreachable cluster.
    """
    import ray

    while e is not None:
        if isinstance(e, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def ray_placement(spec: SweepSpec) -> tuple[int, SweepSpec]:
    """GPUs each Ray task reserves, and the spec the tasks run with.

    A CUDA sweep reserves one GPU per task; Ray then shows a task only its own GPU, as
    ``cuda:0``, so the device index is dropped. A CPU sweep reserves none (so CPU-only
    workers take tasks, and a GPU box is not limited to one task per GPU).
    """
    if not spec.device.startswith("cuda"):
        return 0, spec
    return 1, dataclasses.replace(spec, device="cuda")


def run_ray(tasks: list[Task], spec: SweepSpec, run_dir: Path, report: Report) -> None:
    """One Ray task per (size, checkpoint); one GPU each for a CUDA sweep."""
    ray = _ray_init(spec.address)
    gpus, task_spec = ray_placement(spec)
    remote = ray.remote(num_gpus=gpus, max_retries=0)(attempt)
    _warn_without_gpus(ray, gpus, spec.device)
    run_dir = run_dir.absolute()  # a cluster's workers run in the directory their node started in
    todo = skip_finished(tasks, run_dir, report)
    pending = {remote.remote(t, task_spec, run_dir): t for t in todo}
    with sweep_bar(len(tasks), len(tasks) - len(todo), "sweep (ray)") as bar:
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as e:  # attempt() never raises: Ray lost the task
                        outcome = _lost(ray, task, run_dir, e)
                    outcome = unseen(outcome, task, run_dir)
                    report(outcome)
                    tick(bar, outcome)
        except BaseException:  # Ctrl-C: a driver that lives on (a notebook) left them writing into run_dir
            with suppress(Exception):  # a lost cluster cannot cancel: the first error is the one to tell
                _stop(ray, list(pending))
            raise


def unseen(outcome: TaskOutcome, task: Task, run_dir: Path) -> TaskOutcome:
    """``outcome``, or a failure when a worker finished the task but this machine cannot see it.

    A node that does not share the run directory at the same path writes the task's
    results where the driver never looks; the sweep said "done", then "no task finished".
    """
    if outcome.status not in ("done", "skipped") or is_done(run_dir, task):
        return outcome
    line = (f"the task finished on a Ray worker but {task_dir(run_dir, task) / 'results.json'} is not "
            "there on this machine; put the run directory (and the models) on storage every node "
            "shares at the same path")
    return _failed(task, run_dir, line, line)


def _stop(ray, refs: list) -> None:
    """Kill ``refs``' tasks and wait until they are gone, so none writes once the run-dir lock is free.

    Killed tasks resume on the next run, as interrupted ones do.
    """
    for ref in refs:
        ray.cancel(ref, force=True)
    if refs:
        ray.wait(refs, num_returns=len(refs))


def _warn_without_gpus(ray, gpus: int, device: str) -> None:
    """Say why a CUDA sweep on a cluster without GPUs waits: Ray holds its tasks, silently.

    Not an error: an autoscaling cluster adds a GPU node when tasks ask for one.
    """
    if gpus and not ray.cluster_resources().get("GPU"):
        warnings.warn(f"the Ray cluster has no GPU, so the tasks of this --device {device} sweep wait "
                      "until a node with one joins (an autoscaler may add it); otherwise stop with "
                      "Ctrl-C and sweep with --device cpu", ScalelensWarning, stacklevel=3)


def _lost(ray, task: Task, run_dir: Path, e: Exception) -> TaskOutcome:
    """A task Ray could not run to its end, failed (with error.log) while the sweep goes on.

    Its worker was killed (out of memory, say), its node was lost, or the worker could not
    import scalelens; a rerun of the sweep retries it.
    """
    cause = e
    while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause not in (None, cause):
        cause = cause.cause
    text = str(cause)
    if "No module named 'scalelens'" in text:
        line = ("ModuleNotFoundError: a Ray worker cannot import scalelens; install scalelens on every "
                "node of the cluster, or start the nodes with it on PYTHONPATH")
    else:
        first = next((t.strip() for t in text.splitlines() if t.strip()), "")
        line = f"{type(cause).__name__}: {first}"
    return _failed(task, run_dir, line, f"{e}\n{line}")


def _failed(task: Task, run_dir: Path, line: str, log: str) -> TaskOutcome:
    """A failed outcome, with ``log`` in the task's error.log."""
    write_error_log(run_dir, task, f"{log}\n")
    return TaskOutcome(task.key, "failed", 1, line)


EXECUTORS = {"local": run_local, "ray": run_ray}
