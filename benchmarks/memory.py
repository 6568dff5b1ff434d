"""Peak memory of one capture in a fresh process (run by the harness once per prompt count).

``python -m benchmarks.memory --n 10000 --model-config pythia-14m --seq 16 --out X.h5``
captures the resid + summary probe sets (resid_post fp16, massive summary, top-1 rows)
of ``n`` short prompts and prints one JSON line: prompt count, seconds, peak RSS of the
process (``VmHWM``) and, on CUDA, peak GPU memory allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .pipelines import scalelens_probes
from .workload import build_model, config_name, make_prompts


def _peak_rss_kb() -> int:
    """This process's peak RSS: VmHWM (per address space, so fresh after exec); else ru_maxrss.

    ``ru_maxrss`` alone is wrong here: Linux carries it across ``execve``, so a child of a
    large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one capture and report its peak memory."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--model-config", default="pythia-14m")
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from scalelens.capture import capture

    dtype = torch.float16 if args.device == "cuda" else torch.float32
    loaded = build_model(config_name(args.model_config), args.device, dtype)
    prompts = make_prompts(args.n, args.seq, loaded.info.vocab_size, seed=1)
    probes = scalelens_probes("resid") + scalelens_probes("summary")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    capture(
        loaded, probes, prompts.texts, args.out, batch_size=args.batch_size, overwrite=True, progress=False
    )
    seconds = time.perf_counter() - t0
    peak_kb = _peak_rss_kb()
    out = {
        "n": args.n,
        "tokens": prompts.n_tokens,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "file_mb": args.out.stat().st_size / 2**20,
    }
    if args.device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.out.unlink(missing_ok=True)
    return out


def flat_memory(
    sizes: tuple[int, ...], directory: Path, model_config: str, seq: int, batch_size: int, device: str
) -> list[dict[str, Any]]:
    """Run :func:`child` in a fresh interpreter per prompt count, one after the other."""
    rows = []
    for n in sizes:
        cmd = [
            sys.executable,
            "-m",
            f"{__package__}.memory",
            "--n",
            str(n),
            "--model-config",
            model_config,
            "--seq",
            str(seq),
            "--batch-size",
            str(batch_size),
            "--device",
            device,
            "--out",
            str(directory / f"memory_{n}.h5"),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    print(json.dumps(child()))
