"""The ``scalelens`` command line: capture, inspect, suite, measure, analyze, sweep, report, demo."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from scalelens.errors import ScalelensError

# Sub-command modules; each exposes register(subparsers).
_COMMAND_MODULES = (
    "scalelens.commands.capture",
    "scalelens.models.cli",
    "scalelens.commands.measure",
    "scalelens.sweeps.cli",
    "scalelens.reports.cli",
    "scalelens.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="scalelens",
        description="Interpretability measurements across model scale and training.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (errors: one line on stderr, non-zero)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ScalelensError as e:
        if args.debug:
            traceback.print_exc()
        print(f"scalelens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalelens: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        print(f"scalelens: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
