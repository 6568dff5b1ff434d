"""Rotary scalings whose frequencies depend on the longest position of the whole forward pass.

transformers picks some rotary frequencies per forward pass, not per sequence: ``longrope``
(Phi-3, some Llama-family checkpoints) uses its long factors for every row once the batch's
largest position id reaches ``original_max_position_embeddings``, and ``dynamic`` NTK scaling
stretches the base with the batch's length once it passes ``max_position_embeddings``. A short
prompt batched with a long one would then be captured unlike the same prompt alone.
:func:`length_classes` says which prompts may share a batch so that each gets what it would
get alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _rope_parameters(model: Any) -> list[dict[str, Any]]:
    """The text model's rope parameter dicts (one, or one per layer type as in Gemma 3)."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = getattr(text, "rope_parameters", None)
    if not isinstance(params, dict):
        return []
    if "rope_type" in params:
        return [params]
    return [p for p in params.values() if isinstance(p, dict)]


def longrope_limits(model: Any) -> tuple[int, ...]:
    """Lengths past which a ``longrope`` model switches every row to its long factors (sorted)."""
    limits = {int(p["original_max_position_embeddings"]) for p in _rope_parameters(model)
              if p.get("rope_type") == "longrope" and p.get("original_max_position_embeddings")}
    return tuple(sorted(limits))


def dynamic_limit(model: Any) -> int | None:
    """Length past which ``dynamic`` NTK rope rescales with the batch's exact length, or None."""
    if not any("dynamic" in str(p.get("rope_type", "")) for p in _rope_parameters(model)):
        return None
    text = model.config.get_text_config()
    return int(getattr(text, "max_position_embeddings", 0) or 0) or None


def length_classes(model: Any, lengths: np.ndarray) -> np.ndarray:
    """A class per prompt of ``lengths`` tokens: prompts of one class may share a forward pass.

    Right-padded rows all take positions ``0 .. width - 1``, so a batch's rotary frequencies
    follow its longest prompt. Prompts on one side of every longrope limit get the same
    frequencies together as alone; past a dynamic limit only prompts of equal length do.
    A model with neither puts every prompt in class 0.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    classes = np.zeros(lens.shape, dtype=np.int64)
    limits = longrope_limits(model)
    if limits:
        classes = np.searchsorted(np.array(limits), lens, side="left").astype(np.int64)
    cap = dynamic_limit(model)
    if cap is not None:  # past it each length is its own class, apart from the longrope classes
        classes = np.where(lens > cap, lens * (len(limits) + 1) + classes, classes)
    return classes


def batch_ranges(classes: np.ndarray, start: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` batches from prompt ``start`` on, in prompt order.

    Each holds at most ``batch_size`` prompts, all of one class (see :func:`length_classes`):
    a batch ends early where the class changes, so prompts stay in order and a resumed run
    may start anywhere.
    """
    n = len(classes)
    out = []
    while start < n:
        stop = min(n, start + batch_size)
        change = np.flatnonzero(classes[start:stop] != classes[start])
        if change.size:
            stop = start + int(change[0])
        out.append((start, stop))
        start = stop
    return out


def prompt_batches(model: Any, lengths: np.ndarray, batch_size: int, start: int = 0) -> list[tuple[int, int]]:
    """Batches of prompts ``start`` .. end for ``model``: :func:`batch_ranges` of their classes."""
    return batch_ranges(length_classes(model, lengths), start, batch_size)
