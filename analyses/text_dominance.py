"""Text dominance of attention (Wu et al. 2025, "When Language Overrules").

The keys of O may be tokens (a document) or a pseudo-modality, a block of vectors
fed through ``inputs_embeds`` (see :mod:`scalelens.measure.dominance`); this module
sees only the group labels, so both are measured the same way.

Array contract:
    ``attn``: ``(prompt, layer, head, query, kv_seq)`` float, attention
    probabilities from the answer / generated query tokens to every key;
    ``query_valid``: ``(prompt, query)`` bool, which query rows are real (rows
    are padded when prompts have different numbers of answer tokens);
    ``key_groups``: ``(prompt, kv_seq)`` int, a group label per key;
    ``group_kinds``: mapping from every label used to ``"text"``, ``"other"``,
    ``"sink"`` or ``"ignore"`` (padding, answer tokens, anything not measured).

Definitions, per layer, with the mass on a group summed over its keys and then
averaged with equal weight over heads and over all valid (prompt, query) rows:
    ``A_T`` = mass on text keys, ``A_O`` = mass on other keys,
    ``A_sink`` = mass on sink keys (reported, never part of T or O);
    ``|T|``, ``|O|`` = key counts per prompt, averaged over the same rows (so a
    prompt counts in proportion to its valid query rows);
    ``MDI = (A_T / |T|) / (A_O / |O|)``;
    ``AEI_T = [A_T / (A_T + A_O)] / [|T| / (|T| + |O|)]``, ``AEI_O`` symmetric;
    hence ``MDI = AEI_T / AEI_O`` exactly.

The first-token attention sink: with ``first_token_sink=True`` (default) the
first key of each prompt that is not padding (a negative label; position 0 for a
right-padded prompt) is treated as ``"sink"`` whatever its kind, an ignored one
included (BOS inside a chat template), so that no text or other key stands in for it.

Layer groups: early / middle / late are ``numpy.array_split(range(L), 3)``
(earlier groups get the extra layers, e.g. 32 -> 11, 11, 10) and ``all`` is
every layer; a group's ``A_*`` are the means of its layers' values and its
indices are computed from those means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelens.analyses._common import as_array, check_shape, jsonable, layer_thirds
from scalelens.errors import ScalelensError

KINDS = ("text", "other", "sink", "ignore")
# Bytes of attention rows (every layer as stored, one as float64) reduced at once.
CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TextDominanceResult:
    """Attention shares and dominance indices per layer and layer group.

    Attributes:
        per_layer: One dict per layer: ``layer, a_text, a_other, a_sink, mdi,
            aei_text, aei_other``.
        groups: ``early``, ``middle``, ``late`` (when there are >= 3 layers) and
            ``all``: dicts with ``layers`` and the same statistics.
        n_text: ``|T|``, key count averaged over valid query rows.
        n_other: ``|O|``, likewise.
        n_rows: Valid (prompt, query) rows averaged over.
        n_prompts: Prompts with at least one valid row.
        first_token_sink: Whether the first key was moved to the sink group.
    """

    per_layer: list[dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    n_text: float
    n_other: float
    n_rows: int
    n_prompts: int
    first_token_sink: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (inf/NaN become None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def dominance_indices(a_text: float, a_other: float, n_text: float, n_other: float) -> dict[str, float]:
    """MDI and AEI from attention masses and group sizes.

    Args:
        a_text: Attention mass on text keys, ``A_T``.
        a_other: Attention mass on other keys, ``A_O``.
        n_text: Number of text keys, ``|T|`` (> 0).
        n_other: Number of other keys, ``|O|`` (> 0).

    Returns:
        ``{"mdi", "aei_text", "aei_other"}``; inf or NaN where a mass is zero.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        mdi = np.float64(a_text / n_text) / np.float64(a_other / n_other)
        share_t = np.float64(a_text) / np.float64(a_text + a_other)
        size_t = n_text / (n_text + n_other)
        aei_t = share_t / size_t
        aei_o = (1.0 - share_t) / (1.0 - size_t)
    return {"mdi": float(mdi), "aei_text": float(aei_t), "aei_other": float(aei_o)}


def _kind_codes(key_groups: np.ndarray, group_kinds: Mapping[int, str]) -> np.ndarray:
    bad = {k: v for k, v in group_kinds.items() if v not in KINDS}
    if bad:
        raise ScalelensError(f"group kinds must be one of {KINDS}, got {bad}")
    labels = np.unique(key_groups)
    missing = sorted(int(x) for x in labels if int(x) not in group_kinds)
    if missing:
        raise ScalelensError(f"key group labels {missing} have no kind in group_kinds")
    codes = np.empty(key_groups.shape, dtype=np.int64)
    for label in labels:
        codes[key_groups == label] = KINDS.index(group_kinds[int(label)])
    return codes


