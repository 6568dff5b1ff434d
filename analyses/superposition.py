"""Superposition measures of an unembedding matrix (Liu, Liu & Gore 2025).

Tokens are features: each row ``W[i]`` of the LM-head / unembedding matrix is
the direction the model uses for token ``i``.

Array contract:
    ``W``: ``(vocab, d_model)`` float, any float dtype (float16/32/64). Rows are
    tokens (``n`` = vocab rows), columns the model width ``m`` = d_model.

Measures:
    * row norms ``||W_i||``: mean, median, std, min, max over all ``n`` rows;
    * ``phi_half`` / ``phi_one``: share of all ``n`` rows with norm > 1/2 / > 1;
    * ``mean_sq_overlap``: mean over all ordered pairs ``i != j`` of
      ``(W_i . W_j / (||W_i|| ||W_j||))**2``. With ``N`` the row-normalised
      matrix, ``sum_{i != j} (N N^T)_{ij}^2 = ||N^T N||_F^2 - sum_i ||N_i||^4``,
      so only the ``m x m`` matrix ``N^T N`` is formed, in float64, accumulated
      over blocks of rows (memory ``O(m^2 + block * m)``, time ``O(n m^2)``);
    * ``mean_sq_overlap_centered``: the same after subtracting the mean row
      (mean over all ``n`` rows, zero rows included) from every row;
    * the random-unit-vector reference: for independent uniform unit vectors
      in ``R^m`` the squared overlap is Beta(1/2, (m-1)/2) distributed, with
      mean ``1/m`` and variance ``2(m-1) / (m^2 (m+2))``.

Zero rows (norm exactly 0, e.g. padded vocabulary entries that were never
trained) have no direction: they are left out of every overlap (and of the
pair count), counted in ``n_zero_rows``, and kept in the row-norm statistics
and in the ``phi`` shares (where they count as rows below the bar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalelens.analyses._common import as_array, jsonable
from scalelens.errors import ScalelensError

_BLOCK_BYTES = 1 << 26  # float64 bytes per block of rows (64 MiB)
_REFERENCE_MAX_ROWS = 20_000


@dataclass(frozen=True)
class RowNormStats:
    """Summary statistics of the row norms ``||W_i||`` over all rows."""

    mean: float
    median: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class SuperpositionResult:
    """Superposition measures of one weight matrix.

    Attributes:
        n: Number of rows (tokens), zero rows included.
        m: Width (number of columns).
        n_zero_rows: Rows with norm exactly 0; skipped in every overlap.
        row_norm: Statistics of the row norms over all ``n`` rows.
        phi_half: Share of the ``n`` rows with norm > 1/2.
        phi_one: Share of the ``n`` rows with norm > 1.
        mean_sq_overlap: Mean squared cosine overlap over pairs ``i != j`` of
            non-zero rows (NaN with fewer than two non-zero rows).
        mean_sq_overlap_centered: The same after removing the mean row, or None
            when not computed.
        n_zero_rows_centered: Rows that are exactly zero after centering
            (None when not computed).
        inv_m: ``1/m``, the random-unit-vector mean, to compare against.
        random_var: ``2(m-1)/(m^2(m+2))``, the random-unit-vector variance.
        var_sq_overlap_sampled: Variance of the squared overlap estimated from
            ``n_pairs_sampled`` random pairs of distinct non-zero rows (None when
            no pairs were sampled).
        n_pairs_sampled: Number of sampled pairs behind the variance estimate.
    """

    n: int
    m: int
    n_zero_rows: int
    row_norm: RowNormStats
    phi_half: float
    phi_one: float
    mean_sq_overlap: float
    mean_sq_overlap_centered: float | None
    n_zero_rows_centered: int | None
    inv_m: float
    random_var: float
    var_sq_overlap_sampled: float | None
    n_pairs_sampled: int

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (NaN becomes None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def random_overlap_moments(m: int) -> tuple[float, float]:
    """Mean and variance of the squared overlap of two random unit vectors.

    Args:
        m: Dimension of the space, at least 1.

    Returns:
        ``(1/m, 2(m-1)/(m^2 (m+2)))``.
    """
    if m < 1:
        raise ScalelensError(f"width m must be at least 1, got {m}")
    return 1.0 / m, 2.0 * (m - 1) / (m * m * (m + 2))


def _block_rows(m: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise ScalelensError(f"block_rows must be at least 1, got {block_rows}")
        return block_rows
    return max(1, _BLOCK_BYTES // (8 * m))


def _normalised_block(block: torch.Tensor, shift: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Float64 unit rows of ``block - shift`` (zero rows dropped) and the zero count."""
    x = block.to(torch.float64)
    if shift is not None:
        x = x - shift
    norms = torch.linalg.vector_norm(x, dim=1)
    if not bool(torch.isfinite(norms).all()):
        raise ScalelensError("W contains NaN or inf; check the checkpoint or the dtype cast")
    nonzero = norms > 0
    return x[nonzero] / norms[nonzero, None], int((~nonzero).sum())


