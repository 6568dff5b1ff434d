"""HDF5 write speed of scalelens's writer against a raw sequential write to the same disk.

Both sides write the same bytes, batch by batch, into a new file in the same directory,
and both end with ``fsync`` of that file, so both are timed to the disk, not to the page
cache. The HDF5 side is the whole writer: create the file with its preallocated
datasets, ``CaptureWriter.write`` per batch (data, flush, progress, flush) through the
same ``BackgroundWriter`` thread a capture uses, ``finish``, then ``fsync``. The raw side
is ``open(path, "wb")``, ``write`` per batch, ``flush``, ``fsync``. The two alternate
over ``repeats`` rounds; speeds are medians.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.axes import Axis
from scalelens.cache.writer import BackgroundWriter, CaptureWriter, FileIdentity
from scalelens.probes.prompts import TokenizedPrompts
from scalelens.probes.reduce import DatasetSpec


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_hdf5(path: Path, batch: np.ndarray, n: int, rows: int) -> None:
    seq = batch.shape[2]
    tokens = TokenizedPrompts(
        np.zeros((n, seq), np.int32), np.zeros((n, seq), np.int16), np.full(n, seq, np.int32), ("text",)
    )
    spec = DatasetSpec(
        "values", (n, *batch.shape[1:]), str(batch.dtype), (Axis.PROMPT, Axis.LAYER, Axis.SEQ, Axis.D_MODEL)
    )
    identity = FileIdentity({"name": "disk-benchmark"}, "[]", tokens.fingerprint(), {"batch_size": rows})
    writer = CaptureWriter.open(path, identity, tokens, {"resid": [spec]}, rows, overwrite=True)
    try:
        with BackgroundWriter(writer) as background:
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                background.submit(start, {"resid": {"values": batch[: stop - start]}})
        writer.finish()
    finally:
        writer.close()
    _fsync(path)


def _write_raw(path: Path, batch: np.ndarray, n: int, rows: int) -> None:
    with open(path, "wb") as f:
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            f.write(batch[: stop - start].data)
        f.flush()
        os.fsync(f.fileno())


def write_speed(
    directory: Path, per_prompt: tuple[int, ...], rows: int, total_mb: float, repeats: int = 3
) -> dict[str, Any]:
    """Median MB/s of the HDF5 writer and of a raw write of the same batches.

    Args:
        directory: Where both files go (the disk under test).
        per_prompt: One prompt's resid-like array shape (layer, seq, d_model), float16.
        rows: Prompts per batch (one HDF5 chunk row-block per batch).
        total_mb: Bytes to write per file, in MiB.
        repeats: Alternating rounds.
    """
    batch = np.random.default_rng(0).standard_normal((rows, *per_prompt)).astype(np.float16)
    prompt_bytes = batch[0].nbytes
    n = max(rows, int(total_mb * 2**20 // prompt_bytes))
    size_mb = n * prompt_bytes / 2**20
    speeds: dict[str, list[float]] = {"hdf5": [], "raw": []}
    paths = {"hdf5": directory / "disk_benchmark.h5", "raw": directory / "disk_benchmark.bin"}
    runners = {"hdf5": _write_hdf5, "raw": _write_raw}
    try:
        for r in range(repeats):
            order = ("hdf5", "raw") if r % 2 == 0 else ("raw", "hdf5")
            for kind in order:
                paths[kind].unlink(missing_ok=True)
                t0 = time.perf_counter()
                runners[kind](paths[kind], batch, n, rows)
                speeds[kind].append(size_mb / (time.perf_counter() - t0))
                paths[kind].unlink(missing_ok=True)
    finally:
        for p in paths.values():
            p.unlink(missing_ok=True)
    hdf5, raw = statistics.median(speeds["hdf5"]), statistics.median(speeds["raw"])
    return {
        "size_mb": size_mb,
        "batch_mb": batch.nbytes / 2**20,
        "hdf5_mb_s": hdf5,
        "raw_mb_s": raw,
        "ratio": hdf5 / raw,
        "hdf5_all": speeds["hdf5"],
        "raw_all": speeds["raw"],
        "fsync": "both (fsync of the file after the last write)",
    }
