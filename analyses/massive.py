"""Massive activations in the residual stream (Sun et al. 2024; dynamics paper 2025).

Measured on each decoder layer's output (the residual stream after the layer).

Input 1, full activations (small data; the reference for the on-device reduction):
    ``h``: ``(prompt, layer, seq, d_model)`` float, the layer outputs;
    ``lengths``: ``(prompt,)`` int, valid tokens per prompt. Prompts are
    right-padded: positions ``[0, lengths[p])`` are valid, the rest ignored;
    ``token_ids``: ``(prompt, seq)`` int, the input token at each position.

Input 2, the streamed summary captured on device (:class:`ResidualSummary`),
one row per (prompt, layer) over that prompt's valid ``seq x d_model`` entries:
    ``top_values``: ``(prompt, layer, topk)`` float, the ``topk`` largest
    ``|h|`` in descending order (ties: smaller flat index ``pos * d_model + dim``
    first);
    ``top_pos``, ``top_dim``, ``top_token``: ``(prompt, layer, topk)`` int, the
    sequence position, feature dimension and input token id of each entry.
    When a prompt has fewer than ``topk`` valid entries the tail is padding:
    ``top_pos = -1`` and ``top_values = NaN``;
    ``median_abs``: ``(prompt, layer)`` float, the median of ``|h|`` over the
    valid entries, numpy convention (mean of the two middle values when the
    count is even; ``torch.median`` returns the lower one instead, so a device
    reduction should use ``torch.quantile(x, 0.5)`` or average the two
    ``kthvalue`` results).

Per layer the statistics follow the dynamics paper, which computes the ratio
``max|h| / median|h|`` on each sequence and averages over 10 sequences:
``ratio`` is the mean over prompts of the per-prompt ratio (``ratio_max`` the
largest), ``median_abs`` the mean of the per-prompt medians, ``max_abs`` the
largest ``|h|`` over all prompts, with the dim / position / token / prompt of
that entry. The full-activation path also reports ``median_abs_pooled``, the
median over all of the layer's valid activations of all prompts.

Flags:
    * Sun et al. rule, per entry: ``|a| > abs_threshold`` (100) and
      ``|a| / median_abs[prompt, layer] >= rel_threshold`` (1000). The summary
      holds only ``topk`` entries per (prompt, layer); ``massive_truncated`` says
      when every valid top entry of some (prompt, layer) passed, so more may exist.
    * Ratio-only rule, per layer, for small models that never reach ``|a| > 100``:
      ``ratio >= ratio_threshold``, default 100. For Gaussian activations the
      ratio over 2048 x 4096 entries is about 5.3 / 0.674 ~ 8, so 100 is an order
      of magnitude beyond noise and a tenth of Sun's relative bar; the dynamics
      paper's final ratios (Pythia-14M ~83, 1.4B ~2350) fall either side of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelens.analyses._common import as_array, check_shape, jsonable
from scalelens.errors import ScalelensError


@dataclass(frozen=True, eq=False)
class ResidualSummary:
    """Per (prompt, layer) top-``k`` ``|h|`` entries and median ``|h|``; see module doc.

    Attributes:
        top_values: ``(prompt, layer, topk)`` float, descending ``|h|``.
        top_pos: ``(prompt, layer, topk)`` int, sequence position (-1 = padding).
        top_dim: ``(prompt, layer, topk)`` int, feature dimension.
        top_token: ``(prompt, layer, topk)`` int, input token id at ``top_pos``.
        median_abs: ``(prompt, layer)`` float, median ``|h|`` over valid entries.
    """

    top_values: np.ndarray
    top_pos: np.ndarray
    top_dim: np.ndarray
    top_token: np.ndarray
    median_abs: np.ndarray

    def __post_init__(self) -> None:
        values = as_array("top_values", self.top_values, 3, "f")
        for name in ("top_pos", "top_dim", "top_token"):
            check_shape(name, as_array(name, getattr(self, name), 3, "iu"), values.shape)
        check_shape("median_abs", as_array("median_abs", self.median_abs, 2, "f"), values.shape[:2])
        if values.shape[2] < 1:
            raise ScalelensError("summary needs topk >= 1")
        if np.any(np.asarray(self.top_pos)[:, :, 0] < 0):
            raise ScalelensError("every (prompt, layer) needs at least one valid entry")


@dataclass(frozen=True)
class MassiveResult:
    """Massive-activation statistics per layer and where they sit.

    Attributes:
        per_layer: One dict per layer: ``layer, max_abs, median_abs,
            median_abs_pooled`` (None from summaries), ``ratio`` (mean over
            prompts), ``ratio_max``, ``dim, position, token, prompt`` of the
            largest entry, ``ratio_flag``.
        massive: Entries meeting the Sun rule: dicts with ``prompt, layer,
            position, dim, token, value, ratio``.
        dims: Sorted feature dims of the ``massive`` entries.
        positions: Sorted sequence positions of the ``massive`` entries.
        tokens: Sorted token ids of the ``massive`` entries.
        first_layer: First layer with a ``massive`` entry, or None.
        share_first_token: Share of ``massive`` entries at position 0 (None if none).
        share_delimiter: Share of ``massive`` entries on a delimiter token (None
            if no entries or no delimiter ids were given).
        massive_truncated: True when some (prompt, layer) had all its valid top
            entries pass the Sun rule, so the summary may have cut some off.
        ratio_layers: Layers flagged by the ratio-only rule.
        ratio_first_layer: First such layer, or None.
        ratio_dims: Sorted dims of the per-prompt top-1 entries in flagged layers.
        ratio_positions: Sorted positions of those entries.
        n_prompts: Prompts averaged over.
        thresholds: The rule parameters used.
    """

    per_layer: list[dict[str, Any]]
    massive: list[dict[str, Any]]
    dims: list[int]
    positions: list[int]
    tokens: list[int]
    first_layer: int | None
    share_first_token: float | None
    share_delimiter: float | None
    massive_truncated: bool
    ratio_layers: list[int]
    ratio_first_layer: int | None
    ratio_dims: list[int]
    ratio_positions: list[int]
    n_prompts: int
    thresholds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (inf/NaN become None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def _top_entries(abs_h: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and values of the ``topk`` largest entries, ties by index.

    Of the entries equal to the k-th largest, those of the lowest indices are kept (an
    ``argpartition`` keeps any of them), as the capture's summary keeps them.
    """
    flat = abs_h.reshape(-1)
    k = min(topk, flat.size)
    idx = np.arange(flat.size)
    if k < flat.size:
        kth = -np.partition(-flat, k - 1)[k - 1]
        if not np.isnan(kth):  # NaN ranks last here: with fewer than k numbers, keep them all
            idx = np.flatnonzero(flat >= kth)
    order = np.lexsort((idx, -flat[idx]))[:k]
    return idx[order], flat[idx[order]]


