"""``scalelens demo``: the whole pipeline offline on the embedded mini suite."""

from __future__ import annotations

import argparse
import errno
import shutil
import time
from pathlib import Path
from typing import Any

from scalelens.textfiles import output_path, user_path

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


def demo_settings(manifest: Any) -> dict[str, Any]:
    """DEMO_SETTINGS, shrunk to fit a suite whose models see fewer than 256 positions.

    The micro preset's models see 64: one needle in a haystack of a quarter of the
    context, sequences no longer than the context, dilutions x1 and x2.
    """
    n_ctx = min(m["config"]["max_position_embeddings"] for m in manifest.models.values())
    if n_ctx >= 256:
        return dict(DEMO_SETTINGS)
    return {**DEMO_SETTINGS, "context_lengths": (n_ctx // 4,), "n_needles": 1,
            "seq_length": min(DEMO_SETTINGS["seq_length"], n_ctx), "dilutions": (1, 2)}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    from scalelens.sweeps.cli import _checkpoints

    p = sub.add_parser("demo", help="offline end to end: mini suite -> sweep -> fits -> report")
    p.add_argument("--out", type=output_path, default=Path("scalelens_out/demo"), help="run directory")
    p.add_argument("--suite", type=user_path, help="mini suite directory (default: the cached one)")
    p.add_argument("--preset", default=None, choices=("default", "micro"),
                   help="suite preset when building: default (if not given) or micro; a finished "
                        "--suite is used as built unless --preset is given")
    p.add_argument("--checkpoints", default=None, type=_checkpoints,
                   help="all, log, final or steps (default: 7 steps spread on a log scale)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh when it holds a run with other settings")
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


def _suite(suite: Path, preset: str | None, own_cache: bool) -> tuple[Any, bool]:
    """Build or reuse the suite; scalelens's own cache is rebuilt when its preset changed.

    A finished suite the user names with ``--suite`` and no ``--preset`` is used as built.
    Returns the manifest and whether an existing suite was rebuilt.
    """
    from scalelens.errors import ScalelensError
    from scalelens.models.manifest import MANIFEST_NAME, read_manifest
    from scalelens.models.suite import SuiteSettingsMismatch, build_suite

    if not own_cache and preset is None and (suite / MANIFEST_NAME).is_file():
        return read_manifest(suite), False
    preset = preset or "default"
    try:
        return build_suite(suite, preset=preset), False
    except SuiteSettingsMismatch:
        if not own_cache:
            raise ScalelensError(f"--suite {suite} holds a suite built with other settings than the "
                                 f"{preset!r} preset{_built_from(suite)}; leave out --preset to use it as "
                                 "built, or pass another --suite") from None
    print(f"the cached suite in {suite} was built with other settings; rebuilding it")
    shutil.rmtree(suite)
    return build_suite(suite, preset=preset), True


def _built_from(suite: Path) -> str:
    """`` (it was built from the 'micro' preset)``, or "" when its manifest cannot say."""
    from scalelens.errors import ScalelensError
    from scalelens.models.manifest import read_manifest

    try:
        return f" (it was built from the {read_manifest(suite).preset!r} preset)"
    except (ScalelensError, OSError, KeyError, TypeError, ValueError):
        return ""


def _unwritable_suite(suite: Path, own_cache: bool, e: OSError) -> str:
    """The error line for a suite directory the demo may not write (its --out is the run directory)."""
    if own_cache:
        return (f"the suite cache {suite} is not writable ({e.strerror}: {e.filename}); set "
                "SCALELENS_CACHE to a writable directory, or pass --suite DIR")
    return f"--suite {suite} is not writable ({e.strerror}: {e.filename}); pass a writable --suite"


def run_demo(args: argparse.Namespace) -> int:
    """Build or reuse the suite, sweep it with every analysis, fit, and render the report.

    Every analysis: the four mechanisms plus information capacity and activation sparsity.
    """
    from scalelens.commands.measure import check_out_dir
    from scalelens.errors import ScalelensError
    from scalelens.models.suite import default_suite_dir
    from scalelens.reports.render import render_report
    from scalelens.sweeps.cli import outcome_line, report_failures, wrote_tables_line
    from scalelens.sweeps.run import sweep
    from scalelens.sweeps.rundir import measured_by_older_scalelens
    from scalelens.sweeps.spec import SweepSpec, expand

    check_out_dir(args.out, "run directory", "a run directory")  # before minutes of suite building
    suite = args.suite.expanduser() if args.suite else default_suite_dir(args.preset or "default")
    if args.suite and suite.exists() and not suite.is_dir():  # suite build's line would name --out
        raise ScalelensError(f"--suite {suite} is a file; give a suite directory (or leave --suite out "
                             "for the cached one)")
    print(f"suite: {suite} (built on first use, then reused)")
    try:
        manifest, rebuilt = _suite(suite, args.preset, own_cache=args.suite is None)
    except OSError as e:  # unwritable: the CLI's own line would say to choose another --out
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise ScalelensError(_unwritable_suite(suite, args.suite is None, e)) from None
    checkpoints = args.checkpoints or spread(manifest.steps)
    spec = SweepSpec(suite=str(suite), checkpoints=checkpoints,
                     executor=args.executor, settings=demo_settings(manifest))
    older = not rebuilt and measured_by_older_scalelens(args.out, spec)
    if (rebuilt or older) and (args.out / "tasks").exists():
        why = "on the old suite" if rebuilt else "by an older scalelens"
        print(f"the results in {args.out} were measured {why}; starting afresh")
    expand(spec)  # steps the suite lacks: one line before anything is written
    start = time.monotonic()  # the sweep's own time: the suite build has its bars
    summary = sweep(spec, args.out, overwrite=args.overwrite or rebuilt or older)
    print(f"{outcome_line(summary)} in {time.monotonic() - start:.0f} s")
    report_failures(summary, args.out)
    print(wrote_tables_line(args.out))
    paths = render_report(args.out)
    print(f"wrote {paths.html} (the report)")
    print(f"wrote {paths.markdown} (its summary)")
    return 1 if summary.failed else 0
