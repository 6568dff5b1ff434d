"""Activation sparsity per layer: the Hoyer sparsity of each token's activation vector.

Hoyer sparsity (Hoyer 2004, "Non-negative matrix factorization with sparseness
constraints") of a vector ``x`` of ``n >= 2`` entries:

    H(x) = (sqrt(n) - ||x||_1 / ||x||_2) / (sqrt(n) - 1)

It is 1 for a vector with a single non-zero entry, 0 for a vector whose entries
all have the same magnitude, does not change when ``x`` is scaled, and is
undefined for the zero vector. It is one of the few measures that satisfy all
the sparsity criteria of Hurley & Rickard (2009, "Comparing Measures of
Sparsity") and is the regulariser of activation-sparsity work (Kurtz et al. 2020).

Array contract (the measurement reduces each token's vector to its two norms on
the device, so only these reach the analysis):
    ``l1``, ``l2``: ``(prompt, layer, seq)`` float, the L1 and L2 norms over the
    ``width`` entries of each token's vector; ``lengths``: ``(prompt,)`` int, real
    positions per prompt (later positions are padding and ignored).

Per layer the result gives the mean H over every token but each sequence's
first (``hoyer``) and, separately, the mean H of the first tokens
(``hoyer_first``): in larger models the first token carries the attention sink
and its massive activations, which would otherwise dominate the mean. Zero
vectors are left out and counted; so are vectors whose norms are NaN or inf (an overflowing
or diverged checkpoint), which are faults, not sparse or dense vectors. The per-model
``mean_hoyer`` averages every layer, so it is NaN (None in JSON) when a layer has no
measurable vector, never a mean over the layers that happened to be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelens.analyses._common import as_array, check_shape, jsonable
from scalelens.errors import ScalelensError


def hoyer_from_norms(l1: Any, l2: Any, width: int) -> np.ndarray:
    """Hoyer sparsity of vectors of ``width`` entries given their L1 and L2 norms.

    Args:
        l1: L1 norms, any shape.
        l2: L2 norms, the same shape.
        width: Entries per vector (>= 2).

    Returns:
        float64 array of H values in [0, 1]; NaN where ``l2 == 0`` (zero vector).

    Raises:
        ScalelensError: If ``width < 2`` or the shapes differ.
    """
    if width < 2:
        raise ScalelensError(f"Hoyer sparsity needs vectors of at least 2 entries, got width {width}")
    a = np.asarray(l1, dtype=np.float64)
    b = np.asarray(l2, dtype=np.float64)
    if a.shape != b.shape:
        raise ScalelensError(f"l1 and l2 must have the same shape, got {a.shape} and {b.shape}")
    root = math.sqrt(width)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
    return np.clip((root - ratio) / (root - 1.0), 0.0, 1.0)


def hoyer_sparsity(x: Any, axis: int = -1) -> np.ndarray:
    """Hoyer sparsity of the vectors of ``x`` along ``axis`` (NaN for zero vectors)."""
    arr = np.asarray(x, dtype=np.float64)
    return hoyer_from_norms(np.abs(arr).sum(axis=axis), np.sqrt((arr * arr).sum(axis=axis)),
                            arr.shape[axis])


@dataclass(frozen=True)
class LayerSparsity:
    """Hoyer sparsity of one layer.

    Attributes:
        layer: Layer index.
        hoyer: Mean H over the tokens after each sequence's first (NaN if none).
        hoyer_first: Mean H of the first tokens (NaN if none).
        n_tokens: Tokens in ``hoyer`` (zero vectors excluded).
    """

    layer: int
    hoyer: float
    hoyer_first: float
    n_tokens: int


@dataclass(frozen=True)
class SparsityResult:
    """Per-layer Hoyer sparsity of one capture point.

    Attributes:
        point: The capture point the vectors were read at (``resid_post``, ``mlp_out``...).
        width: Entries per vector.
        per_layer: One entry per layer.
        mean_hoyer: Mean of the per-layer ``hoyer`` values (the per-model scalar).
        n_prompts: Sequences measured.
        n_zero_vectors: Zero vectors left out (all layers and positions).
        n_nonfinite_vectors: Vectors with NaN/inf norms left out (all layers and positions).
    """

    point: str
    width: int
    per_layer: list[LayerSparsity]
    mean_hoyer: float
    n_prompts: int
    n_zero_vectors: int
    n_nonfinite_vectors: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (inf/NaN become None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def activation_sparsity(l1: Any, l2: Any, lengths: Any, width: int, point: str,
                        layers: list[int] | None = None) -> SparsityResult:
    """Per-layer mean Hoyer sparsity from per-token L1/L2 norms.

    Args:
        l1: ``(prompt, layer, seq)`` L1 norms of each token's vector.
        l2: ``(prompt, layer, seq)`` L2 norms.
        lengths: ``(prompt,)`` real positions per prompt, each in ``1..seq``.
        width: Entries per vector (>= 2).
        point: Name of the capture point, recorded in the result.
        layers: Layer indices of the layer axis; default ``0..n_layers-1``.

    Returns:
        The per-layer result; see the module docstring.

    Raises:
        ScalelensError: On bad shapes, dtypes or lengths.
    """
    a = as_array("l1", l1, 3, "fiu")
    b = as_array("l2", l2, 3, "fiu")
    check_shape("l2", b, a.shape)
    n, n_layers, seq = a.shape
    lens = as_array("lengths", lengths, 1, "iu")
    check_shape("lengths", lens, (n,))
    if n < 1:
        raise ScalelensError("activation sparsity needs at least one prompt")
    if lens.min() < 1 or lens.max() > seq:
        raise ScalelensError(f"lengths must lie in 1..{seq}, got {lens.min()}..{lens.max()}")
    layer_ids = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if len(layer_ids) != n_layers:
        raise ScalelensError(f"{len(layer_ids)} layer indices for a layer axis of {n_layers}")
    h = hoyer_from_norms(a, b, width)
    pos = np.arange(seq)[None, :]
    rest = (pos >= 1) & (pos < lens[:, None])  # (prompt, seq)
    per_layer = []
    for i, layer in enumerate(layer_ids):
        hl = h[:, i, :]
        body = hl[rest]
        per_layer.append(LayerSparsity(layer, _mean(body), _mean(hl[:, 0]),
                                       int(np.isfinite(body).sum())))
    valid = (pos < lens[:, None])[:, None, :].repeat(n_layers, 1)
    broken = valid & ~(np.isfinite(a) & np.isfinite(b))
    zeros = int((valid & ~broken & (b == 0)).sum())
    layer_means = np.array([r.hoyer for r in per_layer])
    mean = float(layer_means.mean()) if np.isfinite(layer_means).all() else math.nan
    return SparsityResult(point, int(width), per_layer, mean, int(n), zeros, int(broken.sum()))