def _check_full(h: Any, lengths: Any, token_ids: Any) -> tuple[np.ndarray, ...]:
    arr = as_array("h", h, 4, "f")
    lens = as_array("lengths", lengths, 1, "iu")
    toks = as_array("token_ids", token_ids, 2, "iu")
    check_shape("lengths", lens, arr.shape[:1])
    check_shape("token_ids", toks, (arr.shape[0], arr.shape[2]))
    if np.any(lens < 1) or np.any(lens > arr.shape[2]):
        raise ScalelensError(f"lengths must lie in [1, {arr.shape[2]}], got {lens.tolist()}")
    return arr, lens, toks


def summarise_activations(h: Any, lengths: Any, token_ids: Any, *, topk: int = 16) -> ResidualSummary:
    """Reduce full activations to the streamed summary (numpy reference).

    Args:
        h: ``(prompt, layer, seq, d_model)`` float layer outputs.
        lengths: ``(prompt,)`` int valid length of each right-padded prompt.
        token_ids: ``(prompt, seq)`` int input tokens.
        topk: Entries kept per (prompt, layer), at least 1.

    Returns:
        The :class:`ResidualSummary` of ``h``.
    """
    arr, lens, toks = _check_full(h, lengths, token_ids)
    if topk < 1:
        raise ScalelensError(f"topk must be at least 1, got {topk}")
    n_p, n_l, _, d = arr.shape
    values = np.full((n_p, n_l, topk), np.nan)
    pos = np.full((n_p, n_l, topk), -1, dtype=np.int64)
    dim = np.full((n_p, n_l, topk), -1, dtype=np.int64)
    tok = np.full((n_p, n_l, topk), -1, dtype=np.int64)
    median = np.empty((n_p, n_l))
    for p in range(n_p):
        for layer in range(n_l):
            abs_h = np.abs(np.asarray(arr[p, layer, : lens[p]], dtype=np.float64))
            idx, vals = _top_entries(abs_h, topk)
            k = idx.size
            values[p, layer, :k] = vals
            pos[p, layer, :k], dim[p, layer, :k] = np.divmod(idx, d)
            tok[p, layer, :k] = toks[p, pos[p, layer, :k]]
            median[p, layer] = np.median(abs_h)
    return ResidualSummary(values, pos, dim, tok, median)


