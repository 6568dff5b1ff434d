"""Train the sizes of a suite, in this process or in parallel single-threaded subprocesses.

Small models cannot use two CPU threads well (and degrade badly when other
processes compete for the cores), so on CPU each size trains single-threaded and
sizes run in parallel worker subprocesses, largest first. Results do not depend on
the number of workers: each size seeds its own init and reads the same batches.
"""

from __future__ import annotations

import json
import os
import pickle
import queue as queue_mod
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from ..errors import ScalelensError
from ..progress import progress_bar
from .manifest import staged_dir, write_json_atomic
from .params import count_parameters
from .quiet import quiet_hf_progress
from .train import TrainConfig, eval_loss, init_model, train_model

SIZE_RECORD = "size.json"
CHECKPOINT_RECORD = "scalelens_checkpoint.json"


@dataclass
class SizeJob:
    """Everything needed to train and checkpoint one size (picklable).

    Attributes:
        size_dir: ``<suite>/<size>``; wiped and rewritten.
        name: Size name.
        config: ``GPTNeoXConfig.to_dict()`` of the model.
        train_chunks: ``[n, seq_len]`` training token ids.
        valid_chunks: ``[m, seq_len]`` held-out token ids.
        tokenizer_dir: Tokenizer copied into every checkpoint.
        train: Optimisation settings.
        steps: Checkpoint steps.
        settings_hash: Hash of the suite settings, stored with the outputs.
        device: Torch device.
        threads: Torch intra-op threads while training.
    """

    size_dir: Path
    name: str
    config: dict[str, Any]
    train_chunks: torch.Tensor
    valid_chunks: torch.Tensor
    tokenizer_dir: Path
    train: TrainConfig
    steps: list[int]
    settings_hash: str
    device: str
    threads: int


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_size(job: SizeJob, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Train one size from scratch, saving every checkpoint; return its manifest record."""
    shutil.rmtree(job.size_dir, ignore_errors=True)
    job.size_dir.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(str(job.tokenizer_dir))
    config = GPTNeoXConfig.from_dict(job.config)
    checkpoints: dict[str, dict[str, Any]] = {}

    def save(step: int, model: GPTNeoXForCausalLM, loss: float | None) -> None:
        info = _checkpoint_info(job, step, model, loss)
        save_checkpoint(job.size_dir / f"step{step}", model, tokenizer, info)
        checkpoints[str(step)] = {k: info[k] for k in ("train_loss", "valid_loss", "tokens_seen")}

    started, cpu_started = time.perf_counter(), time.process_time()
    with torch_threads(job.threads), quiet_hf_progress():
        model = init_model(config, job.train.seed, job.device)
        result = train_model(model, job.train_chunks, job.train, set(job.steps), save, progress)
    record = _size_record(job, config, result.losses, result.token_stream_sha256, checkpoints)
    record["train_seconds"] = round(time.perf_counter() - started, 2)
    record["train_cpu_seconds"] = round(time.process_time() - cpu_started, 2)
    write_json_atomic(job.size_dir / SIZE_RECORD, record)
    return record


def _checkpoint_info(
    job: SizeJob, step: int, model: GPTNeoXForCausalLM, loss: float | None
) -> dict[str, Any]:
    return {
        "size": job.name,
        "step": step,
        "train_loss": loss,
        "valid_loss": eval_loss(model, job.valid_chunks, job.train.batch_size),
        "tokens_seen": step * job.train.batch_size * job.train.seq_len,
        "settings_hash": job.settings_hash,
    }


def _size_record(
    job: SizeJob,
    config: GPTNeoXConfig,
    losses: list[float],
    stream_hash: str,
    checkpoints: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    total, non_emb = count_parameters(config)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "settings_hash": job.settings_hash,
        "shape": f"{config.num_hidden_layers}x{config.hidden_size}x{config.num_attention_heads}",
        "config": config.to_diff_dict(),
        "n_params": total,
        "n_params_non_embedding": non_emb,
        "final_loss": checkpoints[str(job.steps[-1])]["valid_loss"],
        "final_train_loss": sum(tail) / len(tail),
        "token_stream_sha256": stream_hash,
        "checkpoints": checkpoints,
    }


def save_checkpoint(final: Path, model: GPTNeoXForCausalLM, tokenizer: Any, info: dict[str, Any]) -> None:
    """Save to a hidden temp directory, then rename: no half-written checkpoint is visible."""
    with staged_dir(final) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / CHECKPOINT_RECORD).write_text(json.dumps(info, indent=2) + "\n")


def run_jobs(jobs: list[SizeJob], workers: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Train every job (largest first when parallel) and return records keyed by size name."""
    bars = {
        job.name: progress_bar(
            total=job.train.total_steps,
            desc=f"suite {job.name}",
            unit="step",
            position=i,
            disable=not progress,
            leave=True,
        )
        for i, job in enumerate(jobs)
    }
    try:
        if workers <= 1:
            return {job.name: _train_one(job, bars[job.name]) for job in jobs}
        return _run_parallel(jobs, workers, bars)
    finally:
        for bar in bars.values():
            bar.close()


def _train_one(job: SizeJob, bar: Any) -> dict[str, Any]:
    """Train one size in this process, its bar timed from its own start and closed at its end."""
    bar.reset()  # elapsed time and rate count from this size's start, not the build's
    record = train_size(job, _ticker(bar))
    bar.close()  # its last line when it ends, not when the whole build does
    return record


def _ticker(bar: Any) -> Callable[[float], None]:
    def tick(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    return tick


def _run_parallel(jobs: list[SizeJob], workers: int, bars: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run jobs in ``python -m scalelens.models.suite_worker`` subprocesses, largest first.

    Subprocesses (not multiprocessing) so that a calling script needs no
    ``if __name__ == "__main__"`` guard and nothing re-imports it.
    """
    pending = sorted(jobs, key=_cost, reverse=True)
    running: dict[str, _Worker] = {}
    events: queue_mod.Queue[tuple[str, float]] = queue_mod.Queue()
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                bars[job.name].reset()  # timed from its own start, not the build's
                running[job.name] = _Worker(job, events)
            _drain(events, bars, timeout=0.2)
            for name in [n for n, w in running.items() if w.poll() is not None]:
                running.pop(name).finish()
                _drain(events, bars, timeout=0.0)  # its last steps, read before it exited
                bars[name].close()
        _drain(events, bars, timeout=0.0)
    finally:
        for worker in running.values():
            worker.kill()
        _remove_if_empty(jobs[0].size_dir.parent / ".jobs")
    return {job.name: json.loads((job.size_dir / SIZE_RECORD).read_text()) for job in jobs}


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


class _Worker:
    """One training subprocess: job pickled to disk, progress read from its stdout."""

    def __init__(self, job: SizeJob, events: queue_mod.Queue[tuple[str, float]]) -> None:
        self.name = job.name
        jobs_dir = job.size_dir.parent / ".jobs"
        jobs_dir.mkdir(exist_ok=True)
        self.job_file = jobs_dir / f"{job.name}.pkl"
        self.job_file.write_bytes(pickle.dumps(job))
        self.log_file = jobs_dir / f"{job.name}.log"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scalelens.models.suite_worker", str(self.job_file)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.reader.start()

    def _read(self, events: queue_mod.Queue[tuple[str, float]]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("loss "):
                events.put((self.name, float(line.split()[1])))

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish(self) -> None:
        """Raise if the worker failed; clean up its files otherwise."""
        self.reader.join()
        if self.proc.returncode != 0:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise ScalelensError(f"training size {self.name} failed ({tail[0]}); see {self.log_file}")
        self.job_file.unlink(missing_ok=True)
        self.log_file.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _cost(job: SizeJob) -> int:
    """Rough FLOPs per token: blocks plus unembedding."""
    width, cfg = int(job.config["hidden_size"]), job.config
    return 12 * width * width * int(cfg["num_hidden_layers"]) + width * int(cfg["vocab_size"])


def _drain(events: queue_mod.Queue[tuple[str, float]], bars: dict[str, Any], timeout: float) -> None:
    try:
        while True:
            name, loss = events.get(timeout=timeout) if timeout > 0 else events.get_nowait()
            _ticker(bars[name])(loss)
            timeout = 0.0
    except queue_mod.Empty:
        return
