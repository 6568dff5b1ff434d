"""Training loop for one suite member: same batches in the same order for every size."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from ..errors import ScalelensError

SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds ``torch.manual_seed`` takes; another one failed mid-build (an internal error)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every size of a suite.

    Attributes:
        total_steps: Optimizer updates per model.
        batch_size: Sequences per update.
        seq_len: Tokens per sequence (also the models' ``max_position_embeddings``).
        lr: Peak learning rate.
        min_lr_ratio: Final learning rate as a fraction of ``lr`` (cosine decay).
        warmup_steps: Linear warm-up length.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        grad_clip: Global gradient-norm clip.
        seed: Seed for weight init (``torch.manual_seed``) and the batch order.
    """

    total_steps: int
    batch_size: int
    seq_len: int
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.total_steps, self.batch_size, self.seq_len) < 1:
            raise ScalelensError("total_steps, batch_size and seq_len must be >= 1")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ScalelensError("lr must be > 0 and warmup_steps >= 0; fix the training settings")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:  # torch.manual_seed's range
            raise ScalelensError(f"seed {self.seed} is out of range; use a seed (--seed) from 0 to "
                                 f"{SEED_RANGE[1]}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for update ``step`` (0-based): linear warm-up then cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def chunk_stream(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """Cut a token stream into ``[n_chunks, seq_len]`` (the tail is dropped)."""
    n = len(stream) // seq_len
    if n < 1:
        raise ScalelensError(
            f"corpus has {len(stream)} tokens, fewer than one sequence of {seq_len}; use more text"
        )
    flat = torch.from_numpy(np.ascontiguousarray(stream[: n * seq_len], dtype=np.int64))
    return flat.view(n, seq_len)


def batch_order(n_chunks: int, cfg: TrainConfig) -> Iterator[torch.Tensor]:
    """Yield ``cfg.total_steps`` index batches: shuffled epochs from a seeded generator."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(cfg.total_steps):
        while order.numel() < cfg.batch_size:
            order = torch.cat([order, torch.randperm(n_chunks, generator=gen)])
        yield order[: cfg.batch_size]
        order = order[cfg.batch_size :]


@dataclass
class TrainResult:
    """What training one model produced.

    Attributes:
        losses: Training loss of every update, in order.
        token_stream_sha256: Hash of every batch fed, in order (equal across sizes).
    """

    losses: list[float]
    token_stream_sha256: str


CheckpointFn = Callable[[int, GPTNeoXForCausalLM, float | None], None]


def init_model(config: GPTNeoXConfig, seed: int, device: str) -> GPTNeoXForCausalLM:
    """Build a randomly initialised model deterministically from ``seed``."""
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to oddly
    return model


def train_model(
    model: GPTNeoXForCausalLM,
    chunks: torch.Tensor,
    cfg: TrainConfig,
    save_steps: set[int],
    on_checkpoint: CheckpointFn,
    progress: Callable[[float], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``chunks`` and call ``on_checkpoint`` at every step in ``save_steps``.

    Args:
        model: Freshly initialised model (already on its device).
        chunks: ``[n_chunks, seq_len]`` token ids (CPU).
        cfg: Optimisation settings.
        save_steps: Update counts after which to checkpoint (0 = before training).
        on_checkpoint: Called as ``on_checkpoint(step, model, last_loss)``.
        progress: Called with the loss after every update.

    Returns:
        Per-update losses and the hash of the batches fed.
    """
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    digest = hashlib.sha256()
    losses: list[float] = []
    if 0 in save_steps:
        on_checkpoint(0, model, None)
    model.train()
    for step, idx in enumerate(batch_order(chunks.shape[0], cfg), start=1):
        batch = chunks[idx]
        digest.update(batch.numpy().tobytes())
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step - 1)
        loss = model(input_ids=batch.to(device), labels=batch.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(losses[-1])
        if step in save_steps:
            model.eval()
            on_checkpoint(step, model, losses[-1])
            model.train()
    model.eval()
    return TrainResult(losses=losses, token_stream_sha256=digest.hexdigest())


@torch.no_grad()
def eval_loss(model: GPTNeoXForCausalLM, chunks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss of ``model`` over ``chunks`` (held-out text)."""
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start : start + batch_size].to(device)
        total += model(input_ids=batch, labels=batch).loss.item() * batch.shape[0]
        count += batch.shape[0]
    return total / max(1, count)
