"""On-device reductions: turn what a hook sees into the arrays a probe stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalelens.axes import Axis
from scalelens.hooks.attention import attention_rows
from scalelens.hooks.points import CapturePoint
from scalelens.probes.spec import PositionKind, ProbeSpec, Reduction

_STORE_DTYPE = {"float16": "float16", "bfloat16": "float32", "float32": "float32"}


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


def _medians(a: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Median of each prompt's valid entries of ``a`` (b, s, d), numpy convention (even: mean)."""
    out = torch.empty(a.shape[0], dtype=torch.float32, device=a.device)
    for i, n in enumerate(lengths):
        x = a[i, :n].reshape(-1)
        lo = torch.kthvalue(x, (x.numel() + 1) // 2).values
        hi = torch.kthvalue(x, x.numel() // 2 + 1).values
        out[i] = (lo + hi) / 2
    return out


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

    def _slot(self, name: str, b: int, tail: tuple[int, ...], dtype: torch.dtype,
              device: torch.device, fill: float = 0) -> torch.Tensor:
        if name not in self._buf:
            shape = (b, len(self.layer_index), *tail)
            self._buf[name] = torch.full(shape, fill, dtype=dtype, device=device)
        return self._buf[name]

    def on_residual(self, layer: int, h: torch.Tensor, ctx: BatchContext) -> None:
        """Consume a module output (b, s, d_model or vocab) of ``layer``."""
        li = self.layer_index[layer]
        red = self.spec.reduction
        if red is Reduction.MASSIVE:
            self._massive(li, h, ctx)
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
        b, s, d = h.shape
        a = h.detach().float().abs()
        valid = ctx.valid[:, :s, None]
        flat_top = a.masked_fill(~valid, -1.0).reshape(b, s * d)
        vals, idx = flat_top.topk(self.topk, dim=1)
        pad = vals < 0
        pos, dim = idx // d, idx % d
        token = ctx.ids.gather(1, pos).masked_fill(pad, -1)
        k, dev = (self.topk,), h.device
        self._slot("top_values", b, k, torch.float32, dev)[:, li] = vals.masked_fill(pad, float("nan"))
        self._slot("top_pos", b, k, torch.int32, dev)[:, li] = pos.masked_fill(pad, -1).int()
        self._slot("top_dim", b, k, torch.int32, dev)[:, li] = dim.masked_fill(pad, -1).int()
        self._slot("top_token", b, k, torch.int32, dev)[:, li] = token.int()
        self._slot("median_abs", b, (), torch.float32, dev)[:, li] = _medians(a, ctx.lengths)

    def on_attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: Any,
                     scaling: float, kwargs: dict[str, Any], ctx: BatchContext) -> None:
        """Consume post-rotary ``query``/``key`` (b, head, s, d_head) of ``layer``."""
        li = self.layer_index[layer]
        rows = ctx.rows[self.spec.name]
        heads = torch.tensor(self.spec.heads, device=query.device)
        point, b = self.spec.point, query.shape[0]
        if point in (CapturePoint.Q, CapturePoint.K):
            t = query if point is CapturePoint.Q else key
            if t.shape[1] != query.shape[1]:  # grouped-query keys: one per query head
                t = t.repeat_interleave(query.shape[1] // t.shape[1], dim=1)
            sel = _gather_positions(t.index_select(1, heads), rows, 2)
            out = self._slot("values", b, tuple(sel.shape[1:]), self._dtype(), query.device)
            out[:, li] = sel.to(out.dtype)
            return
        probs = attention_rows(query, key, rows, mask, scaling, kwargs).index_select(1, heads)
        probs = probs * (rows >= 0)[:, None, :, None]
        if self.spec.reduction is Reduction.TOP1:
            p, j = probs.max(dim=-1)
            j = j.masked_fill((rows < 0)[:, None, :], -1)
            tail = tuple(p.shape[1:])
            self._slot("top1_key", b, tail, torch.int32, query.device, -1)[:, li] = j.int()
            self._slot("top1_prob", b, tail, torch.float32, query.device)[:, li] = p
        else:
            out = self._slot("values", b, tuple(probs.shape[1:]), self._dtype(), query.device)
            out[:, li] = probs.to(out.dtype)

    def finish(self) -> dict[str, np.ndarray]:
        """Move this batch's buffers to host numpy arrays."""
        missing = {d.name for d in self.datasets()} - set(self._buf) - {"query_pos"}
        if missing:
            raise RuntimeError(f"probe {self.spec.name!r}: hooks did not fire for {sorted(missing)}")
        return {name: t.cpu().numpy() for name, t in self._buf.items()}


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