def _pooled_medians(arr: np.ndarray, lens: np.ndarray) -> list[float]:
    out = []
    for layer in range(arr.shape[1]):
        parts = [np.abs(np.asarray(arr[p, layer, : lens[p]])).ravel() for p in range(arr.shape[0])]
        out.append(float(np.median(np.concatenate(parts))))
    return out


def _ratios(summary: ResidualSummary) -> np.ndarray:
    top = np.asarray(summary.top_values[:, :, 0], dtype=np.float64)
    med = np.asarray(summary.median_abs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(med > 0, top / np.where(med > 0, med, 1.0), np.inf)


def _finite(summary: ResidualSummary) -> np.ndarray:
    """(prompt, layer) True where the top value and the median are finite numbers.

    A NaN or inf activation (an overflowing fp16 checkpoint, say) is a fault, not a massive
    activation: such (prompt, layer) entries are left out of every ratio and of the Sun rule,
    and counted per layer in ``n_nonfinite``.
    """
    top = np.asarray(summary.top_values[:, :, 0], dtype=np.float64)
    return np.isfinite(top) & np.isfinite(np.asarray(summary.median_abs, dtype=np.float64))


def _layer_rows(
    summary: ResidualSummary, ratio_threshold: float, pooled: list[float] | None
) -> list[dict[str, Any]]:
    ratios, finite = _ratios(summary), _finite(summary)
    rows = []
    for layer in range(ratios.shape[1]):
        ok = finite[:, layer]
        if not ok.any():
            rows.append({"layer": layer, "max_abs": None, "median_abs": None,
                         "median_abs_pooled": None if pooled is None else pooled[layer], "ratio": None,
                         "ratio_max": None, "dim": None, "position": None, "token": None, "prompt": None,
                         "ratio_flag": False, "n_nonfinite": int((~ok).sum())})
            continue
        top = np.where(ok, summary.top_values[:, layer, 0], -np.inf)
        p = int(np.argmax(top))
        ratio = float(ratios[ok, layer].mean())
        rows.append(
            {
                "layer": layer,
                "max_abs": float(top[p]),
                "median_abs": float(np.mean(summary.median_abs[ok, layer])),
                "median_abs_pooled": None if pooled is None else pooled[layer],
                "ratio": ratio,
                "ratio_max": float(ratios[ok, layer].max()),
                "dim": int(summary.top_dim[p, layer, 0]),
                "position": int(summary.top_pos[p, layer, 0]),
                "token": int(summary.top_token[p, layer, 0]),
                "prompt": p,
                "ratio_flag": bool(ratio >= ratio_threshold),
                "n_nonfinite": int((~ok).sum()),
            }
        )
    return rows


def _sun_entries(
    summary: ResidualSummary, abs_threshold: float, rel_threshold: float
) -> tuple[list[dict[str, Any]], bool]:
    values = np.asarray(summary.top_values, dtype=np.float64)
    med = np.asarray(summary.median_abs, dtype=np.float64)[:, :, None]
    valid = np.asarray(summary.top_pos) >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(med > 0, values / np.where(med > 0, med, 1.0), np.inf)
    finite = np.isfinite(values) & _finite(summary)[:, :, None]
    hit = valid & finite & (values > abs_threshold) & (rel >= rel_threshold)
    truncated = bool(np.any(np.all(hit, axis=2)))
    entries = []
    for p, layer, k in zip(*np.nonzero(hit), strict=True):
        entries.append(
            {
                "prompt": int(p),
                "layer": int(layer),
                "position": int(summary.top_pos[p, layer, k]),
                "dim": int(summary.top_dim[p, layer, k]),
                "token": int(summary.top_token[p, layer, k]),
                "value": float(values[p, layer, k]),
                "ratio": float(rel[p, layer, k]),
            }
        )
    return entries, truncated


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _ratio_sites(summary: ResidualSummary, layers: list[int]) -> tuple[list[int], list[int]]:
    finite = _finite(summary)
    dims = {int(d) for layer in layers for d in summary.top_dim[finite[:, layer], layer, 0]}
    pos = {int(q) for layer in layers for q in summary.top_pos[finite[:, layer], layer, 0]}
    return sorted(dims), sorted(pos)


def massive_activations(
    summary: ResidualSummary,
    *,
    delimiter_ids: Iterable[int] = (),
    abs_threshold: float = 100.0,
    rel_threshold: float = 1000.0,
    ratio_threshold: float = 100.0,
) -> MassiveResult:
    """Analyse a residual-stream summary for massive activations.

    Args:
        summary: Per (prompt, layer) summary; see the module docstring.
        delimiter_ids: Token ids counted as delimiters (e.g. period, newline, BOS).
        abs_threshold: Sun rule absolute bar, ``|a| > abs_threshold``.
        rel_threshold: Sun rule relative bar, ``|a| / median >= rel_threshold``.
        ratio_threshold: Ratio-only rule, a layer is flagged when its mean
            ratio ``>= ratio_threshold``.

    Returns:
        A :class:`MassiveResult`.
    """
    return _analyse(summary, None, delimiter_ids, abs_threshold, rel_threshold, ratio_threshold)


def _analyse(
    summary: ResidualSummary,
    pooled: list[float] | None,
    delimiter_ids: Iterable[int],
    abs_threshold: float,
    rel_threshold: float,
    ratio_threshold: float,
) -> MassiveResult:
    delims = {int(t) for t in delimiter_ids}
    per_layer = _layer_rows(summary, ratio_threshold, pooled)
    massive, truncated = _sun_entries(summary, abs_threshold, rel_threshold)
    flagged = [row["layer"] for row in per_layer if row["ratio_flag"]]
    ratio_dims, ratio_pos = _ratio_sites(summary, flagged)
    return MassiveResult(
        per_layer=per_layer,
        massive=massive,
        dims=sorted({e["dim"] for e in massive}),
        positions=sorted({e["position"] for e in massive}),
        tokens=sorted({e["token"] for e in massive}),
        first_layer=min((e["layer"] for e in massive), default=None),
        share_first_token=_share([e["position"] == 0 for e in massive]),
        share_delimiter=_share([e["token"] in delims for e in massive]) if delims else None,
        massive_truncated=truncated,
        ratio_layers=flagged,
        ratio_first_layer=flagged[0] if flagged else None,
        ratio_dims=ratio_dims,
        ratio_positions=ratio_pos,
        n_prompts=int(summary.median_abs.shape[0]),
        thresholds={
            "abs_threshold": abs_threshold,
            "rel_threshold": rel_threshold,
            "ratio_threshold": ratio_threshold,
        },
    )


def massive_from_activations(
    h: Any,
    lengths: Any,
    token_ids: Any,
    *,
    topk: int = 16,
    delimiter_ids: Iterable[int] = (),
    abs_threshold: float = 100.0,
    rel_threshold: float = 1000.0,
    ratio_threshold: float = 100.0,
) -> MassiveResult:
    """Analyse full activations: summarise, analyse, and add pooled medians.

    Args:
        h: ``(prompt, layer, seq, d_model)`` float layer outputs.
        lengths: ``(prompt,)`` int valid length of each right-padded prompt.
        token_ids: ``(prompt, seq)`` int input tokens.
        topk: Entries kept per (prompt, layer) when looking for Sun-rule entries.
        delimiter_ids: Token ids counted as delimiters.
        abs_threshold: Sun rule absolute bar.
        rel_threshold: Sun rule relative bar.
        ratio_threshold: Ratio-only rule bar.

    Returns:
        The same :class:`MassiveResult` as :func:`massive_activations` on the
        summary of ``h``, with ``median_abs_pooled`` filled in per layer.
    """
    arr, lens, toks = _check_full(h, lengths, token_ids)
    summary = summarise_activations(arr, lens, toks, topk=topk)
    pooled = _pooled_medians(arr, lens)
    return _analyse(summary, pooled, delimiter_ids, abs_threshold, rel_threshold, ratio_threshold)
