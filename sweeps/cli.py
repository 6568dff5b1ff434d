"""``scalelens sweep``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalelens.errors import ScalelensError


def _checkpoints(text: str) -> str | tuple[int, ...]:
    if text in ("log", "all", "final"):
        return text
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"checkpoints: log, all, final or steps like 0,64,512; got {text!r}"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``."""
    p = sub.add_parser("sweep", help="measure every (size, checkpoint); write metrics.csv and fits.json")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", help="a mini-suite directory (scalelens suite build)")
    src.add_argument("--family", help="a hub family: pythia")
    src.add_argument("--spec", type=Path, help="a TOML sweep spec instead of flags")
    p.add_argument("--sizes", help="comma-separated sizes (default all)")
    p.add_argument("--checkpoints", type=_checkpoints, default="log", help="log, all, final or steps")
    p.add_argument("--analyses", default="all")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of each fit")
    p.set_defaults(func=run_sweep)


def spec_from_args(args: argparse.Namespace):
    """A SweepSpec from flags or from --spec."""
    from scalelens.measure.run import parse_analyses
    from scalelens.sweeps.spec import SweepSpec, read_spec

    if args.spec:
        return read_spec(args.spec)
    return SweepSpec(suite=args.suite, family=args.family,
                     sizes=tuple(args.sizes.split(",")) if args.sizes else None,
                     checkpoints=args.checkpoints, analyses=parse_analyses(args.analyses),
                     executor=args.executor, address=args.address, device=args.device)


def run_sweep(args: argparse.Namespace) -> int:
    """Handle ``scalelens sweep``; exit 1 when some task failed."""
    from scalelens.sweeps.run import sweep

    spec = spec_from_args(args)
    summary = sweep(spec, args.out, n_boot=args.n_boot)
    print(f"sweep: {summary.count('done')} done, {summary.count('skipped')} skipped, "
          f"{summary.count('failed')} failed; results in {args.out}")
    for o in summary.failed:
        print(f"  failed {o.key}: {o.error}", file=sys.stderr)
    if not (args.out / "metrics.csv").exists():
        raise ScalelensError("no task finished, so there is nothing to report; see the errors above")
    return 1 if summary.failed else 0
