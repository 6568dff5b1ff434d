"""Machine/version description and the RESULTS.md ledger (new runs appended, old rows kept)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEADER = """# Benchmark results

Written by `python -m benchmarks.capture` (see `benchmarks/capture.py` for what each pipeline
does). Every run appends one row to the summary and one section below it; older rows are kept.
Ratios are measured within ONE process run: each pipeline runs beside the floor in the same
round, rounds rotate the order, and a ratio is the median over rounds of the per-round ratio.

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
    info["commit"] = head + ("+dirty" if dirty else "")
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
