"""``scalelens suite build|info``: argparse subcommands for the mini Pythia-style suite."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..textfiles import output_source, user_source
from .manifest import Manifest, read_manifest

PRESET_NAMES = ("default", "micro", "gpu")


def register(subparsers: Any) -> None:
    """Add ``suite build`` and ``suite info`` to a top-level argparse ``subparsers``.

    Each leaf parser sets ``func`` to a handler taking the parsed args and returning
    an exit code.
    """
    suite = subparsers.add_parser("suite", help="build or describe a mini Pythia-style suite")
    commands = suite.add_subparsers(dest="suite_command", required=True)
    build = commands.add_parser("build", help="train the suite (reuses a finished build)")
    build.add_argument("--out", required=True, type=output_source,
                       help="suite directory")
    build.add_argument("--sizes", help="comma-separated size names or LAYERSxWIDTHxHEADS shapes")
    build.add_argument("--corpus", type=user_source,
                       help="train on this UTF-8 text file instead of the built-in one")
    build.add_argument("--preset", default="default", choices=PRESET_NAMES)
    build.add_argument("--device", choices=["cpu", "cuda"], help="default: the preset's")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    build.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars (as the global --quiet)")
    build.set_defaults(func=_build)
    info = commands.add_parser("info", help="print a suite's manifest summary")
    info.add_argument("dir", type=user_source,
                      help="suite directory")
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from .suite import build_suite  # imports torch/transformers only when building

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] if args.sizes is not None else None
    started = time.perf_counter()
    manifest = build_suite(
        args.out,
        sizes=sizes,
        corpus_file=args.corpus,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        progress=not getattr(args, "quiet", False),  # the global --quiet
        preset=args.preset,
    )
    print(summary(manifest))
    print(f"wrote the suite to {args.out} in {time.perf_counter() - started:.1f}s")
    return 0


def _info(args: argparse.Namespace) -> int:
    print(summary(read_manifest(args.dir)))
    return 0


def summary(manifest: Manifest) -> str:
    """A few human-readable lines: sizes with parameter counts and final losses."""
    t = manifest.training
    lines = [
        f"{manifest.name} at {manifest.root} (format v{manifest.format_version}, "
        f"built in {manifest.build.get('seconds', '?')}s on {manifest.build.get('device', '?')})",
        f"corpus: {manifest.corpus.get('kind')} {manifest.corpus.get('n_train_tokens')} train "
        f"tokens; {t['total_steps']} steps x {t['tokens_per_step']} tokens",
        f"checkpoints: {len(manifest.steps)} per size, steps {manifest.steps}",
        f"{'size':>8} {'shape':>10} {'params':>10} {'non-emb':>10} {'valid loss':>10}",
    ]
    for name in manifest.sizes:
        m = manifest.models[name]
        lines.append(
            f"{name:>8} {m['shape']:>10} {m['n_params']:>10,} {m['n_params_non_embedding']:>10,} "
            f"{m['final_loss']:>10.3f}"
        )
    return "\n".join(lines)
