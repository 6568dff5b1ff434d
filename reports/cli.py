"""The ``report`` subcommand: ``scalelens report RUN_DIR [--out FILE.html]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelens.output import note
from scalelens.textfiles import output_file, user_path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to a top-level parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The new subparser; its ``func`` default is `run`.
    """
    parser = subparsers.add_parser(
        "report",
        help="render a sweep's run directory into an HTML report and a Markdown summary",
        description="Render RUN_DIR (metrics.csv, optional fits.json and run.json) into one "
        "self-contained HTML file and a Markdown summary with the same base name.",
    )
    parser.add_argument("run_dir", type=user_path, metavar="RUN_DIR", help="directory written by a sweep")
    parser.add_argument(
        "--out",
        type=output_file("report.html", why="the report is an HTML file with its Markdown summary "
                                                  "beside it"),
        metavar="FILE.html",
        default=None,
        help="HTML file to write (default: RUN_DIR/report.html)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Render the report for parsed ``report`` arguments.

    Args:
        args: Parsed arguments with ``run_dir`` and ``out``.

    Returns:
        The exit code (0). Input problems raise `scalelens.errors.ScalelensError`,
        which the top-level CLI prints as one line.
    """
    from scalelens.cache.lock import lock_holder
    from scalelens.sweeps.rundir import LOCK_NAME, RUN_INFO

    from .render import render_report  # deferred: keeps `scalelens --help` fast

    writer = lock_holder(args.run_dir / LOCK_NAME)
    if writer is not None:
        note(f"a sweep is writing {args.run_dir} now (process {writer}); its tables are rewritten "
             "when it ends, so this report shows the run before it (`scalelens inspect "
             f"{args.run_dir}` shows its progress)")
    elif _stopped(args.run_dir / RUN_INFO):
        note(f"the last sweep into {args.run_dir} stopped before it finished (its run.json says so): "
             "its tables may be those of the sweep before, or missing (fits.json); rerun the same "
             "sweep to complete them")
    paths = render_report(args.run_dir, args.out)
    print(f"wrote {paths.html}")
    print(f"wrote {paths.markdown}")
    return 0


def _stopped(info: Path) -> bool:
    """Whether ``run.json`` says its sweep stopped before it finished (a crash, a full disk, Ctrl-C)."""
    import json

    try:
        doc = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none (a run directory made otherwise), or damaged: the report says
        return False
    return isinstance(doc, dict) and doc.get("finished") is False
