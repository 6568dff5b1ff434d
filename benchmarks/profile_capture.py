"""Where a capture's time goes: torch.profiler over scalelens and the floor, top ops by device time.

    python -m benchmarks.profile_capture [--device cuda] [--model-config pythia-160m] [--sets summary]

Same model, prompts and batches as ``benchmarks.capture`` (random-init Pythia config, word
tokenizer). After one warm-up call each, the floor and ``scalelens.capture`` of each probe
set run once under the profiler; the top ops by self device time (self CPU time on a CPU)
are printed with their call counts, after the kernel launches per batch (on a GPU at small
batches the time follows that count); ``--json`` writes it all. Use it before optimising: it
tells kernels that are slow from kernels that are many.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .pipelines import PROBE_SETS, run_floor, run_scalelens
from .results import check_outputs, run_main
from .workload import build_model, config_name, config_problem, make_prompts


def top_ops(prof: Any, device: str, n: int) -> list[dict[str, Any]]:
    """The ``n`` ops with the most self time on ``device`` (cuda or cpu)."""
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1e3} for e in rows]


# Ops that launch no kernel: views, allocations, dispatch wrappers, eval-mode dropout.
_NO_KERNEL = frozenset(
    "aten::" + n for n in (
        "empty empty_strided empty_like as_strided as_strided_ view view_as _unsafe_view _reshape_alias "
        "reshape t transpose permute expand expand_as slice narrow select unsqueeze unsqueeze_ squeeze "
        "squeeze_ unbind split split_with_sizes chunk alias detach lift_fresh resolve_conj resolve_neg "
        "contiguous result_type to _to_copy item _local_scalar_dense is_nonzero dropout flatten movedim "
        "broadcast_tensors resize_ linear matmul scaled_dot_product_attention"
    ).split()
)


def launches(prof: Any, device: str) -> int:
    """Kernel launches in a profile: CUDA kernels, memcpys and memsets on a GPU; on a CPU, a
    proxy: aten ops that do work and call no other such op (views and allocations excluded).
    In a launch-bound regime (small batches on a GPU) time grows with this count."""
    events = prof.events()
    if device == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)

    def works(e: Any) -> bool:
        return e.name.startswith("aten::") and e.name not in _NO_KERNEL

    return sum(1 for e in events if works(e) and not any(works(c) for c in e.cpu_children))


def main(argv: list[str] | None = None) -> int:
    """Profile the floor and each probe set once; print the top ops."""
    doc = (__doc__ or "").split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_capture", description=doc)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model-config", default="pythia-160m")
    ap.add_argument("--sets", default="summary", help=f"comma-separated, from {PROBE_SETS}")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if config_problem(args.model_config):
        ap.error(f"--model-config: {config_problem(args.model_config)}")
    check_outputs(ap, {"--json": args.json})
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    loaded = build_model(config_name(args.model_config), args.device, dtype)
    prompts = make_prompts(args.n_prompts, args.seq, loaded.info.vocab_size)
    with tempfile.TemporaryDirectory(prefix="scalelens-prof-") as tmp:  # the captures go with it
        runs: dict[str, Callable[[], None]] = {"floor": partial(run_floor, loaded, prompts, args.batch_size)}
        for s in args.sets.split(","):
            runs[s] = partial(run_scalelens, loaded, prompts, args.batch_size, s, Path(tmp) / f"{s}.h5")
        result = _profile_all(runs, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _profile_all(runs: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, Any]:
    """Warm up and profile each run once; print its launches per batch and top ops."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    result: dict[str, Any] = {}
    for name, fn in runs.items():
        fn()  # warm-up
        with profile(activities=activities) as prof:
            fn()
        ops = top_ops(prof, args.device, args.top)
        n_batches = -(-args.n_prompts // args.batch_size)
        per_batch = launches(prof, args.device) / n_batches
        result[name] = {"launches_per_batch": per_batch, "top_ops": ops}
        print(f"\n== {name}: {per_batch:.0f} kernel launches per batch "
              f"({'CUDA kernels' if args.device == 'cuda' else 'CPU leaf ops, a proxy'}); "
              f"top {args.top} ops by self {args.device} time")
        for o in ops:
            print(f"  {o['self_ms']:9.2f} ms  {o['calls']:6d} calls  {o['op'][:90]}")
    return result


if __name__ == "__main__":
    raise SystemExit(run_main(main, "profile_capture"))
