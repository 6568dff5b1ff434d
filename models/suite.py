"""Build the mini Pythia-style suite: several sizes trained on one token stream, checkpointed.

Layout of a suite directory::

    <out>/manifest.json              written last, atomically (see ``manifest.Manifest``)
    <out>/build.json                 the settings an (unfinished) build is working towards
    <out>/tokenizer/                 HF fast tokenizer
    <out>/data/valid.txt             held-out documents
    <out>/<size>/step<N>/            HF checkpoint: config, safetensors, tokenizer,
                                     scalelens_checkpoint.json
    <out>/<size>/size.json           written once every step of that size is saved
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import transformers

from ..errors import ScalelensError
from ..textfiles import make_dirs
from .corpus import check_corpus_file
from .load import check_device_usable
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    write_json_atomic,
)
from .presets import SuitePreset, checkpoint_steps, get_preset, select_sizes
from .suite_data import TOKENIZER_DIR, VALID_TEXT, SuiteData, corpus_documents, prepare_data, split_documents
from .suite_train import SIZE_RECORD, SizeJob, run_jobs

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "SuiteSettingsMismatch",
    "build_suite",
    "checkpoint_steps",
    "default_suite_dir",
    "read_manifest",
]

BUILD_NAME = "build.json"


def default_suite_dir(preset: str = "default") -> Path:
    """Cache directory of a preset's suite: ``$SCALELENS_CACHE/suite-<preset>-v<format>``.

    ``SCALELENS_CACHE`` defaults to ``~/.cache/scalelens``.
    """
    base = os.environ.get("SCALELENS_CACHE") or Path.home() / ".cache" / "scalelens"
    return Path(base).expanduser() / f"suite-{preset}-v{FORMAT_VERSION}"


def build_suite(
    out_dir: str | Path,
    sizes: Sequence[str] | None = None,
    corpus_file: str | Path | None = None,
    steps: int | Sequence[int] | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    preset: str = "default",
    workers: int | None = None,
) -> Manifest:
    """Train (or reuse) a family of Pythia-shaped models on one token stream.

    Every size sees the same batches in the same order (seeded), and is saved at
    every checkpoint step as an HF directory ``<out>/<size>/step<N>``. A finished
    build with the same settings is returned without training; an interrupted one
    is completed (sizes without a ``size.json`` are retrained from scratch).

    Args:
        out_dir: Suite directory (created if missing).
        sizes: Size names of the preset or ``LAYERSxWIDTHxHEADS`` shapes; None: all
            (an empty list is refused).
        corpus_file: Train on this UTF-8 text (documents separated by blank lines)
            instead of the built-in synthetic corpus.
        steps: An int sets the number of training steps (checkpoint schedule scaled
            to it); a list sets the checkpoint steps (training runs to the largest).
        seed: Seed of the corpus, weight init and batch order.
        device: ``cpu`` or ``cuda``; default the preset's.
        progress: Show tqdm progress bars.
        preset: ``default`` (CPU, about 2 minutes on 2 cores), ``micro`` (seconds, for
            tests) or ``gpu``.
        workers: Parallel training processes on CPU (default: the preset's choice;
            results do not depend on it).

    Returns:
        The manifest of the finished suite.
    """
    resolved, ckpt_steps = _resolve(preset, sizes, steps, seed)
    if workers is not None:
        resolved = replace(resolved, workers=max(1, workers))
    dev = device or resolved.device
    check_device_usable(dev)
    out = Path(out_dir)
    settings = _settings(resolved, ckpt_steps, corpus_file)  # a bad corpus fails before anything exists
    if corpus_file:
        split_documents(corpus_documents(resolved, corpus_file), resolved.valid_fraction)
    _check_out(out)
    key = _hash(settings)
    if out.is_dir() and (done := _reusable(out, key)) is not None:
        return done  # finished: no lock to take, so a read-only copy of a suite serves too
    make_dirs(out)
    with _locked(out):
        done = _reusable(out, key)
        if done is not None:
            return done
        return _build(out, resolved, ckpt_steps, corpus_file, settings, key, dev, progress)


def _check_out(out: Path) -> None:
    """Refuse an --out that is (or lies under) a file, or a non-empty directory holding no suite.

    A build replaces the size directories it finds, so it must never adopt someone else's folder.
    """
    if out.exists() and not out.is_dir():
        raise ScalelensError(f"--out {out} is a file; give a directory for the suite")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # mkdir would fail with a bare "Not a directory"
        raise ScalelensError(f"--out {out} lies under {above}, which is a file; "
                             "give a directory for the suite")
    if out.is_dir() and not (out / BUILD_NAME).exists() and not (out / MANIFEST_NAME).exists():
        if any(p.name != ".lock" for p in out.iterdir()):
            raise ScalelensError(f"{out} is not empty and holds no suite; pass a new or empty --out")


def _resolve(
    preset: str, sizes: Sequence[str] | None, steps: int | Sequence[int] | None, seed: int
) -> tuple[SuitePreset, list[int]]:
    if sizes is not None and not list(sizes):  # as sweep --sizes "" is: not taken for "all sizes"
        raise ScalelensError("--sizes is empty; give size names or LAYERSxWIDTHxHEADS shapes, "
                             "or leave it out for all")
    base = select_sizes(get_preset(preset).with_seed(seed), list(sizes) if sizes is not None else None)
    if steps is None:
        return base, base.steps()
    if isinstance(steps, int):
        every = max(1, steps // max(1, base.train.total_steps // base.checkpoint_every))
        base = replace(base, train=replace(base.train, total_steps=steps), checkpoint_every=every)
        return base, base.steps()
    wanted = sorted({int(s) for s in steps})
    if not wanted or wanted[0] < 0 or wanted[-1] < 1:
        raise ScalelensError("checkpoint steps must be >= 0 with at least one > 0")
    return replace(base, train=replace(base.train, total_steps=wanted[-1])), wanted


def _settings(preset: SuitePreset, ckpt_steps: list[int], corpus_file: str | Path | None) -> dict[str, Any]:
    source: dict[str, Any] = {"kind": "builtin"}
    if corpus_file:
        path = check_corpus_file(corpus_file)
        source = {"kind": "file", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        "format_version": FORMAT_VERSION,
        "preset": preset.to_dict(),
        "steps": ckpt_steps,
        "corpus_source": source,
    }


def _hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the suite directory (one builder at a time)."""
    with open(out / ".lock", "a") as fh:  # "a": never truncates or touches the file
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class SuiteSettingsMismatch(ScalelensError):
    """The directory holds a suite (finished or partial) built with other settings.

    Catch it to decide what to do with a cache you own (e.g. delete and rebuild).
    """


