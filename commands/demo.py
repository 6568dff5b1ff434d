"""``scalelens demo``: the whole pipeline offline on the embedded mini suite."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

# Small settings so the demo fits in minutes on 2 CPU cores (see README).
DEMO_SETTINGS: dict[str, Any] = {
    "context_lengths": (48, 144),
    "depths": (0.1, 0.3, 0.5, 0.7, 0.9),
    "n_needles": 2,
    "ablation_k": 3,
    "n_sequences": 10,
    "seq_length": 96,
    "dilutions": (1, 5, 10),
    "dominance_prompts": 4,
    "batch_size": 10,
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="offline end to end: mini suite -> sweep -> fits -> report")
    p.add_argument("--out", type=Path, default=Path("scalelens_out/demo"), help="run directory")
    p.add_argument("--suite", type=Path, help="mini suite directory (default: the cached one)")
    p.add_argument("--preset", default="default", help="suite preset when building (default, micro)")
    p.add_argument("--checkpoints", default=None,
                   help="all, log, final or steps (default: 7 steps spread on a log scale)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.set_defaults(func=run_demo)


def spread(steps: list[int], k: int = 7) -> tuple[int, ...]:
    """``k`` steps spread evenly in log(step + 1), always with the first and the last."""
    import numpy as np

    steps = sorted(steps)
    if len(steps) <= k:
        return tuple(steps)
    targets = np.linspace(np.log1p(steps[0]), np.log1p(steps[-1]), k)
    logs = np.log1p(steps)
    picked = {steps[int(np.argmin(np.abs(logs - t)))] for t in targets}
    return tuple(sorted(picked))


def _suite(suite: Path, preset: str, own_cache: bool) -> Any:
    """Build or reuse the suite; scalelens's own cache is rebuilt when its preset changed."""
    from scalelens.models.suite import SuiteSettingsMismatch, build_suite

    try:
        return build_suite(suite, preset=preset)
    except SuiteSettingsMismatch:
        if not own_cache:
            raise
    print(f"the cached suite in {suite} was built with other settings; rebuilding it")
    shutil.rmtree(suite)
    return build_suite(suite, preset=preset)


def run_demo(args: argparse.Namespace) -> int:
    """Build or reuse the suite, sweep it with every analysis, fit, and render the report.

    Every analysis: the four mechanisms plus information capacity and activation sparsity.
    """
    from scalelens.models.suite import default_suite_dir
    from scalelens.reports.render import render_report
    from scalelens.sweeps.cli import _checkpoints
    from scalelens.sweeps.run import sweep
    from scalelens.sweeps.spec import SweepSpec

    start = time.monotonic()
    suite = args.suite or default_suite_dir(args.preset)
    print(f"suite: {suite} (built on first use, then reused)")
    manifest = _suite(suite, args.preset, own_cache=args.suite is None)
    checkpoints = _checkpoints(args.checkpoints) if args.checkpoints else spread(manifest.steps)
    spec = SweepSpec(suite=str(suite), checkpoints=checkpoints,
                     executor=args.executor, settings=dict(DEMO_SETTINGS))
    summary = sweep(spec, args.out)
    paths = render_report(args.out)
    print(f"sweep: {summary.count('done')} done, {summary.count('skipped')} skipped, "
          f"{summary.count('failed')} failed in {time.monotonic() - start:.0f} s")
    print(f"report: {paths.html}")
    print(f"summary: {paths.markdown}")
    return 1 if summary.failed else 0
