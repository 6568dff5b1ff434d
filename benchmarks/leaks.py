"""Per-task growth of process resources in a long in-process run (sweep, measure, capture).

A real sweep runs hundreds of (size, checkpoint) tasks in one process for hours; anything
that grows per task (RSS, open fds, threads, open HDF5 objects, tqdm bars, matplotlib
figures, live torch tensors, files under the cache or /tmp) eventually kills it. This
driver samples those counters after every task and fits the growth per task (least
squares slope over the samples after the first ``--warmup`` ones).

``python -m benchmarks.leaks sweep --suite DIR --out RUN [--analyses all]``
    a local sweep of a suite (build one with many checkpoints first, e.g.
    ``build_suite(DIR, preset="micro", steps=list(range(2, 42, 2)))``), sampled after
    every task.
``python -m benchmarks.leaks hub --suite DIR --out RUN``
    a ``family="pythia"`` sweep, offline, of a hub cache laid out from the suite's first
    two sizes (each task resolves a hub revision, as a real Pythia sweep's does).
``python -m benchmarks.leaks measure --model DIR --n 100 --out DIR``
    ``measure()`` of one model ``n`` times in this process.
``python -m benchmarks.leaks capture --model DIR --n 200 --out DIR``
    ``capture()`` of one model ``n`` times in this process.

Prints one JSON object: the slope per task of every counter and the first/last samples.
Run it with ``TMPDIR`` set to a private directory: ``tmp_entries`` counts the entries of
the temporary directory, which other processes share.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _files_under(path: str | None) -> int:
    if not path or not os.path.isdir(path):
        return 0
    return sum(len(files) for _, _, files in os.walk(path))


def _lru_entries(objects: list[Any]) -> int:
    """Entries held by every ``functools.lru_cache`` in the process."""
    return sum(o.cache_info().currsize for o in objects
               if type(o).__name__ == "_lru_cache_wrapper" and hasattr(o, "cache_info"))


def _warning_registries() -> int:
    """Entries of every module's ``__warningregistry__`` (one per distinct warning shown)."""
    total = 0
    for module in list(sys.modules.values()):
        registry = getattr(module, "__dict__", {}).get("__warningregistry__")
        total += len(registry) if isinstance(registry, dict) else 0
    return total


def sample() -> dict[str, int]:
    """The counters of this process now (after a full garbage collection)."""
    gc.collect()
    import h5py
    import torch

    objects = gc.get_objects()
    with warnings.catch_warnings():  # isinstance on torch's lazy deprecated attributes warns
        warnings.simplefilter("ignore")
        tensors = sum(isinstance(o, torch.Tensor) for o in objects)
    counts = {
        "rss_kb": _rss_kb(),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "os_threads": len(os.listdir("/proc/self/task")),
        "h5_objects": h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL),
        "tensors": tensors,
        "gc_objects": len(objects),
        "lru_entries": _lru_entries(objects),
        "warning_registry": _warning_registries(),
        "modules": len(sys.modules),
        "cache_files": _files_under(os.environ.get("SCALELENS_CACHE")),
        "tmp_entries": len(os.listdir(tempfile.gettempdir())),
    }
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        counts["tqdm"] = len(getattr(tqdm, "_instances", ()))
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        counts["figures"] = len(plt.get_fignums())
    del objects
    return counts