def _mismatch(out: Path, what: str) -> SuiteSettingsMismatch:
    return SuiteSettingsMismatch(
        f"{out} holds a suite {what} with other settings; pass another --out or delete {out}"
    )


def _reusable(out: Path, key: str) -> Manifest | None:
    """The finished manifest if it matches ``key``; raise if ``out`` holds another suite."""
    if (out / MANIFEST_NAME).is_file():
        manifest = read_manifest(out)
        if manifest.settings_hash != key:
            raise _mismatch(out, "built")
        if all(p.is_dir() for _, _, p in manifest.checkpoints()):
            return manifest
    build = out / BUILD_NAME
    if build.is_file() and json.loads(build.read_text()).get("settings_hash") != key:
        raise _mismatch(out, "partly built")
    return None


def _build(
    out: Path,
    preset: SuitePreset,
    ckpt_steps: list[int],
    corpus_file: str | Path | None,
    settings: dict[str, Any],
    key: str,
    device: str,
    progress: bool,
) -> Manifest:
    start = time.perf_counter()
    write_json_atomic(out / BUILD_NAME, {"settings_hash": key, "settings": settings})
    data = prepare_data(out, preset, corpus_file)
    prep_seconds = round(time.perf_counter() - start, 2)
    configs = preset.size_configs()
    done = {n: r for n in configs if (r := _size_record(out / n, key, ckpt_steps)) is not None}
    todo = [n for n in configs if n not in done]
    workers, threads = _parallelism(preset, device, len(todo))
    jobs = [
        SizeJob(
            out / n,
            n,
            configs[n].to_dict(),
            data.train,
            data.valid,
            out / TOKENIZER_DIR,
            preset.train,
            ckpt_steps,
            key,
            device,
            threads,
        )
        for n in todo
    ]
    trained = run_jobs(jobs, workers, progress)
    models = {n: done[n] if n in done else trained[n] for n in configs}
    manifest = _manifest(out, preset, ckpt_steps, settings, key, data, models)
    build = {
        "device": device,
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 2),
        "data_seconds": prep_seconds,
        **_versions(),
    }
    manifest = replace(manifest, build=build)
    write_json_atomic(out / MANIFEST_NAME, manifest.to_dict())
    shutil.rmtree(out / ".jobs", ignore_errors=True)  # scratch of parallel workers an interrupt left
    return manifest


def _parallelism(preset: SuitePreset, device: str, n_jobs: int) -> tuple[int, int]:
    """(worker processes, torch threads each).

    On CPU: one worker per core (capped by the number of sizes), or the preset's fixed
    worker count, with one thread each always, so a size's weights do not depend on
    the machine's cores or on how many sizes an interrupted build had left (threads
    change the order of floating-point sums). On GPU: one in-process worker.
    """
    cores = os.cpu_count() or 1
    if device != "cpu":
        return 1, cores
    workers = preset.workers if preset.workers is not None else cores
    return max(1, min(workers, n_jobs)), 1


def _size_record(size_dir: Path, key: str, ckpt_steps: list[int]) -> dict[str, Any] | None:
    """A finished size's record, or None if it must be (re)trained."""
    path = size_dir / SIZE_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    complete = all((size_dir / f"step{s}" / "config.json").is_file() for s in ckpt_steps)
    return record if record.get("settings_hash") == key and complete else None


def _manifest(
    out: Path,
    preset: SuitePreset,
    ckpt_steps: list[int],
    settings: dict[str, Any],
    key: str,
    data: SuiteData,
    models: dict[str, dict[str, Any]],
) -> Manifest:
    cfg = preset.train
    training = {
        **cfg.to_dict(),
        "optimizer": "AdamW",
        "schedule": "linear warmup then cosine decay to min_lr_ratio * lr",
        "tokens_per_step": cfg.batch_size * cfg.seq_len,
        "dtype": "float32",
        "attn_implementation": "sdpa",
    }
    return Manifest(
        root=out,
        format_version=FORMAT_VERSION,
        name=f"mini-pythia-{preset.name}",
        preset=preset.name,
        settings_hash=key,
        settings=settings,
        sizes=list(models),
        steps=ckpt_steps,
        tokenizer=TOKENIZER_DIR,
        valid_text=VALID_TEXT,
        corpus=data.corpus,
        training=training,
        models={k: {kk: vv for kk, vv in v.items() if kk != "settings_hash"} for k, v in models.items()},
    )


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
