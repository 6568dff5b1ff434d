"""``scalelens capture`` and ``scalelens inspect``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scalelens.errors import ScalelensError
from scalelens.output import note, shown
from scalelens.textfiles import output_file, user_path, user_source

if TYPE_CHECKING:
    from scalelens.cache.reader import CaptureFile


def int_list(text: str) -> tuple[int, ...]:
    """Parse ``0,2,5`` (argparse type)."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options that say which model to load and where to run it."""
    p.add_argument("--model", required=True, type=user_source,
                   help="hub id, local HF dir, suite dir or .gguf file")
    p.add_argument("--revision", help="hub revision / checkpoint, e.g. step3000")
    p.add_argument("--tokenizer", type=user_source,
                   help="tokenizer directory or hub id (default: the model's own)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="model compute dtype (default float32, whatever the checkpoint was saved in)")


def load_from_args(args: argparse.Namespace):
    """Load the model named by :func:`add_model_args` options."""
    from scalelens.models.load import load_model

    check_device(args.device, args.dtype)
    return load_model(args.model, revision=args.revision, tokenizer=args.tokenizer, device=args.device,
                      dtype=args.dtype)


def check_device(device: str, dtype: str | None) -> None:
    """Refuse devices and dtypes this machine cannot run, with one line."""
    from scalelens.models.load import check_device_usable, resolve_dtype

    check_device_usable(device, resolve_dtype(dtype))


def check_output_file(out: Path, overwrite: bool) -> None:
    """Refuse an --out that cannot be written, before loading the model."""
    if out.is_dir():
        raise ScalelensError(f"--out {out} is a directory; give a .h5 file path")
    parent = out.parent
    if not parent.is_dir():
        raise ScalelensError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        if out.exists() and not overwrite:
            raise ScalelensError(f"output directory {parent} is not writable (read-only file system or "
                                 f"permissions); make it writable again to resume {out.name}, or choose "
                                 "another --out")
        raise ScalelensError(f"output directory {parent} is not writable; choose another --out")
    if out.exists() and not overwrite and not os.access(out, os.R_OK | os.W_OK):
        raise ScalelensError(f"{out} exists but is not writable; fix its permissions to resume it, or "
                             "choose another --out")


def check_not_an_input(out: Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an ``--out`` that is one of the command's input files (``inputs``: option -> path).

    ``capture --prompts p.txt --out p.txt`` was refused as "not a readable capture; ...
    pass --overwrite", and with --overwrite the capture replaced the prompt file.
    """
    if not out.is_file():
        return
    for option, path in inputs.items():
        if path is not None and Path(path).is_file() and out.samefile(path):
            raise ScalelensError(f"--out {out} is the {option} file; give another --out")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``capture`` and ``inspect``."""
    p = sub.add_parser("capture", help="run prompts through a model and store probe data in HDF5")
    add_model_args(p)
    p.add_argument("--prompts", required=True, type=user_path,
                   help=".txt (one prompt per line) or .jsonl with \"text\" or \"segments\"")
    p.add_argument("--probes", default="resid,attn,massive",
                   help="comma-separated presets: resid, resid_pre, attn_out, mlp_out, attn, q, k, "
                        "massive, top1, norms, predictions (default resid,attn,massive)")
    p.add_argument("--layers", type=int_list, help="layer indices, e.g. 0,3,5 (default all)")
    p.add_argument("--heads", type=int_list,
                   help="head indices of per-head probes (attn, top1, q, k), e.g. 0,3 (default all)")
    p.add_argument("--positions", default=None,
                   help="all, last, segment:LABEL[@OFFSET] or indices like 0,-1 (write --positions=-1,0 "
                        "when the first is negative); default all, for top1 and predictions last")
    p.add_argument("--store-dtype", choices=("float16", "float32"), default=None,
                   help="storage dtype of full tensors (default float16; attention float32)")
    p.add_argument("--out", required=True, type=output_file("capture.h5"), help="output .h5 file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="longest prompt in tokens")
    p.add_argument("--backend", default="native", help="native, nnsight or transformer-lens")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_capture)

    q = sub.add_parser("inspect", help="print model, probes, shapes and completeness of a capture, "
                                       "or where a sweep's run directory stands")
    q.add_argument("file", type=user_path, metavar="FILE_OR_RUN",
                   help="a capture .h5 file, a measure output directory (each capture in it) or a "
                        "sweep's run directory")
    q.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                   help=f"scan stored values for NaN/inf (default: when under {SCAN_LIMIT_GIB} GiB)")
    q.set_defaults(func=run_inspect)


SCAN_LIMIT_GIB = 4


def _float_bytes(f) -> int:
    import numpy as np

    total = 0
    for probe in f.probe_names:
        for shape, dtype, _ in f.datasets(probe).values():
            if np.dtype(dtype).kind == "f":
                total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def warn_nonfinite(f, scan: bool | None = None) -> list:
    """Print one warning line per dataset holding NaN/inf; return what was found.

    ``scan`` None scans files whose float data is under SCAN_LIMIT_GIB.
    """
    size = _float_bytes(f)
    if scan is None:
        scan = size <= SCAN_LIMIT_GIB * 2**30
    if not scan:
        note(f"{f.path}: skipped the NaN/inf scan of {size / 2**30:.1f} GiB of values; "
             "run `scalelens inspect --scan` to do it")
        return []
    found = f.nonfinite()
    for hit in found:
        print(f"warning: {f.path}: {hit.line()}; analyses report these instead of averaging them"
              f"{_overflow_hint(f, hit)}", file=sys.stderr)
    return found


def _overflow_hint(f, hit) -> str:
    """A float16 dataset of a wider model: its inf may be a value past float16's range."""
    import numpy as np

    stored = np.dtype(f.datasets(hit.probe)[hit.dataset][1])
    if stored != np.float16 or f.model.get("dtype") == "float16":
        return ""
    return ("; float16 storage turns values past +-65504 into inf: recapture with --store-dtype float32 "
            "to keep them")


def _probes_from_args(args: argparse.Namespace) -> tuple[list, list[str]]:
    """The probes of ``--probes`` with the options that apply to each; notes on ignored options."""
    from scalelens.hooks.points import CapturePoint
    from scalelens.probes.spec import Positions, preset

    names = [n.strip() for n in args.probes.split(",") if n.strip()]
    if not names:
        raise ScalelensError("--probes is empty; give presets like resid,attn,massive")
    if len(set(names)) != len(names):
        raise ScalelensError(f"--probes lists a probe twice ({args.probes}); list each once")
    positions = Positions.parse(args.positions) if args.positions is not None else None  # "": refused
    bases = [preset(n) for n in names]
    if args.heads is not None and not any(p.point.from_attention_tap for p in bases):
        raise ScalelensError("--heads applies to per-head probes (attn, top1, q, k) and none is "
                             "selected; drop --heads or add such a probe")
    probes = [preset(n, layers=None if b.point is CapturePoint.LOGITS else args.layers, positions=positions,
                     dtype=args.store_dtype, heads=args.heads) for n, b in zip(names, bases, strict=True)]
    return probes, _ignored_options(bases, args)


def _ignored_options(bases: list, args: argparse.Namespace) -> list[str]:
    """One note per option that some selected probes do not take (they ignore it)."""
    from scalelens.hooks.points import CapturePoint
    from scalelens.probes.spec import Reduction

    ignored = {
        "--layers": (args.layers, lambda p: p.point is CapturePoint.LOGITS, "logits have no layers"),
        "--positions": (args.positions, lambda p: p.reduction is Reduction.MASSIVE,
                        "the massive summary reads every position"),
        "--store-dtype": (args.store_dtype, lambda p: p.reduction is not Reduction.FULL,
                          "summaries have fixed dtypes"),
    }
    notes = []
    for option, (value, skips, why) in ignored.items():
        names = [p.name for p in bases if skips(p)]
        if value is not None and names:
            notes.append(f"{option} does not apply to {', '.join(names)} ({why})")
    return notes


def run_capture(args: argparse.Namespace) -> int:
    """Handle ``scalelens capture``."""
    from scalelens.cache.reader import CaptureFile
    from scalelens.capture import CaptureSettings, capture
    from scalelens.probes.prompts import read_prompt_file

    settings = CaptureSettings(batch_size=args.batch_size, max_length=args.max_length,
                               backend=args.backend, overwrite=args.overwrite,
                               progress=True)
    check_not_an_input(args.out, {"--prompts": args.prompts, "--model": args.model,
                                  "--tokenizer": args.tokenizer})
    check_output_file(args.out, args.overwrite)
    prompts = read_prompt_file(args.prompts)
    probes, notes = _probes_from_args(args)
    loaded = load_from_args(args)
    out = capture(loaded, probes, prompts, args.out, **vars(settings))  # leaves nothing if it fails early
    with CaptureFile(out) as f:
        warn_nonfinite(f)
    for text in notes:  # after the work: a failing command prints its one error line only
        note(text)
    print(f"wrote {out}")
    return 0


def _fmt_int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _batch_sizes(f: CaptureFile) -> str:
    """The batch size(s) a file's finished prompts were captured with.

    E.g. ``8 (prompts 0-15), 2 (prompts 16-19)`` after a resume with a smaller one;
    ``unknown`` when ``/batch_size`` is damaged (the probe data are still listed).
    """
    import numpy as np

    try:
        sizes = f.batch_sizes
    except ScalelensError:  # informational only: the rest of inspect still runs
        return "unknown (/batch_size is damaged)"
    if sizes is None:  # written before batch sizes were recorded per prompt
        return f"{f.capture.get('batch_size')} (when created)"
    if not sizes.size:
        return "none yet"
    cuts = [0, *(np.flatnonzero(np.diff(sizes)) + 1).tolist(), len(sizes)]
    if len(cuts) == 2:
        return str(int(sizes[0]))
    return ", ".join(f"{int(sizes[a])} (prompts {a}-{b - 1})" for a, b in zip(cuts, cuts[1:], strict=False))


def run_inspect(args: argparse.Namespace) -> int:
    """Handle ``scalelens inspect``: a capture, every capture in a directory, or a sweep's run."""
    from scalelens.sweeps.status import is_run_dir, run_status

    if is_run_dir(args.file):
        print("\n".join(run_status(args.file).lines()))
        return 0
    files = sorted(args.file.glob("*.h5")) if args.file.is_dir() else [args.file]
    if not files:
        raise ScalelensError(f"{args.file} holds no .h5 captures and is not a sweep's run directory; "
                             "give a capture file, a measure output directory or a run directory")
    for n, path in enumerate(files):
        if n:
            print()
        _inspect_file(path, args.scan)
    return 0


def _inspect_file(path: Path, scan: bool | None) -> None:
    from scalelens.cache.lock import WriteLock, lock_holder
    from scalelens.cache.reader import CaptureFile
    from scalelens.cache.schema import SCHEMA_VERSION

    with CaptureFile(path) as f:
        m = f.model
        writer = lock_holder(WriteLock(f.path).lock_path)
        if f.complete:
            state = "complete"
        elif writer is not None:
            state = f"being written now by process {writer} ({f.n_done}/{f.n_prompts} prompts done)"
        elif f.schema_version < SCHEMA_VERSION:  # the capture command refuses to resume it
            state = (f"incomplete ({f.n_done}/{f.n_prompts} prompts; written by an older scalelens, "
                     f"schema version {f.schema_version}, so it is not resumed: capture it again "
                     "with --overwrite)")
        else:
            state = (f"incomplete ({f.n_done}/{f.n_prompts} prompts; rerun the capture command to "
                     "finish it)")
        print(f"{shown(f.path)}: {state}")
        print(f"model: {shown(m.get('name'))} ({m.get('architecture')}, {_fmt_int(m.get('n_params'))} "
              f"params, revision {shown(m.get('revision'))}, step {m.get('step')})")
        cap = f.capture
        print(f"capture: backend {cap.get('backend')}, batch size {_batch_sizes(f)}, "
              f"attention: {cap.get('attention_capture')}")
        print(f"prompts: {f.n_prompts}, padded length {cap.get('seq')}")
        for probe in f.probe_names:
            print(f"probe {probe}:")
            for name, (shape, dtype, axes) in f.datasets(probe).items():
                dims = ", ".join(f"{a}={s}" for a, s in zip(axes, shape, strict=True))
                print(f"  {name}: {dtype} [{dims}]")
        found = warn_nonfinite(f, scan)
        if found:
            print(f"non-finite values: {len(found)} dataset(s) hold NaN/inf (see the warnings)")
