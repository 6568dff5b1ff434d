"""``scalelens sweep``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalelens.errors import ScalelensError
from scalelens.output import note
from scalelens.sweeps.spec import DTYPES
from scalelens.textfiles import output_path, user_path, user_source


def _checkpoints(text: str) -> str | tuple[int, ...]:
    if text in ("log", "all", "final"):
        return text
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"checkpoints: log, all, final or steps like 0,64,512; got {text!r}"
        ) from None


def _sizes(text: str | None) -> tuple[str, ...] | None:
    """The sizes of ``--sizes`` (None: all); an empty list is refused naming the option."""
    if text is None:
        return None
    sizes = tuple(t.strip() for t in text.split(",") if t.strip())
    if not sizes:
        raise ScalelensError("--sizes is empty; give comma-separated sizes, or leave it out for all")
    return sizes


def _size_source(text: str) -> tuple[str, str]:
    size, sep, source = text.partition("=")
    if not sep or not size.strip() or not source.strip():
        raise argparse.ArgumentTypeError(f"--model wants SIZE=SOURCE (e.g. small=runs/small), got {text!r}")
    return size.strip(), user_source(source.strip())


def _models(pairs: list[tuple[str, str]] | None) -> dict[str, str] | None:
    """``--model`` pairs as a table; one size given two models is refused."""
    if pairs is None:
        return None
    models: dict[str, str] = {}
    for size, source in pairs:
        if models.setdefault(size, source) != source:
            raise ScalelensError(f"--model gives size {size} twice ({models[size]}, {source}); "
                                 "label each model with its own size")
    return models


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``."""
    p = sub.add_parser("sweep", help="measure every (size, checkpoint); write metrics.csv and fits.json")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", type=user_source, help="a mini-suite directory (scalelens suite build)")
    src.add_argument("--family", help="a hub family: pythia")
    src.add_argument("--model", action="append", type=_size_source, metavar="SIZE=SOURCE",
                     help="your own family, once per size: a run directory with stepN / checkpoint-N / "
                          "global_stepN checkpoints, a model directory, a hub id or a .gguf file")
    src.add_argument("--spec", type=user_path, help="a TOML sweep spec instead of flags")
    p.add_argument("--sizes", help="comma-separated sizes (default all)")
    p.add_argument("--checkpoints", type=_checkpoints, default=None,
                   help="log, all, final or steps (default log)")
    p.add_argument("--analyses", default=None, help="comma-separated analyses (default all)")
    p.add_argument("--out", required=True, type=output_path, help="run directory")
    p.add_argument("--executor", choices=("local", "ray"), default=None, help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="model compute dtype (default float32)")
    p.add_argument("--tokenizer", default=None, type=user_source,
                   help="tokenizer directory or hub id for models that ship none")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run directory afresh when it holds a sweep with other settings")
    p.set_defaults(func=run_sweep)


_SPEC_FLAGS = ("sizes", "checkpoints", "analyses", "executor", "address", "device", "dtype", "tokenizer")


def spec_from_args(args: argparse.Namespace):
    """A SweepSpec from flags or from --spec (flags that the spec file sets are refused)."""
    from scalelens.measure.run import parse_analyses
    from scalelens.sweeps.spec import SweepSpec, read_spec

    given = [k for k in _SPEC_FLAGS if getattr(args, k, None) is not None]
    if args.spec:
        if given:
            flags = ", ".join(f"--{k}" for k in given)
            raise ScalelensError(f"{flags} cannot be combined with --spec; put them in {args.spec}")
        return read_spec(args.spec)
    if args.suite is None and args.family is None and args.model is None:
        raise ScalelensError("say what to sweep: --suite DIR, --family pythia, --model SIZE=SOURCE "
                             "(once per size) or --spec FILE")
    return SweepSpec(suite=args.suite, family=args.family, models=_models(args.model),
                     sizes=_sizes(args.sizes),
                     checkpoints=args.checkpoints or "log",
                     analyses=parse_analyses("all" if args.analyses is None else args.analyses),
                     executor=args.executor or "local", address=args.address,
                     device=args.device or "cpu", dtype=args.dtype, tokenizer=args.tokenizer)


