"""Machine/version description and the RESULTS.md ledger (new runs appended, old rows kept)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEADER = """# Benchmark results

Written by `python -m benchmarks.capture` (what each pipeline does: `benchmarks/capture.py`,
`benchmarks/pipelines.py`). Every run appends one row to the summary table and one section at
the end of this file; older rows are kept. Each section names the machine, the library
versions, the scalelens commit and the exact command.

How ratios are measured: everything runs in ONE process on the same model, prompts and
batches. Pipelines run on chunks of 32 prompts in the order floor, A, B, floor, C, D, floor,
... (rotated per chunk and round), and each run is compared with the mean of the floor runs
just before and after it, seconds apart, so a shared machine's changing load cancels out. A
ratio is the median over all (chunk, round) runs; `[p10, p90]` shows their spread. "x floor"
is throughput relative to the floor (higher is better); "speed-up" is scalelens's throughput
over that pipeline's, each normalised by its own bracketing floor runs.

The floor is the bare forward pass of the decoder stack (SDPA, pre-tokenized batches, no
hooks, no LM head: the work every capture needs). TransformerLens and nnsight run twice: as
their users typically write them (`run_with_cache` / `trace` compute the logits too) and
stopped before the LM head (a `StopAtLayerException` hook on `ln_final.hook_in` /
`tracer.stop()`); "floor + LM head" shows what the logits cost.

Rerun (CPU; add `--device cuda` on a GPU machine, `--model-config pythia-160m` etc. for other sizes):

    python -m benchmarks.capture                      # standard: pythia-70m, 128 prompts <= 128 tokens
    python -m benchmarks.capture --sets summary,resid --seq 1024 --n-prompts 32 --batch-size 4 --goals ""
    python -m benchmarks.capture --quick --no-record  # smoke test, ~2 minutes

{columns}
<!-- summary rows end -->
"""
COLUMNS = (
    "date (UTC)",
    "device",
    "model",
    "prompts x tokens",
    "resid x floor",
    "summary x floor",
    "attn x floor",
    "min speed-up over TL / nnsight (resid, attn, summary)",
    "memory 10x prompts",
    "HDF5 / raw write",
    "retrieval fast / reference",
    "command",
)
HEADER = HEADER.format(columns="| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|")
MARKER = "<!-- summary rows end -->"


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import h5py
    import numpy
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for mod, dist in (("nnsight", "nnsight"), ("transformer_lens", "transformer-lens")):
        try:
            info[mod] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[mod] = "not installed"
    for line in _cmd(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            info["cpu"] = line.split(":", 1)[1].strip()
    try:
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    head = _cmd(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"])
    dirty = _cmd(
        [
            "git",
            "-C",
            str(Path(__file__).resolve().parent.parent),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]
    )
    # a copy of the tree without .git (a remote GPU machine) passes its commit in the environment
    info["commit"] = os.environ.get("SCALELENS_COMMIT") or (head + ("+dirty" if dirty else ""))
    return info


def loadavg() -> str:
    """The 1/5/15-minute load average (other jobs on the machine skew wall times)."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def record(path: Path, summary_row: str, section: str) -> None:
    """Append ``summary_row`` to the summary table and ``section`` at the end of ``path``."""
    text = path.read_text() if path.exists() else HEADER
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + HEADER
    text = text.replace(MARKER, summary_row.rstrip("\n") + "\n" + MARKER, 1)
    text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written (a directory, or no writable directory to hold it); None: it can."""
    if path.is_dir():
        return "is a directory; give a file path"
    parent = path.parent
    if not parent.is_dir():
        return f"its directory {parent} does not exist; create it first"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its directory {parent} is not writable"
    return None


def check_outputs(ap: argparse.ArgumentParser, outputs: dict[str, Path | None]) -> None:
    """``ap.error`` (one line, exit 2) for the first output flag whose path cannot be written.

    Run before the measurement, so a typo in ``--json`` does not cost the whole run.
    """
    for flag, path in outputs.items():
        problem = output_problem(path) if path is not None else None
        if problem:
            ap.error(f"{flag} {path}: {problem}")


def run_main(main: Callable[[], int], name: str) -> int:
    """``main()``, with SIGTERM (``timeout``'s stop) raised like Ctrl-C so its cleanup runs.

    A benchmark's ``finally`` blocks then remove its temporary models and captures (SIGTERM's
    default action skipped them, leaving hundreds of MB per cut-off run). Returns ``main``'s
    exit code, or 143 after one line on stderr when SIGTERM cut it off.
    """
    from scalelens.cli import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return main()
    except Terminated:
        print(f"{name}: cut off (SIGTERM); its temporary files were removed", file=sys.stderr)
        return 143