def _gram(unit: torch.Tensor) -> torch.Tensor:
    """``unit.T @ unit``; numpy's BLAS on the CPU (faster than torch's float64 GEMM there)."""
    if unit.device.type == "cpu":
        x = unit.numpy()
        return torch.from_numpy(x.T @ x)
    return unit.T @ unit


def _gram_overlap(w: torch.Tensor, shift: torch.Tensor | None, block_rows: int) -> tuple[float, int]:
    """Mean squared overlap via the ``m x m`` Gram matrix, and the zero-row count."""
    m = w.shape[1]
    gram = torch.zeros((m, m), dtype=torch.float64, device=w.device)
    diag4 = torch.zeros((), dtype=torch.float64, device=w.device)
    n_nonzero = 0
    n_zero = 0
    for start in range(0, w.shape[0], block_rows):
        unit, zeros = _normalised_block(w[start : start + block_rows], shift)
        gram += _gram(unit)
        diag4 += (unit * unit).sum(1).square().sum()
        n_nonzero += unit.shape[0]
        n_zero += zeros
    if n_nonzero < 2:
        return float("nan"), n_zero
    off_diag = float(gram.square().sum() - diag4)
    return max(off_diag, 0.0) / (n_nonzero * (n_nonzero - 1)), n_zero


def _check_w(w: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """``w`` as a tensor on ``device`` (a tensor's own device by default; no copy if it is there)."""
    if isinstance(w, torch.Tensor):
        t = w.detach()
        if t.ndim != 2 or not t.is_floating_point():
            raise ScalelensError(f"W must be a 2-D float matrix, got shape {tuple(t.shape)} {t.dtype}")
    else:
        t = torch.from_numpy(np.ascontiguousarray(as_array("W", w, 2, "f")))
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ScalelensError(f"W must have at least one row and one column, got {tuple(t.shape)}")
    return t if device is None else t.to(device)  # NaN / inf are caught in _normalised_block


def _mean_row(w: torch.Tensor, block_rows: int) -> torch.Tensor:
    total = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)
    for start in range(0, w.shape[0], block_rows):
        total += w[start : start + block_rows].to(torch.float64).sum(0)
    return total / w.shape[0]


def mean_sq_overlap(w: Any, *, centered: bool = False, block_rows: int | None = None) -> float:
    """Exact mean squared overlap of the normalised rows, ``O(n m^2)``.

    Args:
        w: ``(vocab, d_model)`` float matrix.
        centered: Subtract the mean row (over all rows) before normalising.
        block_rows: Rows converted to float64 at a time; default keeps a
            block at 64 MiB.

    Returns:
        Mean of ``cos(W_i, W_j)**2`` over ordered pairs ``i != j`` of non-zero
        rows; NaN if fewer than two rows are non-zero.
    """
    arr = _check_w(w)
    rows = _block_rows(arr.shape[1], block_rows)
    shift = _mean_row(arr, rows) if centered else None
    return _gram_overlap(arr, shift, rows)[0]


def sq_overlaps_reference(w: Any, *, centered: bool = False) -> np.ndarray:
    """All squared overlaps ``cos(W_i, W_j)**2`` for ``i < j``, by brute force.

    Forms the ``n x n`` cosine matrix, so it is only for small ``n`` (tests and
    cross-checks of :func:`mean_sq_overlap`).

    Args:
        w: ``(vocab, d_model)`` float matrix with at most 20,000 rows.
        centered: Subtract the mean row (over all rows) before normalising.

    Returns:
        1-D float64 array of the ``n'(n'-1)/2`` squared overlaps between the
        ``n'`` non-zero rows.
    """
    arr = _check_w(w, "cpu").numpy().astype(np.float64)
    if arr.shape[0] > _REFERENCE_MAX_ROWS:
        raise ScalelensError(
            f"reference overlap is O(n^2); n={arr.shape[0]} > {_REFERENCE_MAX_ROWS}, use mean_sq_overlap"
        )
    if centered:
        arr = arr - arr.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))
    if not np.isfinite(norms).all():
        raise ScalelensError("W contains NaN or inf; check the checkpoint or the dtype cast")
    unit = arr[norms > 0] / norms[norms > 0, None]
    cos = unit @ unit.T
    upper = np.triu_indices(unit.shape[0], k=1)
    return np.asarray(cos[upper] ** 2)