def run_sweep(args: argparse.Namespace) -> int:
    """Handle ``scalelens sweep``; exit 1 when some task failed."""
    from scalelens.commands.capture import check_device
    from scalelens.sweeps.run import sweep
    from scalelens.sweeps.spec import check_ray_address, expand

    spec = spec_from_args(args)
    if not (spec.executor == "ray" and spec.address):  # a remote cluster's GPUs are not this machine's
        check_device(spec.device, spec.dtype)
    expand(spec)  # unknown sizes or checkpoints: one line before anything runs
    if spec.executor == "ray":
        from scalelens.sweeps.executors import _ray_init, ray_where

        if spec.address:
            check_ray_address(spec.address)
        note(ray_where(_ray_init(spec.address), spec.address))
    elif spec.address:
        raise ScalelensError("--address is for --executor ray; add --executor ray or drop --address")
    summary = sweep(spec, args.out, overwrite=args.overwrite)
    print(outcome_line(summary))
    cached = uncached_note(spec, [o.key for o in summary.failed], "--spec" if args.spec else "--checkpoints")
    report_failures(summary, args.out, cached)
    print(wrote_tables_line(args.out))
    return 1 if summary.failed else 0


def outcome_line(summary) -> str:  # type: ignore[no-untyped-def]
    """``sweep: N done, N skipped, N failed``: what became of the tasks."""
    return (f"sweep: {summary.count('done')} done, {summary.count('skipped')} skipped, "
            f"{summary.count('failed')} failed")


def wrote_tables_line(out: Path) -> str:
    """``wrote RUN/metrics.csv, RUN/fits.json``: the run's tables that exist (after a sweep)."""
    from scalelens.sweeps.rundir import RUN_TABLES

    return "wrote " + ", ".join(str(out / name) for name in RUN_TABLES if (out / name).exists())


def uncached_note(spec, failed: list[str], how: str = "--checkpoints") -> str | None:
    """One line for failed tasks whose hub revision the local cache lacks (all or part of it).

    Says how many, and which steps every swept hub model has fully cached, so an offline
    user can sweep those instead of reading one "not in the local hub cache" line per task.
    ``how`` is where the steps go: ``--checkpoints`` or ``--spec`` (its ``checkpoints``).
    """
    from scalelens.models.hub_cache import hub_cache_dir
    from scalelens.sweeps.spec import expand

    tasks = {t.key: t for t in expand(spec) if _hub_id(t.source)}
    gaps = [k for k in failed if k in tasks and not _fully_cached(tasks[k].source, tasks[k].revision)]
    if not gaps:
        return None
    steps = sorted(set.intersection(*(_cached_steps(s) for s in {t.source for t in tasks.values()})))
    where = "checkpoints = [...] in the spec" if how == "--spec" else "--checkpoints"
    have = (f"steps cached for every size: {', '.join(map(str, steps))} (sweep only those with {where} "
            f"{','.join(map(str, steps))}), or download the rest" if steps
            else "no step is cached for every size; download them")
    return (f"{len(gaps)} of {len(tasks)} tasks failed on checkpoints that are not (fully) in the local "
            f"hub cache {hub_cache_dir(None)}; {have}")


def _hub_id(source: str) -> bool:
    """A hub id (``org/name``), not a local path."""
    return "/" in source and not Path(source).expanduser().exists()


def _fully_cached(repo_id: str, revision: str | None) -> bool:
    """Whether the local hub cache holds everything loading ``repo_id@revision`` needs."""
    from scalelens.models.hub_cache import cached_snapshot, missing_files

    snapshot = cached_snapshot(repo_id, revision or "main", None)
    return snapshot is not None and snapshot.is_dir() and not missing_files(snapshot)


def _cached_steps(repo_id: str) -> set[int]:
    """The training steps of ``repo_id``'s revisions fully in the local hub cache.

    A revision gives a step by ``parse_step``: ``step3000``, ``step1000-tokens4B``,
    ``stage1-step1000-tokens4B``.
    """
    from scalelens.models.hub_cache import cached_revisions
    from scalelens.models.revisions import parse_step

    names = cached_revisions(repo_id, None) or []
    return {step for n in names if (step := parse_step(n)) is not None and _fully_cached(repo_id, n)}


def report_failures(summary, out: Path, note: str | None = None) -> None:
    """Print each failed task, then ``note``, on stderr; raise when no task finished (nothing to report)."""
    for o in summary.failed:
        print(f"  failed {o.key}: {o.error}", file=sys.stderr)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if not (out / "metrics.csv").exists():
        raise ScalelensError("no task finished, so there is nothing to report; see the errors above")
