"""On-device reductions: turn what a hook sees into the arrays a probe stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from scalelens.axes import Axis
from scalelens.hooks.attention import attention_probs, attention_rows
from scalelens.hooks.points import CapturePoint
from scalelens.probes.spec import PositionKind, ProbeSpec, Reduction

_STORE_DTYPE = {"float16": "float16", "bfloat16": "float32", "float32": "float32"}
MASSIVE_STACK_BYTES = 256 * 2**20  # |h| of this many bytes of layers is reduced at once


@dataclass(frozen=True)
class DatasetSpec:
    """Shape, dtype and axis names of one stored dataset (first axis: prompt)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[Axis, ...]


@dataclass
class BatchContext:
    """What reductions need to know about the batch being run.

    Attributes:
        ids: (b, s) token ids on device (pad positions hold the pad id).
        valid: (b, s) bool, True on real tokens.
        rows: probe name -> (b, q) selected positions on device, -1 padded.
        lengths: Real tokens per prompt, on the host (no device sync needed).
    """

    ids: torch.Tensor
    valid: torch.Tensor
    rows: dict[str, torch.Tensor]
    lengths: list[int]
    cache: dict[Any, Any] = field(default_factory=dict)


def _median_layout(ctx: BatchContext, reps: int, s: int, d: int, device: torch.device) -> tuple[Any, ...]:
    """Per-batch constants of :func:`_medians` for (reps, b, s, d) inputs, built once per batch.

    Row i of the flattened (b, s*d) input holds n_i = len_i * d valid entries, then padding.
    To select every row's own lower median r_i = ceil(n_i / 2) with ONE batched selection
    (whose k is shared by all rows), the padding of row i becomes R - r_i slots of -1
    (below every |h|) followed by +inf, where R = max r_i: the R-th smallest of the padded
    row is then exactly the r_i-th smallest of its valid entries, and the (R+1)-th is the
    (r_i+1)-th. R - r_i <= s*d - n_i always holds, so the padding has room for the -1 slots.

    Returns (R, inf_from, odd): R; per row the first slot that must hold +inf
    (n_i + R - r_i); whether n_i is odd, as a bool tensor on ``device``.
    """
    key = ("median", reps, s, d, device)
    if key not in ctx.cache:
        n = np.array([min(length, s) * d for length in ctx.lengths] * reps, dtype=np.int64)
        lo_rank = (n + 1) // 2
        big_r = int(lo_rank.max())
        odd = n % 2 == 1
        odd_t = _pinned(torch.from_numpy(odd), device)  # no host sync on CUDA
        ctx.cache[key] = (big_r, (n + big_r - lo_rank).tolist(), odd_t)
    return ctx.cache[key]


def _medians(a: torch.Tensor, ctx: BatchContext, use_numpy: bool | None = None) -> torch.Tensor:
    """Median of each prompt's valid entries of ``a`` (b, s, d), numpy convention (even: mean).

    ``a`` may also be (n, b, s, d), n layers stacked: the result is then (n, b), all layers
    in the same two selections.

    ``a`` must be the caller's own tensor, non-negative, with every padded position
    (>= the prompt's length) set to -1; it may be overwritten. Exactly the values of
    per-prompt ``kthvalue`` calls, without host syncs:

    * on the CPU (``use_numpy``), prompt by prompt on its valid entries (a contiguous
      prefix of the flattened row) with :func:`_median_1d`;
    * elsewhere batched: the padding is completed to the layout of :func:`_median_layout`
      and two ``kthvalue`` calls (ranks R and R+1) give both middle values of every row.

    ``use_numpy`` overrides the choice by device (tests run the device path on the CPU).
    """
    *lead, b, s, d = a.shape
    reps = int(np.prod(lead))
    flat = a.view(reps * b, s * d)
    if use_numpy is None:
        use_numpy = a.device.type == "cpu"
    if use_numpy:
        x = flat.numpy()
        lengths = ctx.lengths * reps
        med = np.array([_median_1d(x[i, : min(n, s) * d]) for i, n in enumerate(lengths)], dtype=np.float32)
        return torch.from_numpy(med).view(*lead, b)
    big_r, inf_from, odd_t = _median_layout(ctx, reps, s, d, a.device)
    n_all = s * d
    if min(inf_from) < n_all:
        key = ("median_inf", reps, s, d, a.device)
        if key not in ctx.cache:
            j = torch.arange(n_all, device=a.device)
            starts = _pinned(torch.tensor(inf_from), a.device)
            ctx.cache[key] = j[None, :] >= starts[:, None]
        flat.masked_fill_(ctx.cache[key], float("inf"))
    return _middles(flat, big_r, odd_t).view(*lead, b)