def sample_sq_overlaps(w: Any, n_pairs: int, *, seed: int = 0) -> np.ndarray:
    """Squared overlaps of ``n_pairs`` random pairs of distinct non-zero rows.

    Pairs are drawn independently and uniformly (with replacement across pairs).

    Args:
        w: ``(vocab, d_model)`` float matrix.
        n_pairs: Number of pairs to draw.
        seed: Seed of the numpy generator.

    Returns:
        1-D float64 array of ``n_pairs`` squared overlaps (empty when the matrix
        has fewer than two non-zero rows).
    """
    arr = _check_w(w)
    norms = _row_norms(arr, _block_rows(arr.shape[1], None))
    return _sample_pairs(arr, norms, n_pairs, seed)


def _sample_pairs(arr: torch.Tensor, norms: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Squared overlaps of seeded random pairs of distinct non-zero rows (indices drawn by numpy)."""
    rows = np.flatnonzero(norms > 0)
    if rows.size < 2 or n_pairs < 1:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    first = rng.integers(rows.size, size=n_pairs)
    second = rng.integers(rows.size - 1, size=n_pairs)
    second += second >= first
    i_all, j_all = rows[first], rows[second]
    out = np.empty(n_pairs)
    chunk = max(1, _BLOCK_BYTES // (16 * arr.shape[1]))
    for start in range(0, n_pairs, chunk):
        i, j = i_all[start : start + chunk], j_all[start : start + chunk]
        a = arr[torch.from_numpy(i).to(arr.device)].to(torch.float64)
        b = arr[torch.from_numpy(j).to(arr.device)].to(torch.float64)
        dots = (a * b).sum(1).cpu().numpy()
        out[start : start + chunk] = (dots / (norms[i] * norms[j])) ** 2
    return out


def _row_norms(w: torch.Tensor, block_rows: int) -> np.ndarray:
    parts = [torch.linalg.vector_norm(w[a : a + block_rows].to(torch.float64), dim=1)
             for a in range(0, w.shape[0], block_rows)]
    norms = torch.cat(parts).cpu().numpy()
    if not np.isfinite(norms).all():
        raise ScalelensError("W contains NaN or inf; check the checkpoint or the dtype cast")
    return norms


def _norm_stats(norms: np.ndarray) -> RowNormStats:
    return RowNormStats(
        mean=float(norms.mean()),
        median=float(np.median(norms)),
        std=float(norms.std()),
        min=float(norms.min()),
        max=float(norms.max()),
    )


def superposition(
    w: Any,
    *,
    centered: bool = True,
    n_pair_samples: int = 100_000,
    seed: int = 0,
    block_rows: int | None = None,
    device: str | torch.device | None = None,
) -> SuperpositionResult:
    """Compute the superposition measures of an unembedding matrix.

    The O(n m^2) work runs in float64 torch on ``device``: a tensor's own device by
    default (a model's weight on the GPU is measured there), the CPU for numpy input.

    Args:
        w: ``(vocab, d_model)`` float matrix (``n`` rows, width ``m``): numpy or torch.
        centered: Also compute the overlap after removing the mean row (a
            second pass over ``W`` of the same cost).
        n_pair_samples: Random pairs used to estimate the variance of the
            squared overlap (0 skips the estimate).
        seed: Seed for the pair sampling.
        block_rows: Rows per float64 block; default keeps blocks at 64 MiB.
        device: Where to compute (default: see above).

    Returns:
        A :class:`SuperpositionResult`.

    Raises:
        ScalelensError: If ``W`` is not a finite 2-D float matrix.
    """
    arr = _check_w(w, device)
    n, m = arr.shape
    rows = _block_rows(m, block_rows)
    norms = _row_norms(arr, rows)
    mean_raw, n_zero = _gram_overlap(arr, None, rows)
    mean_c: float | None = None
    n_zero_c: int | None = None
    if centered:
        mean_c, n_zero_c = _gram_overlap(arr, _mean_row(arr, rows), rows)
    samples = _sample_pairs(arr, norms, n_pair_samples, seed)
    inv_m, random_var = random_overlap_moments(m)
    return SuperpositionResult(
        n=n,
        m=m,
        n_zero_rows=n_zero,
        row_norm=_norm_stats(norms),
        phi_half=float(np.mean(norms > 0.5)),
        phi_one=float(np.mean(norms > 1.0)),
        mean_sq_overlap=mean_raw,
        mean_sq_overlap_centered=mean_c,
        n_zero_rows_centered=n_zero_c,
        inv_m=inv_m,
        random_var=random_var,
        var_sq_overlap_sampled=float(samples.var()) if samples.size > 1 else None,
        n_pairs_sampled=int(samples.size),
    )
