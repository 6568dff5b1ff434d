"""Pseudo-modality embedding blocks: their content, and ``inputs_embeds`` for a capture batch.

A text-only model has no second modality, so text dominance (Wu et al. 2025) builds
one: a document is turned into a block of "soft tokens", vectors fed through
``inputs_embeds`` the way a VLM's projector feeds image tokens, and the attention
of the answer tokens to that block (O) is compared with the attention to the text
prompt (T). Two kinds of content, both derived from the model's own input
embeddings ``E`` (``model.get_input_embeddings()`` applied to the document's ids):

* ``pooled`` (default): row 0 is ``E[t_0]`` exactly (the document's first token, e.g.
  BOS, so the first position, the attention sink, is what text mode has there);
  every further row is the mean of ``pool`` consecutive token embeddings of
  ``t_1 ..`` (the last chunk may be shorter), rescaled to the mean norm of the
  vectors it pools, so soft tokens sit at the norm of real tokens rather than the
  shrunken norm of a mean. Deterministic; with ``pool=1`` the block equals the
  document's own token embeddings exactly.
* ``random``: the same number of rows; row 0 as above, the others independent
  Gaussian directions scaled to the mean norm of ``E[t_1 ..]``, drawn from
  ``numpy.random.default_rng(seed)``: a content-free control at the same scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from scalelens.errors import ScalelensError
from scalelens.probes.prompts import EmbedSpan, TokenizedPrompts

SOFT_TOKENS = ("pooled", "random")


def soft_token_count(n_tokens: int, pool: int) -> int:
    """Rows of a block made from ``n_tokens`` document tokens: ``1 + ceil((n - 1) / pool)``."""
    if n_tokens < 1 or pool < 1:
        raise ScalelensError(f"need >= 1 token and pool >= 1, got {n_tokens} tokens, pool {pool}")
    return 1 + -(-(n_tokens - 1) // pool)


def token_embeddings(model: Any, ids: list[int] | np.ndarray) -> np.ndarray:
    """``model.get_input_embeddings()`` of ``ids`` as a float32 ``(n, width)`` host array."""
    layer = model.get_input_embeddings()
    device = next(layer.parameters()).device
    with torch.inference_mode():
        out = layer(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)[None])[0]
    return out.float().cpu().numpy()


def _mean_norm(rows: np.ndarray) -> np.float64:
    return np.float64(np.linalg.norm(rows.astype(np.float64), axis=1).mean())


def pooled_soft_tokens(emb: np.ndarray, pool: int) -> np.ndarray:
    """Row 0 = ``emb[0]``; then norm-matched means of ``pool``-token chunks of ``emb[1:]``."""
    rows = [emb[0]]
    for i in range(1, len(emb), pool):
        chunk = emb[i:i + pool]
        if len(chunk) == 1:
            rows.append(chunk[0])
            continue
        mean = chunk.astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(mean)
        rows.append(mean * (_mean_norm(chunk) / norm) if norm > 0 else mean)
    return np.stack(rows).astype(emb.dtype)


def random_soft_tokens(emb: np.ndarray, pool: int, seed: int) -> np.ndarray:
    """Row 0 = ``emb[0]``; then seeded Gaussian directions at the mean norm of ``emb[1:]``."""
    n = soft_token_count(len(emb), pool) - 1
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, emb.shape[1]))
    scale = _mean_norm(emb[1:]) if len(emb) > 1 else _mean_norm(emb[:1])
    noise *= scale / np.linalg.norm(noise, axis=1, keepdims=True)
    return np.concatenate([emb[:1], noise.astype(emb.dtype)])


def soft_tokens(emb: np.ndarray, kind: str = "pooled", pool: int = 4, seed: int = 0) -> np.ndarray:
    """A pseudo-modality block from token embeddings ``emb`` (see the module docstring)."""
    if kind not in SOFT_TOKENS:
        raise ScalelensError(f"unknown soft-token kind {kind!r}; choose from {', '.join(SOFT_TOKENS)}")
    if pool < 1:
        raise ScalelensError(f"pool must be >= 1, got {pool}")
    if emb.ndim != 2 or len(emb) < 1:
        raise ScalelensError(f"token embeddings must be (n >= 1, width), got shape {emb.shape}")
    return pooled_soft_tokens(emb, pool) if kind == "pooled" else random_soft_tokens(emb, pool, seed)


def embedding_width(model: Any) -> int:
    """Width of the vectors ``model`` accepts as ``inputs_embeds``."""
    layer = model.get_input_embeddings()
    width = getattr(layer, "embedding_dim", None)
    return int(width) if width is not None else int(layer.weight.shape[1])


def check_blocks(tok: TokenizedPrompts, width: int) -> None:
    """Raise one clear error if a block's width is not the model's embedding width."""
    for span in tok.embeds:
        if span.block.width != width:
            label = tok.labels[int(tok.segments[span.prompt, span.start])]
            raise ScalelensError(
                f"prompt index {span.prompt}: embedding block {label!r} is {span.block.width} wide "
                f"({span.block.n_vectors}x{span.block.width}), but the model's input embeddings are "
                f"{width} wide; give (n_vectors, {width}) vectors")


def _upload(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array to ``device``; on CUDA through pinned memory, without blocking the host."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def batch_inputs_embeds(model: Any, ids: torch.Tensor, spans: list[EmbedSpan],
                        first: int) -> torch.Tensor | None:
    """``inputs_embeds`` for a batch whose first prompt has index ``first``; None without blocks.

    Every position holds the model's embedding of its id (exactly what the model would
    compute from ``ids``) except the blocks' positions, which hold the blocks' rows cast
    to the embedding dtype. All blocks go to the device in one (pinned, non-blocking on
    CUDA) copy and are written with index ranges known on the host: no host sync.
    """
    if not spans:
        return None
    rows = np.concatenate([s.block.array for s in spans])
    with torch.inference_mode():
        x = model.get_input_embeddings()(ids)
        vectors = _upload(rows, x.device).to(x.dtype)
        offset = 0
        for span in spans:
            n = span.block.n_vectors
            x[span.prompt - first, span.start:span.start + n] = vectors[offset:offset + n]
            offset += n
    return x
