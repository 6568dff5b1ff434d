"""Executors: run sweep tasks in this process, or fan them out on a Ray cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from scalelens.errors import ScalelensError
from scalelens.sweeps.spec import SweepSpec, Task, check_ray_address
from scalelens.sweeps.tasks import TaskOutcome, attempt

Report = Callable[[TaskOutcome], None]


def run_local(tasks: list[Task], spec: SweepSpec, run_dir: Path, report: Report) -> None:
    """Run tasks one after another in this process."""
    for task in tqdm(tasks, desc="sweep", unit="task"):
        report(attempt(task, spec, run_dir))


def _ray_init(address: str | None):
    try:
        import ray
    except ImportError:
        raise ScalelensError("the ray executor needs Ray: pip install 'scalelens[ray]'") from None
    if ray.is_initialized():
        return ray
    if address:
        check_ray_address(address)  # ray.init retries an unreachable address for minutes
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ScalelensError(
            f"cannot reach the Ray cluster at {address or 'local'} ({str(e).splitlines()[0]}); "
            "check --address or drop it to start a local Ray"
        ) from None
    return ray


def run_ray(tasks: list[Task], spec: SweepSpec, run_dir: Path, report: Report) -> None:
    """One Ray task per (size, checkpoint), one GPU each when CUDA is present."""
    import torch

    ray = _ray_init(spec.address)
    gpus = 1 if torch.cuda.is_available() else 0
    remote = ray.remote(num_gpus=gpus, max_retries=0)(attempt)
    pending = {remote.remote(t, spec, run_dir): t for t in tasks}
    bar = tqdm(total=len(tasks), desc="sweep (ray)", unit="task")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            report(ray.get(ref))
            bar.update(1)
    bar.close()


EXECUTORS = {"local": run_local, "ray": run_ray}