def slope(values: list[float]) -> float:
    """Least-squares growth per step of ``values`` (0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / den


def summarize(samples: list[dict[str, int]], warmup: int) -> dict[str, Any]:
    """Slope per task of every counter over the samples after ``warmup``, and first/last."""
    kept = samples[warmup:] or samples
    keys = sorted({k for s in kept for k in s})
    return {
        "tasks": len(samples),
        "per_task": {k: round(slope([s.get(k, 0) for s in kept]), 3) for k in keys},
        "first": kept[0],
        "last": kept[-1],
    }


def run_sweep(args: argparse.Namespace, after: Callable[[], None]) -> None:
    """A local sweep of ``args.suite``, ``after()`` called after every task."""
    import scalelens.sweeps.executors as ex
    from scalelens.measure.run import parse_analyses
    from scalelens.sweeps.run import sweep
    from scalelens.sweeps.spec import SweepSpec

    inner = ex.attempt

    def wrapped(*a: Any, **k: Any) -> Any:
        outcome = inner(*a, **k)
        after()
        return outcome

    ex.attempt = wrapped  # type: ignore[assignment]
    settings = json.loads(args.settings) if args.settings else {}
    sizes = tuple(args.sizes.split(",")) if args.sizes else None
    steps = getattr(args, "pythia_steps", None)
    where: dict[str, Any] = ({"family": "pythia", "sizes": ("14m", "31m"), "checkpoints": steps}
                             if steps else {"suite": args.suite, "sizes": sizes, "checkpoints": "all"})
    spec = SweepSpec(**where, analyses=parse_analyses(args.analyses), settings=settings)
    summary = sweep(spec, args.out, overwrite=True)
    print(f"# {summary.count('done')} done, {summary.count('failed')} failed", file=sys.stderr)
    for o in summary.failed[:3]:
        print(f"# failed {o.key}: {o.error}", file=sys.stderr)


def run_hub(args: argparse.Namespace, after: Callable[[], None]) -> None:
    """A ``family="pythia"`` sweep offline, from a hub cache laid out from ``args.suite``.

    The suite's first two sizes, their checkpoints in order, stand for the first Pythia
    steps of pythia-14m and pythia-31m (``models.testing.write_hub_cache``), so every task
    resolves a hub revision as a real Pythia sweep does, without the network.
    """
    cache = Path(args.out).with_name(Path(args.out).name + "-hub")
    # before transformers / huggingface_hub are imported: they read it once, at import
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    from scalelens.models.manifest import read_manifest
    from scalelens.models.pythia import PYTHIA_STEPS
    from scalelens.models.testing import write_hub_cache

    manifest = read_manifest(args.suite)
    n = len(manifest.steps)
    for size, label in zip(manifest.sizes[:2], ("14m", "31m"), strict=False):
        write_hub_cache(cache, f"EleutherAI/pythia-{label}",
                        {f"step{t}": manifest.checkpoint_dir(size, s)
                         for t, s in zip(PYTHIA_STEPS[:n], manifest.steps, strict=True)})
    args.pythia_steps = tuple(PYTHIA_STEPS[:n])
    run_sweep(args, after)


def run_measure(args: argparse.Namespace, after: Callable[[], None]) -> None:
    """``measure()`` of ``args.model`` ``args.n`` times (a fresh output folder each)."""
    from scalelens.measure.run import measure
    from scalelens.models.load import load_model
    from scalelens.sweeps.tasks import measure_settings

    settings = measure_settings(json.loads(args.settings) if args.settings else {})
    for i in range(args.n):
        loaded = load_model(args.model)
        measure(loaded, args.analyses, Path(args.out) / f"m{i % 2}", settings, progress=False,
                overwrite=True)
        del loaded
        after()


def run_capture(args: argparse.Namespace, after: Callable[[], None]) -> None:
    """``capture()`` of ``args.model`` ``args.n`` times into one file, overwritten."""
    from scalelens.capture import capture
    from scalelens.models.load import load_model

    loaded = load_model(args.model)
    prompts = ["the cat sat on the mat"] * 4
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for _ in range(args.n):
        capture(loaded, "resid", prompts, Path(args.out) / "c.h5", overwrite=True, progress=False)
        after()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen workload and print the growth per task as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=("sweep", "hub", "measure", "capture"))
    ap.add_argument("--suite")
    ap.add_argument("--sizes", default="", help="sweep: these suite sizes only (comma-separated)")
    ap.add_argument("--model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--analyses", default="all")
    ap.add_argument("--settings", default="", help="sweep / measure settings as JSON (measure-CLI names)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--trace", default="", help="write every sample as JSON lines here")
    args = ap.parse_args(argv)
    samples: list[dict[str, int]] = []

    def after() -> None:
        samples.append(sample())
        if args.trace:
            with open(args.trace, "a") as f:
                f.write(json.dumps(samples[-1]) + "\n")

    workloads = {"sweep": run_sweep, "hub": run_hub, "measure": run_measure, "capture": run_capture}
    workloads[args.workload](args, after)
    result = summarize(samples, args.warmup)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
