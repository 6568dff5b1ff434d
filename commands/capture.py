"""``scalelens capture`` and ``scalelens inspect``."""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelens.errors import ScalelensError


def int_list(text: str) -> tuple[int, ...]:
    """Parse ``0,2,5`` (argparse type)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options that say which model to load and where to run it."""
    p.add_argument("--model", required=True, help="hub id, local HF dir, suite dir or .gguf file")
    p.add_argument("--revision", help="hub revision / checkpoint, e.g. step3000")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="model compute dtype (default: as saved)")


def load_from_args(args: argparse.Namespace):
    """Load the model named by :func:`add_model_args` options."""
    from scalelens.models.load import load_model

    check_device(args.device, args.dtype)
    return load_model(args.model, revision=args.revision, device=args.device, dtype=args.dtype)


def check_device(device: str, dtype: str | None) -> None:
    """Refuse devices and dtypes this machine cannot run, with one line."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ScalelensError(f"--device {device} asked for but CUDA is not available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ScalelensError(f"unknown device {device!r}; use cpu or cuda[:N]")
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ScalelensError("this GPU does not support bfloat16; use --dtype float16")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``capture`` and ``inspect``."""
    p = sub.add_parser("capture", help="run prompts through a model and store probe data in HDF5")
    add_model_args(p)
    p.add_argument("--prompts", required=True, type=Path,
                   help=".txt (one prompt per line) or .jsonl with \"text\" or \"segments\"")
    p.add_argument("--probes", default="resid,attn,massive",
                   help="comma-separated presets: resid, resid_pre, attn_out, mlp_out, attn, q, k, "
                        "massive, top1, norms (default resid,attn,massive)")
    p.add_argument("--layers", type=int_list, help="layer indices, e.g. 0,3,5 (default all)")
    p.add_argument("--positions", default=None,
                   help="all, last, segment:LABEL or indices like 0,-1 (default all)")
    p.add_argument("--store-dtype", choices=("float16", "float32"), default=None,
                   help="storage dtype of full tensors (default float16; attention float32)")
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="longest prompt in tokens")
    p.add_argument("--backend", default="native", help="native, nnsight or transformer-lens")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_capture)

    q = sub.add_parser("inspect", help="print model, probes, shapes and completeness of a capture")
    q.add_argument("file", type=Path)
    q.set_defaults(func=run_inspect)


def run_capture(args: argparse.Namespace) -> int:
    """Handle ``scalelens capture``."""
    from scalelens.capture import CaptureSettings, capture
    from scalelens.probes.prompts import read_prompt_file
    from scalelens.probes.spec import Positions, preset

    settings = CaptureSettings(batch_size=args.batch_size, max_length=args.max_length,
                               backend=args.backend, overwrite=args.overwrite)
    if args.out.exists() and not args.overwrite and args.out.is_dir():
        raise ScalelensError(f"--out {args.out} is a directory; give a .h5 file path")
    prompts = read_prompt_file(args.prompts)
    positions = Positions.parse(args.positions) if args.positions else None
    probes = [preset(n.strip(), layers=args.layers, positions=positions, dtype=args.store_dtype)
              for n in args.probes.split(",") if n.strip()]
    loaded = load_from_args(args)
    out = capture(loaded, probes, prompts, args.out, **vars(settings))
    print(f"wrote {out}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Handle ``scalelens inspect``."""
    from scalelens.cache.reader import CaptureFile

    with CaptureFile(args.file) as f:
        m = f.model
        state = "complete" if f.complete else f"incomplete ({f.n_done}/{f.n_prompts} prompts)"
        print(f"{f.path}: {state}")
        print(f"model: {m.get('name')} ({m.get('architecture')}, {m.get('n_params'):,} params, "
              f"revision {m.get('revision')}, step {m.get('step')})")
        cap = f.capture
        print(f"capture: backend {cap.get('backend')}, batch size {cap.get('batch_size')}, "
              f"attention: {cap.get('attention_capture')}")
        print(f"prompts: {f.n_prompts}, padded length {cap.get('seq')}")
        for probe in f.probe_names:
            print(f"probe {probe}:")
            for name, (shape, dtype, axes) in f.datasets(probe).items():
                dims = ", ".join(f"{a}={s}" for a, s in zip(axes, shape, strict=True))
                print(f"  {name}: {dtype} [{dims}]")
    return 0