_LOW32 = 2**32 - 1


def _topk_lowest_index_first(a: torch.Tensor, k: int, everywhere: bool | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row (last axis) of float32 ``a``, and their indices.

    ``a`` holds |h| (>= 0; NaN and inf included) and -1 on padding. Equal values come lowest
    index first, and of several equal to the k-th value the lowest indices are kept:
    ``torch.topk`` leaves both unspecified, and they changed with the batch's width, so a
    bfloat16 model's tied |h| (2.625 at two positions) stored other positions and dims for
    a prompt captured in a batch of 1 than in a batch of 8.

    On the CPU one ``topk`` of ``k + 1`` finds the rows where the k-th value is tied past
    the k-th entry, and only those are redone by key; elsewhere (``everywhere``, the
    default off the CPU: no host sync) every row is ranked by key.
    """
    n = a.shape[-1]
    if everywhere is None:
        everywhere = a.device.type != "cpu"
    if everywhere or k >= n:
        return _topk_by_key(a, k)
    vals, idx = a.topk(k + 1, dim=-1)
    bits = vals.view(torch.int32)
    tied = bits[..., k] == bits[..., k - 1]  # bits: NaNs of one payload tie too
    vals, idx = vals[..., :k].contiguous(), idx[..., :k].contiguous()
    if bool(tied.any()):
        vals[tied], idx[tied] = _topk_by_key(a[tied], k)
    return _ties_by_index(vals, idx)


def _keys(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One int64 per entry, ordered as (value, then lower index first).

    A float32's bits order non-negative values as the values do (NaN above inf) and put the
    -1 padding below zero; the complement of the index fills the low 32 bits.
    """
    keys = vals.view(torch.int32).to(torch.int64).bitwise_left_shift_(32)
    return keys.add_(_LOW32 - idx)


def _from_keys(top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vals = top.bitwise_right_shift(32).to(torch.int32).view(torch.float32)
    return vals, _LOW32 - top.bitwise_and(_LOW32)


def _topk_by_key(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_topk_lowest_index_first` of every row, by one int64 key per entry."""
    index = torch.arange(a.shape[-1], device=a.device)
    return _from_keys(_keys(a, index).topk(min(k, a.shape[-1]), dim=-1).values)


def _ties_by_index(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``vals``/``idx`` (a row's top entries) reordered so that equal values go lowest index first."""
    return _from_keys(_keys(vals, idx).sort(dim=-1, descending=True).values)


def _pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device``; through pinned memory and non-blocking on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _padding(ctx: BatchContext, s: int) -> torch.Tensor:
    """(b, s, 1) True at padded positions of this batch (built once per batch)."""
    key = ("padding", s)
    if key not in ctx.cache:
        ctx.cache[key] = ~ctx.valid[:, :s, None]
    return ctx.cache[key]


def _middles(flat: torch.Tensor, big_r: int, odd_t: torch.Tensor) -> torch.Tensor:
    """Mean of the R-th and, for even rows, (R+1)-th smallest entries of each padded row."""
    lo = flat.kthvalue(big_r, dim=1).values
    if big_r == flat.shape[1]:  # one entry per row (s = d = 1): every row is odd
        return lo
    hi = torch.where(odd_t, lo, flat.kthvalue(big_r + 1, dim=1).values)
    return (lo + hi) / 2


_SAMPLE = 2048  # entries sampled to bracket the median
_MARGIN = 100  # sample ranks either side of the median's (~4.4 sigma of the sample rank)
_SAMPLE_INDEXES_KEPT = 256  # 16 KiB each: a bounded cache, whatever the number of prompt lengths


@lru_cache(maxsize=_SAMPLE_INDEXES_KEPT)
def _sample_index(n: int) -> np.ndarray:
    """The fixed sorted sample of positions of a length-``n`` row (read-only; seeded by ``n``).

    Kept for the most recently used lengths only: each distinct prompt length (times the
    width) is another ``n``, and an unbounded dict grew by 16 KiB per one for the whole
    process (a long capture of prompts of every length, a sweep over many widths).
    """
    idx = np.sort(np.random.default_rng(n).integers(0, n, _SAMPLE))
    idx.flags.writeable = False
    return idx


def _median_1d(x: np.ndarray) -> np.float32:
    """Exact median (numpy convention) of a 1-D float32 array, ~3x faster than a full partition.

    A fixed pseudo-random sample brackets the two middle ranks; one pass counts the entries
    below the bracket and keeps those inside it (about a tenth of them), and only those are
    partitioned. If the bracket misses (rare) or the data has NaN, it falls back to
    ``np.partition`` of everything, so the value is always exactly the partition's.
    """
    n = x.size
    k_lo, k_hi = (n - 1) // 2, n // 2
    if n > 16 * _SAMPLE:
        sample = np.sort(x[_sample_index(n)])
        j = k_lo * _SAMPLE // n
        lo_b, hi_b = sample[max(0, j - _MARGIN)], sample[min(_SAMPLE - 1, j + _MARGIN)]
        below = int(np.count_nonzero(x < lo_b))
        inside = x[(x >= lo_b) & (x <= hi_b)]
        above = int(np.count_nonzero(x > hi_b))
        lo_k, hi_k = k_lo - below, k_hi - below
        if below + inside.size + above == n and lo_k >= 0 and hi_k < inside.size:  # no NaN, bracketed
            part = np.partition(inside, (lo_k, hi_k))
            return np.float32((part[lo_k] + part[hi_k]) / np.float32(2))
    part = np.partition(x, (k_lo, k_hi))
    return np.float32((part[k_lo] + part[k_hi]) / np.float32(2))


def _gather_positions(h: torch.Tensor, rows: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather positions ``rows`` (b, q) along ``dim`` of ``h`` (batch first), zeroing pads."""
    shape = list(h.shape)
    shape[dim] = rows.shape[1]
    view = [rows.shape[0]] + [1] * (h.dim() - 1)
    view[dim] = rows.shape[1]
    idx = rows.clamp(min=0).view(view).expand(shape)
    out = h.gather(dim, idx)
    keep = (rows >= 0).view(view)
    return out * keep.to(out.dtype)


class ProbeRuntime:
    """Buffers and reduces one probe's data for one batch at a time."""

    def __init__(self, spec: ProbeSpec, d_model: int, d_head: int, n_prompts: int, seq: int,
                 n_query: int, vocab: int = 0, topk: int | None = None) -> None:
        """Create the runtime for a resolved ``spec`` over ``n_prompts`` padded to ``seq``."""
        self.spec, self.vocab = spec, vocab
        self.layer_index = {layer: i for i, layer in enumerate(spec.layers or ())}
        self.d_model, self.d_head = d_model, d_head
        self.n_prompts, self.seq, self.n_query = n_prompts, seq, n_query
        self.topk = min(spec.topk, seq * d_model) if topk is None else topk
        self._buf: dict[str, torch.Tensor] = {}
        self._tails: list[int] = []  # prompt lengths whose padding finish() zeroes
        self._tail_axis, self._width = 1, 0  # position axis of values[i]; batch width (attention)
        self._stack: torch.Tensor | None = None  # massive: |h| of layers not yet reduced
        self._pending: list[int] = []  # their layer indices
        self._n_massive = 0  # layers stacked this batch (the hooks fire in model order, not ours)
        self._heads: dict[tuple[torch.device, int], torch.Tensor | None] = {}
        self._top1: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (layer index, key, prob)
        self._padded_rows: torch.Tensor | None = None  # top-1 rows: (b, 1, q) True past the rows

    @property
    def selects_positions(self) -> bool:
        """Whether the probe keeps a subset of positions (stored with ``query_pos``)."""
        return self.spec.positions.kind is not PositionKind.ALL or (
            self.spec.reduction is Reduction.TOP1
        )

    def datasets(self) -> list[DatasetSpec]:
        """The datasets this probe writes."""
        return _datasets(self)

    # -- per batch -------------------------------------------------------------------
    def start(self) -> None:
        """Forget the previous batch's buffers."""
        self._buf = {}
        self._tails = []
        self._pending = []
        self._n_massive = 0
        self._top1 = []
        self._padded_rows = None

    def _slot(self, name: str, b: int, tail: tuple[int, ...], dtype: torch.dtype,
              device: torch.device, fill: float | None = 0) -> torch.Tensor:
        """This batch's (b, layer, *tail) buffer ``name``, created full of ``fill`` on first use.

        Tails are the stored (padded) shapes, so a batch narrower than the prompt set's
        padded length is padded here, on device, not on the host. ``fill=None`` leaves the
        buffer uninitialised (the caller writes or zeroes every element).
        """
        if name not in self._buf:
            shape = (b, len(self.layer_index), *tail)
            self._buf[name] = (torch.empty(shape, dtype=dtype, device=device) if fill is None
                               else torch.full(shape, fill, dtype=dtype, device=device))
        return self._buf[name]

    def _head_index(self, device: torch.device, n_heads: int) -> torch.Tensor | None:
        """Selected heads as a device index, built once per device; None when all, in order."""
        key = (device, n_heads)
        if key not in self._heads:
            heads = tuple(self.spec.heads or ())
            self._heads[key] = (None if heads == tuple(range(n_heads))
                                else torch.tensor(heads, device=device))
        return self._heads[key]

    def on_residual(self, layer: int, h: torch.Tensor, ctx: BatchContext) -> None:
        """Consume a module output (b, s, d_model or vocab) of ``layer``."""
        li = self.layer_index[layer]
        red = self.spec.reduction
        if red is Reduction.MASSIVE:
            self._massive(li, h, ctx)
            return
        if red is Reduction.FULL and self.spec.positions.kind is PositionKind.ALL:
            # Every position: one in-place copy (casting) per layer, no gather; each prompt's
            # padding (positions >= its length) is zeroed once per batch in finish().
            b, w = h.shape[:2]
            out = self._slot("values", b, (self.seq, *h.shape[2:]), self._dtype(), h.device, fill=None)
            out[:, li, :w].copy_(h)
            self._tails, self._tail_axis = ctx.lengths, 1
            return
        rows = ctx.rows[self.spec.name]
        sel = _gather_positions(h, rows, 1)
        if red is Reduction.TOP1:  # logits: the greedy prediction and its probability
            p, token = torch.softmax(sel.float(), dim=-1).max(dim=-1)
            tail, dev = (rows.shape[1],), h.device
            token = token.masked_fill(rows < 0, -1)
            self._slot("top1_token", h.shape[0], tail, torch.int32, dev, -1)[:, li] = token.int()
            self._slot("top1_prob", h.shape[0], tail, torch.float32, dev)[:, li] = p * (rows >= 0)
        elif red is Reduction.NORM:
            out = self._slot("norm", h.shape[0], (rows.shape[1],), torch.float32, h.device)
            out[:, li] = sel.float().norm(dim=-1)
        else:
            out = self._slot("values", h.shape[0], tuple(sel.shape[1:]), self._dtype(), h.device)
            out[:, li] = sel.to(out.dtype)

    def _dtype(self) -> torch.dtype:
        return getattr(torch, _STORE_DTYPE[self.spec.dtype])

    def _massive(self, li: int, h: torch.Tensor, ctx: BatchContext) -> None:
        """Stack |h| of this layer; reduce the stack once it is full or every layer is in.

        One top-k and two k-th value selections then cover every stacked layer: a handful
        of kernels per batch instead of per layer, and rows enough to fill a GPU.
        """
        b, s, d = h.shape
        if self._stack is None or self._stack.shape[1:] != (b, s, d):
            per_layer = b * s * d * 4
            depth = max(1, min(len(self.layer_index), MASSIVE_STACK_BYTES // per_layer))
            self._stack = torch.empty((depth, b, s, d), dtype=torch.float32, device=h.device)
        a = self._stack[len(self._pending)]
        a.copy_(h.detach())
        a.abs_()
        self._pending.append(li)
        self._n_massive += 1
        if len(self._pending) == self._stack.shape[0] or self._n_massive == len(self.layer_index):
            self._reduce_massive(ctx)

    def _reduce_massive(self, ctx: BatchContext) -> None:
        layers, self._pending = self._pending, []
        assert self._stack is not None
        a = self._stack[: len(layers)]  # (n, b, s, d), ours to overwrite
        n, b, s, d = a.shape
        if min(ctx.lengths) < s:  # padded positions can never be picked
            a.masked_fill_(_padding(ctx, s), -1.0)
        vals, idx = _topk_lowest_index_first(a.view(n, b, s * d), min(self.topk, s * d))
        pos = idx // d
        dim = idx - pos * d
        token = ctx.ids[None].expand(n, -1, -1).gather(2, pos)
        if min(ctx.lengths) * d < self.topk:  # a prompt with fewer entries than topk
            pad = vals < 0
            vals = vals.masked_fill(pad, float("nan"))
            pos, dim, token = (t.masked_fill(pad, -1) for t in (pos, dim, token))
            if vals.shape[2] < self.topk:  # even the batch's widest prompt has fewer
                more = (0, self.topk - vals.shape[2])
                vals = torch.nn.functional.pad(vals, more, value=float("nan"))
                pos, dim, token = (torch.nn.functional.pad(t, more, value=-1) for t in (pos, dim, token))
        k, dev = (self.topk,), a.device
        for name, t, dtype in (("top_values", vals, torch.float32), ("top_pos", pos, torch.int32),
                               ("top_dim", dim, torch.int32), ("top_token", token, torch.int32)):
            self._slot(name, b, k, dtype, dev)[:, layers] = t.transpose(0, 1).to(dtype)
        median = _medians(a, ctx)  # clobbers a
        self._slot("median_abs", b, (), torch.float32, dev)[:, layers] = median.transpose(0, 1)

    def on_attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: Any,
                     scaling: float, kwargs: dict[str, Any], ctx: BatchContext) -> None:
        """Consume post-rotary ``query``/``key`` (b, head, s, d_head) of ``layer``."""
        li = self.layer_index[layer]
        rows = ctx.rows[self.spec.name]
        heads = self._head_index(query.device, query.shape[1])
        point, b = self.spec.point, query.shape[0]
        if point in (CapturePoint.Q, CapturePoint.K):
            t = query if point is CapturePoint.Q else key
            if t.shape[1] != query.shape[1]:  # grouped-query keys: one per query head
                t = t.repeat_interleave(query.shape[1] // t.shape[1], dim=1)
            sel = _gather_positions(t if heads is None else t.index_select(1, heads), rows, 2)
            out = self._slot("values", b, tuple(sel.shape[1:]), self._dtype(), query.device)
            out[:, li] = sel.to(out.dtype)
            return
        if self.spec.reduction is Reduction.FULL and self.spec.positions.kind is PositionKind.ALL:
            self._full_pattern(li, query, key, mask, scaling, kwargs, ctx, heads)
            return
        memo = ctx.cache.setdefault(("attention_rows", self.spec.name), {})
        probs = attention_rows(query, key, rows, mask, scaling, kwargs, memo)
        if heads is not None:
            probs = probs.index_select(1, heads)
        if "padded" not in memo:
            memo["padded"] = (rows < 0)[:, None, :]
        padded = memo["padded"]  # (b, 1, q): rows past a prompt's selected positions
        if self.spec.reduction is Reduction.TOP1:  # stacked and blanked once, in finish()
            p, j = probs.max(dim=-1)
            self._top1.append((li, j, p))
            self._padded_rows = padded
        else:
            kv = probs.shape[-1]  # this batch's width; the stored kv axis is the padded length
            out = self._slot("values", b, (*probs.shape[1:-1], self.seq), self._dtype(), query.device)
            out[:, li, ..., :kv] = probs.masked_fill_(padded[..., None], 0.0)

    def _full_pattern(self, li: int, query: torch.Tensor, key: torch.Tensor, mask: Any, scaling: float,
                      kwargs: dict[str, Any], ctx: BatchContext, heads: torch.Tensor | None) -> None:
        """Every query row of ``layer``, the softmax written straight into the stored buffer.

        Its padding (rows past each prompt's length, keys past the batch width) is zeroed
        by finish().
        """
        b, s = query.shape[0], query.shape[2]
        nh = query.shape[1] if heads is None else heads.numel()
        out = self._slot("values", b, (nh, self.seq, self.seq), self._dtype(), query.device, fill=None)
        view = out[:, li, :, :s, : key.shape[2]]
        memo = ctx.cache.setdefault(("attention_probs", self.spec.name), {})
        if view.dtype == torch.float32:
            attention_probs(query, key, mask, scaling, kwargs, heads, out=view, memo=memo)
        else:
            view.copy_(attention_probs(query, key, mask, scaling, kwargs, heads, memo=memo))
        self._tails, self._tail_axis, self._width = ctx.lengths, 2, s

    def _stack_top1(self) -> None:
        """Top-1 keys and probabilities of every layer, (b, layer, head, q), padded rows blank.

        A few kernels per batch; per layer only the max itself ran.
        """
        if len(self._top1) != len(self.layer_index):
            raise RuntimeError(f"probe {self.spec.name!r}: hooks did not fire for every layer")
        assert self._padded_rows is not None
        _, keys, probs = zip(*sorted(self._top1, key=lambda t: t[0]), strict=True)
        pad = self._padded_rows[:, None]  # (b, 1, 1, q)
        with torch.inference_mode():
            self._buf["top1_key"] = torch.stack(keys, dim=1).masked_fill_(pad, -1).int()
            self._buf["top1_prob"] = torch.stack(probs, dim=1).masked_fill_(pad, 0.0)

    def finish(self) -> dict[str, torch.Tensor]:
        """This batch's buffers (on the model's device), shaped like the stored datasets."""
        if self._pending:  # stacked layers are reduced once every probed layer is in
            raise RuntimeError(f"probe {self.spec.name!r}: hooks did not fire for its last layer")
        if self._top1:
            self._stack_top1()
        missing = {d.name for d in self.datasets()} - set(self._buf) - {"query_pos"}
        if missing:
            raise RuntimeError(f"probe {self.spec.name!r}: hooks did not fire for {sorted(missing)}")
        if self._tails:
            values = self._buf["values"]
            axis = self._tail_axis  # the position axis of values[i]
            with torch.inference_mode():  # the buffers were made inside the forward pass
                for i, n in enumerate(self._tails):
                    if n < values.shape[axis + 1]:
                        values[i].narrow(axis, n, values.shape[axis + 1] - n).zero_()
                    if axis == 2 and self._width < self.seq:  # attention: keys past the batch width
                        values[i, :, :, :n, self._width :].zero_()
        return dict(self._buf)


def _datasets(rt: ProbeRuntime) -> list[DatasetSpec]:
    spec, n, lay = rt.spec, rt.n_prompts, len(rt.layer_index)
    P, L, H = Axis.PROMPT, Axis.LAYER, Axis.HEAD
    pos_axis = Axis.QUERY if rt.selects_positions else Axis.SEQ
    npos = rt.n_query if rt.selects_positions else rt.seq
    nh = len(spec.heads or ())
    out: list[DatasetSpec] = []
    if rt.selects_positions:
        out.append(DatasetSpec("query_pos", (n, npos), "int32", (P, Axis.QUERY)))
    if spec.reduction is Reduction.MASSIVE:
        k = (n, lay, rt.topk)
        out += [DatasetSpec("top_values", k, "float32", (P, L, Axis.TOPK))]
        out += [DatasetSpec(x, k, "int32", (P, L, Axis.TOPK)) for x in ("top_pos", "top_dim", "top_token")]
        out.append(DatasetSpec("median_abs", (n, lay), "float32", (P, L)))
    elif spec.reduction is Reduction.NORM:
        out.append(DatasetSpec("norm", (n, lay, npos), "float32", (P, L, pos_axis)))
    elif spec.reduction is Reduction.TOP1 and spec.point is CapturePoint.LOGITS:
        out.append(DatasetSpec("top1_token", (n, lay, npos), "int32", (P, L, pos_axis)))
        out.append(DatasetSpec("top1_prob", (n, lay, npos), "float32", (P, L, pos_axis)))
    elif spec.reduction is Reduction.TOP1:
        shape = (n, lay, nh, npos)
        out.append(DatasetSpec("top1_key", shape, "int32", (P, L, H, pos_axis)))
        out.append(DatasetSpec("top1_prob", shape, "float32", (P, L, H, pos_axis)))
    elif spec.point is CapturePoint.LOGITS:
        dt = _STORE_DTYPE[spec.dtype]
        out.append(DatasetSpec("values", (n, lay, npos, rt.vocab), dt, (P, L, pos_axis, Axis.VOCAB)))
    elif spec.point.is_residual_like:
        dt = _STORE_DTYPE[spec.dtype]
        out.append(DatasetSpec("values", (n, lay, npos, rt.d_model), dt, (P, L, pos_axis, Axis.D_MODEL)))
    elif spec.point is CapturePoint.ATTN_PATTERN:
        dt = _STORE_DTYPE[spec.dtype]
        shape5: tuple[int, ...] = (n, lay, nh, npos, rt.seq)
        out.append(DatasetSpec("values", shape5, dt, (P, L, H, pos_axis, Axis.KV_SEQ)))
    else:
        dt = _STORE_DTYPE[spec.dtype]
        shape5 = (n, lay, nh, npos, rt.d_head)
        out.append(DatasetSpec("values", shape5, dt, (P, L, H, pos_axis, Axis.D_HEAD)))
    return out