def _move_first_to_sink(codes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each prompt's first key that is not padding (negative label) becomes the sink."""
    out = codes.copy()
    for p in range(out.shape[0]):
        real = np.flatnonzero(groups[p] >= 0)
        if real.size:
            out[p, real[0]] = KINDS.index("sink")
    return out


def _check(attn: Any, query_valid: Any, key_groups: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    a = attn if _lazy(attn) else as_array("attn", attn, 5, "f")
    if a.ndim != 5:
        raise ScalelensError(f"attn must have 5 dimensions, got shape {a.shape}")
    if np.dtype(a.dtype).kind != "f":
        raise ScalelensError(f"attn must have dtype kind in 'f', got {a.dtype}")
    valid = as_array("query_valid", query_valid, 2, "b")
    groups = as_array("key_groups", key_groups, 2, "iu")
    n_p, _, _, n_q, n_k = a.shape
    check_shape("query_valid", valid, (n_p, n_q))
    check_shape("key_groups", groups, (n_p, n_k))
    if not valid.any():
        raise ScalelensError("query_valid marks no valid query row")
    return a, valid, groups


def _lazy(attn: Any) -> bool:
    """Whether ``attn`` is read in slices (an h5py Dataset, say) rather than taken as an array."""
    return not isinstance(attn, np.ndarray) and all(hasattr(attn, k) for k in ("shape", "dtype", "ndim"))


def _prompt_chunks(a: Any, chunk_bytes: int) -> list[slice]:
    """Prompt ranges of ``a`` of about ``chunk_bytes`` each (one prompt at least).

    A prompt costs its rows of every layer as stored plus one layer's as float64.
    """
    n_p = a.shape[0]
    layer_size = int(np.prod(a.shape[2:], dtype=np.int64))
    per_prompt = layer_size * (a.shape[1] * np.dtype(a.dtype).itemsize + 8)
    step = max(1, chunk_bytes // max(1, per_prompt))
    return [slice(start, min(n_p, start + step)) for start in range(0, n_p, step)]


def _onehot(codes: np.ndarray) -> np.ndarray:
    """``(prompt, kv_seq, kind)`` float64 indicator of each key's kind."""
    return (codes[:, :, None] == np.arange(len(KINDS))).astype(np.float64)


def _layer_masses(a: Any, valid: np.ndarray, codes: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Mean mass per kind for each layer, shape ``(layer, 4)``.

    ``a`` is read one range of prompts at a time, so memory does not grow with the prompt
    count beyond the small per-row sums. Each row's sum is its own prompt's, so the result
    does not depend on ``chunk_bytes``.
    """
    weight = valid.astype(np.float64) / (valid.sum() * a.shape[2])
    parts: list[list[np.ndarray]] = [[] for _ in range(a.shape[1])]
    for c in _prompt_chunks(a, chunk_bytes):
        block, onehot = a[c], _onehot(codes[c])
        for layer, layer_parts in enumerate(parts):
            rows = np.asarray(block[:, layer], dtype=np.float64)  # (prompt, head, query, kv)
            layer_parts.append(np.einsum("phqk,pkg->pqg", rows, onehot))  # summed over heads
        del block
    out = np.empty((a.shape[1], len(KINDS)))
    for layer, layer_parts in enumerate(parts):
        per_row = layer_parts[0] if len(layer_parts) == 1 else np.concatenate(layer_parts)
        out[layer] = np.einsum("pqg,pq->g", per_row, weight)
    return out


def _stats(masses: np.ndarray, n_text: float, n_other: float) -> dict[str, Any]:
    a_t, a_o, a_s = (float(masses[KINDS.index(k)]) for k in ("text", "other", "sink"))
    return {
        "a_text": a_t,
        "a_other": a_o,
        "a_sink": a_s,
        **dominance_indices(a_t, a_o, n_text, n_other),
    }


def text_dominance(
    attn: Any,
    query_valid: Any,
    key_groups: Any,
    group_kinds: Mapping[int, str],
    *,
    first_token_sink: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> TextDominanceResult:
    """Compute attention shares, MDI and AEI per layer and per layer third.

    Args:
        attn: ``(prompt, layer, head, query, kv_seq)`` attention probabilities: an array,
            or an array-like read in slices (``attn[start:stop, layer]``, e.g. an h5py
            Dataset), so that a large capture is never held in memory whole.
        query_valid: ``(prompt, query)`` bool mask of real query rows.
        key_groups: ``(prompt, kv_seq)`` int group label of each key.
        group_kinds: Label -> ``"text" | "other" | "sink" | "ignore"``; every
            label in ``key_groups`` must be present.
        first_token_sink: Move each prompt's first key that is not padding (negative
            label) to the sink, whatever its kind.
        chunk_bytes: Prompts are read and reduced in ranges of about this many bytes;
            the result does not depend on it.

    Returns:
        A :class:`TextDominanceResult`.

    Raises:
        ScalelensError: On shape or label problems, or when the valid rows see
            no text key or no other key.
    """
    a, valid, groups = _check(attn, query_valid, key_groups)
    codes = _kind_codes(groups, group_kinds)
    if first_token_sink:
        codes = _move_first_to_sink(codes, groups)
    key_counts = np.stack([(codes == k).sum(axis=1) for k in range(len(KINDS))], axis=1).astype(np.float64)
    rows_per_prompt = valid.sum(axis=1).astype(np.float64)
    counts = rows_per_prompt @ key_counts / rows_per_prompt.sum()
    n_text, n_other = float(counts[0]), float(counts[1])
    if n_text == 0 or n_other == 0:
        raise ScalelensError(f"need text and other keys, got |T|={n_text}, |O|={n_other}")
    masses = _layer_masses(a, valid, codes, chunk_bytes)
    per_layer = [{"layer": i, **_stats(m, n_text, n_other)} for i, m in enumerate(masses)]
    parts = layer_thirds(len(masses)) if len(masses) >= 3 else {}
    parts["all"] = list(range(len(masses)))
    grouped = {
        name: {"layers": idx, **_stats(masses[idx].mean(axis=0), n_text, n_other)}
        for name, idx in parts.items()
    }
    return TextDominanceResult(
        per_layer=per_layer,
        groups=grouped,
        n_text=n_text,
        n_other=n_other,
        n_rows=int(valid.sum()),
        n_prompts=int((rows_per_prompt > 0).sum()),
        first_token_sink=first_token_sink,
    )
