"""Read per-head queries, keys and attention probabilities while the model keeps its kernel.

Fused attention (SDPA) returns no attention weights. scalelens therefore
registers a thin wrapper attention function with transformers' attention registry:
it calls the model's own implementation for the output, unchanged, and hands the
post-rotary query and key tensors to the active capture, which computes the
probability rows a probe needs itself. The model's ``_attn_implementation`` is
switched to the wrapper only inside :func:`attention_tap` and restored in ``finally``;
the capture records ``attention_capture`` in the file attributes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from scalelens.errors import ScalelensError
from scalelens.hooks.arch import arch_for, check_points
from scalelens.hooks.points import CapturePoint

TAP_PREFIX = "scalelens_"

# attention module id -> (layer index, inner implementation, callback). The callback gets
# (layer, query, key, mask, scaling, kwargs) and may return a replacement query tensor
# (used by head ablation); None leaves the computation untouched.
TapCallback = Callable[
    [int, torch.Tensor, torch.Tensor, Any, float, dict[str, Any]], torch.Tensor | None
]
_ACTIVE: dict[int, tuple[int, str, TapCallback]] = {}


def _inner_function(module: nn.Module, inner: str) -> Callable[..., Any]:
    if inner == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[inner]


def _make_tapped(inner: str) -> Callable[..., Any]:
    """The wrapper registered as ``scalelens_<inner>``: tap, then run ``inner`` unchanged."""

    def tapped(module: nn.Module, query: torch.Tensor, key: torch.Tensor, *args, **kwargs):
        entry = _ACTIVE.get(id(module))
        if entry is not None:
            layer, _, callback = entry
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            scaling = kwargs.get("scaling")
            scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
            replaced = callback(layer, query, key, mask, float(scaling), kwargs)
            if replaced is not None:
                query = replaced
        return _inner_function(module, inner)(module, query, key, *args, **kwargs)

    return tapped


def _register(inner: str) -> str:
    name = TAP_PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_tapped(inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


@contextmanager
def attention_tap(model: Any, modules: dict[int, nn.Module], callback: TapCallback) -> Iterator[str]:
    """Route ``modules`` (layer -> attention module) through ``callback`` while inside.

    Yields the name of the inner implementation that still computes the outputs. A family
    whose attention does not go through transformers' registry is refused (one line).
    """
    check_points(model, [CapturePoint.ATTN_PATTERN])
    inner = model.config._attn_implementation or "eager"
    if inner.startswith(TAP_PREFIX) or any(_UPCAST in vars(m) or _OWN in vars(_own_module(m))
                                           or id(m) in _FUSED for m in modules.values()):
        raise ScalelensError(
            "per-head probes are already being read from this model's attention (another attach() "
            "with attn/q/k/top1 probes, or a measure, is open on it); close that one first, or put "
            "all per-head probes in one attach()"
        )
    if "flash" in inner or "flex" in inner:
        # transformers picks the flash kernel by the implementation's name (a renamed one has
        # none), and flex hands over a BlockMask instead of a mask tensor
        raise ScalelensError(
            f"per-head probes (attn, q, k, top1, retrieval, text dominance) cannot tap {inner}; "
            "load the model with attn_implementation='sdpa' (or 'eager') for them"
        )
    if inner == "eager" and any(getattr(m, "reorder_and_upcast_attn", False) for m in modules.values()):
        with _upcast_tap(modules, callback):  # GPT-2's upcast path runs only under "eager"
            yield inner
        return
    if arch_for(model).own_attn:
        with _own_attn_tap(modules, callback):
            yield inner
        return
    if arch_for(model).proj_tap:
        with _projection_tap(modules, callback, arch_for(model).proj_tap):
            yield inner
        return
    name = _register(inner)
    for layer, module in modules.items():
        _ACTIVE[id(module)] = (layer, inner, callback)
    model.set_attn_implementation(name)
    try:
        yield inner
    finally:
        model.set_attn_implementation(inner)
        for module in modules.values():
            _ACTIVE.pop(id(module), None)


_UPCAST = "_upcast_and_reordered_attn"


@contextmanager
def _upcast_tap(modules: dict[int, nn.Module], callback: TapCallback) -> Iterator[None]:
    """Tap GPT-2 attention with ``reorder_and_upcast_attn`` (Stanford CRFM's suites).

    Under an implementation named ``eager`` it calls its own upcast method instead of
    the attention registry, so the method is wrapped on each instance and the
    implementation keeps its name.
    """
    for layer, module in modules.items():
        setattr(module, _UPCAST, _tapped_upcast(layer, module, getattr(module, _UPCAST), callback))
    try:
        yield
    finally:
        for module in modules.values():
            vars(module).pop(_UPCAST, None)


def _tapped_upcast(layer: int, module: nn.Module, method: Callable[..., Any],
                   callback: TapCallback) -> Callable[..., Any]:
    def tapped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None):
        replaced = callback(layer, query, key, attention_mask, float(module.scaling), {})  # type: ignore[arg-type]
        return method(query if replaced is None else replaced, key, value, attention_mask)

    return tapped


_OWN = "_attn"


def _own_module(module: nn.Module) -> nn.Module:
    """The module whose ``_attn`` computes attention: GPT-Neo's inner ``attention``, else itself."""
    inner = getattr(module, "attention", None)
    return inner if isinstance(inner, nn.Module) else module


@contextmanager
def _own_attn_tap(modules: dict[int, nn.Module], callback: TapCallback) -> Iterator[None]:
    """Tap attention computed in the module's own ``_attn(query, key, value, mask)``.

    GPT-Neo (in its ``attention`` sub-module) and GPT-NeoX Japanese compute attention there, from
    post-rotary queries and keys (the cached ones included) and the model's mask, rather than
    through the registry. The method is wrapped on each instance. GPT-Neo does not scale its
    scores, and its local layers keep their sliding window in a causal buffer (``bias``) instead
    of the mask they are passed, so the tap gets that buffer folded into the mask; GPT-NeoX
    Japanese divides its scores by ``norm_factor``.
    """
    for layer, module in modules.items():
        inner = _own_module(module)
        setattr(inner, _OWN, _tapped_own(layer, inner, getattr(inner, _OWN), callback))
    try:
        yield
    finally:
        for module in modules.values():
            vars(_own_module(module)).pop(_OWN, None)


def _tapped_own(layer: int, module: nn.Module, method: Callable[..., Any],
                callback: TapCallback) -> Callable[..., Any]:
    scaling = 1.0 / float(getattr(module, "norm_factor", 1.0))

    def tapped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None):
        mask, window = attention_mask, module._buffers.get("bias")  # read now: .to() replaces buffers
        if window is not None:
            q, kv = query.shape[-2], key.shape[-2]
            allowed = window[:, :, kv - q:kv, :kv]  # causal, and the local window
            if attention_mask is None:
                mask = allowed.expand(query.shape[0], -1, -1, -1)
            else:
                mask = attention_mask.masked_fill(~allowed, float("-inf"))
        replaced = callback(layer, query, key, mask, scaling, {})
        return method(query if replaced is None else replaced, key, value, attention_mask)

    return tapped


_FUSED: set[int] = set()  # attention modules whose projections are tapped now


@contextmanager
def _projection_tap(modules: dict[int, nn.Module], callback: TapCallback, kind: str) -> Iterator[None]:
    """Tap attention computed in the module's own forward, at its query projection.

    A pre-hook on the attention module keeps its call's mask and cache. ``kind``
    ``"fused_alibi"`` (BLOOM): a hook on the fused ``query_key_value`` projection splits queries
    and keys from its output and hands them over with the layer's ALiBi bias as
    ``kwargs["alibi"]`` (batch, head, 1, kv); the pre-hook gives the layer its own copy of that
    bias (the model builds one for all layers), so a callback may edit it in place and the layer
    adds the edited bias (BLOOM fixes its scale, ``beta``, at 1.0). ``"q_proj"`` (XGLM): a hook
    on ``q_proj`` hands over its output and the keys ``k_proj`` makes of the same input. Keys
    follow the cached ones while decoding. A callback may return a replacement query (head
    ablation), written back into the projection's output. ``"split_heads"`` (Falcon): see
    :func:`_falcon_split`. ``"chunked_alibi"`` (MPT): see :func:`_mpt_split`.
    """
    handles = []
    for layer, module in modules.items():
        call: dict[str, Any] = {}
        handles.append(module.register_forward_pre_hook(_keep_call(call), with_kwargs=True))
        if kind == "fused_alibi":
            hook, proj = _split_fused(layer, module, call, callback), "query_key_value"
        elif kind == "split_heads":
            hook, proj = _falcon_split(layer, module, call, callback), "query_key_value"
            handles.append(module.register_forward_hook(_restore_mask(call), always_call=True))
        elif kind == "chunked_alibi":
            hook, proj = _mpt_split(layer, module, call, callback), "Wqkv"
        else:
            hook, proj = _q_and_k(layer, module, call, callback), "q_proj"
        handles.append(module.get_submodule(proj).register_forward_hook(hook))
        _FUSED.add(id(module))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in modules.values():
            _FUSED.discard(id(module))


_SHARED_BIAS = ("alibi", "position_bias")  # BLOOM's and Falcon's, MPT's: one tensor for all layers


def _keep_call(call: dict[str, Any]) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
        for name in _SHARED_BIAS:
            if kwargs.get(name) is not None:  # shared by all layers: this layer's own
                kwargs = {**kwargs, name: kwargs[name].clone()}
        call.clear()
        call.update(kwargs)
        return args, kwargs

    return keep


def _with_cached(key: torch.Tensor, call: dict[str, Any], layer: int) -> torch.Tensor:
    past = _cached_keys(call.get("layer_past", call.get("cache")), layer)
    return key if past is None else torch.cat([past, key], dim=2)


def _split_fused(layer: int, module: Any, call: dict[str, Any],
                 callback: TapCallback) -> Callable[..., torch.Tensor | None]:
    def split(proj: nn.Module, args: Any, fused: torch.Tensor) -> torch.Tensor | None:
        b, s = fused.shape[:2]
        h, d = module.num_heads, module.head_dim
        heads = fused.view(b, s, h, 3, d)
        query, key = heads[..., 0, :].transpose(1, 2), heads[..., 1, :].transpose(1, 2)
        key = _with_cached(key, call, module.layer_idx)
        alibi = call["alibi"].view(b, h, 1, -1)[..., :key.shape[2]]
        replaced = callback(layer, query, key, call.get("attention_mask"), float(module.inv_norm_factor),
                            {"alibi": alibi})
        if replaced is None:
            return None
        fused = fused.clone()
        fused.view(b, s, h, 3, d)[..., 0, :] = replaced.transpose(1, 2)
        return fused

    return split


def _q_and_k(layer: int, module: Any, call: dict[str, Any],
             callback: TapCallback) -> Callable[..., torch.Tensor | None]:
    def split(proj: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        b, s = out.shape[:2]
        h, d = module.num_heads, module.head_dim
        query = out.view(b, s, h, d).transpose(1, 2)
        key = _with_cached(module.k_proj(args[0]).view(b, s, h, d).transpose(1, 2), call, module.layer_idx)
        replaced = callback(layer, query, key, call.get("attention_mask"), float(module.scaling), {})
        return None if replaced is None else replaced.transpose(1, 2).reshape(b, s, h * d)

    return split


def _mpt_split(layer: int, module: Any, call: dict[str, Any],
               callback: TapCallback) -> Callable[..., torch.Tensor | None]:
    """Tap MPT at its fused ``Wqkv`` projection, whose output is chunked into q, k, v thirds.

    Queries and keys are clamped to ``clip_qkv`` first, as the module does. The module adds
    the ALiBi ``position_bias`` it is passed (head, 1, max_seq_len; its last kv columns) and
    fills the keys its boolean mask marks True with the dtype's minimum: the callback gets the
    bias as ``kwargs["alibi"]`` (1, head, 1, kv), a view of this layer's own copy (an edit in
    place is what the layer adds), and the mask inverted (True: allowed). A replacement query
    is written back into the projection's output; under ``clip_qkv`` one the clamp would change
    is refused.
    """

    def split(proj: nn.Module, args: Any, fused: torch.Tensor) -> torch.Tensor | None:
        b, s = fused.shape[:2]
        h, d, clip = module.n_heads, module.head_dim, module.clip_qkv
        qkv = fused.clamp(min=-clip, max=clip) if clip else fused
        query = qkv[..., :h * d].reshape(b, s, h, d).transpose(1, 2)
        key = qkv[..., h * d:2 * h * d].reshape(b, s, h, d).transpose(1, 2)
        key = _with_cached(key, call, module.layer_idx)
        kwargs, bias = {}, call.get("position_bias")
        if bias is not None:
            kwargs["alibi"] = bias[:, :, max(0, bias.shape[2] - key.shape[2]):][None]
        mask = call.get("attention_mask")
        replaced = callback(layer, query, key, None if mask is None else ~mask, float(module.softmax_scale),
                            kwargs)
        if replaced is None:
            return None
        if clip and replaced.abs().max() > clip:
            raise ScalelensError(f"mpt's tap cannot write back a query beyond clip_qkv={clip}: the "
                                 "module clamps the projection the replacement is written to")
        fused = fused.clone()
        fused[..., :h * d] = replaced.transpose(1, 2).reshape(b, s, h * d).to(fused.dtype)
        return fused

    return split


def _falcon_split(layer: int, module: Any, call: dict[str, Any],
                  callback: TapCallback) -> Callable[..., torch.Tensor | None]:
    """Tap Falcon at its fused ``query_key_value`` projection, in any of its three layouts.

    Queries and keys come from the module's own ``_split_heads`` and, without ALiBi, its
    modelling code's ``apply_rotary_pos_emb`` with the position embeddings the call is passed.
    With ALiBi the model puts the scaled bias into the mask it passes every layer and, in its
    eager branch, adds it once more: the callback gets the allowed keys as a boolean mask and
    the bias the layer adds as ``kwargs["alibi"]`` (batch, head, 1, kv), and the heads whose
    bias it edits are given that bias alone (their rows of the shared mask, restored after the
    layer). A replacement query is written back into the projection's output; under rotary
    only zeroed heads (a zero query stays zero when rotated), anything else is refused.
    """
    own = sys.modules[type(module).__module__]

    def split(proj: nn.Module, args: Any, fused: torch.Tensor) -> torch.Tensor | None:
        query, key = _falcon_q_k(module, fused, call, own)
        key = _with_cached(key, call, module.layer_idx)
        mask, kwargs = call.get("attention_mask"), {}
        if call.get("alibi") is not None:
            mask, kwargs["alibi"] = _falcon_bias(module, call, key.shape[2])
            kept = kwargs["alibi"].clone()
        replaced = callback(layer, query, key, mask, float(module.inv_norm_factor), kwargs)
        if "alibi" in kwargs:
            _write_bias(module, call, kwargs["alibi"], kept)
        if replaced is None:
            return None
        return _write_query(module, fused, query, replaced, rotary="alibi" not in kwargs)

    return split


def _falcon_q_k(module: Any, fused: torch.Tensor, call: dict[str, Any],
                own: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Falcon's queries and keys (batch, head, seq, d) as its forward makes them, post-rotary."""
    b, s = fused.shape[:2]
    h, d = module.num_heads, module.head_dim
    query, key, _ = module._split_heads(fused)
    kv_heads = h if module.new_decoder_architecture else module.num_kv_heads
    query = query.transpose(1, 2).reshape(b, h, s, d)
    key = key.transpose(1, 2).reshape(b, kv_heads, s, d)
    if call.get("alibi") is None:
        cos, sin = call["position_embeddings"]
        query, key = own.apply_rotary_pos_emb(query, key, cos, sin)
    return query, key


def _falcon_bias(module: Any, call: dict[str, Any], kv: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The keys Falcon's ALiBi mask allows (b, 1, q, kv; None: causal) and the bias its layer adds."""
    h = module.num_heads
    alibi = call["alibi"].view(-1, h, 1, call["alibi"].shape[-1])[..., :kv]  # (b, h, 1, kv) or (b * h, 1, kv)
    mask = call.get("attention_mask")
    bias = torch.zeros(alibi.shape, dtype=torch.float32, device=alibi.device)
    allowed = None
    if mask is not None and mask.dim() == 4:  # the model's mask: min where blocked, else alibi / sqrt(d)
        allowed = mask[:, :1] > torch.finfo(mask.dtype).min
        bias += (alibi / math.sqrt(module.head_dim)).float()
    if module.config._attn_implementation != "sdpa" or call.get("output_attentions"):
        bias += alibi.float() * module.inv_norm_factor  # its eager branch: (q k^T + alibi) / sqrt(d) + mask
    return allowed, bias


def _write_bias(module: Any, call: dict[str, Any], bias: torch.Tensor, kept: torch.Tensor) -> None:
    """Give the heads whose bias a callback edited that bias alone, in the mask the layer adds."""
    heads = (bias != kept).flatten(2).any(-1).any(0).nonzero().flatten()
    if not len(heads):
        return
    mask = call.get("attention_mask")
    if mask is None or mask.dim() != 4:
        raise ScalelensError("falcon's tap cannot write an edited ALiBi bias back without the model's "
                             "4-D mask")
    b, h = bias.shape[:2]
    call["alibi"].view(b, h, 1, -1)[:, heads] = 0
    call["restore"] = (mask, heads, mask[:, heads].clone())
    blocked = mask[:, :1] == torch.finfo(mask.dtype).min
    mask[:, heads] = bias[:, heads].to(mask.dtype).expand(-1, -1, mask.shape[2], -1).masked_fill(
        blocked, torch.finfo(mask.dtype).min)


def _restore_mask(call: dict[str, Any]) -> Callable[..., None]:
    def restore(module: nn.Module, args: Any, output: Any) -> None:
        kept = call.pop("restore", None)
        if kept is not None:  # the mask is the model's, shared by all layers
            mask, heads, rows = kept
            mask[:, heads] = rows

    return restore


def _write_query(module: Any, fused: torch.Tensor, query: torch.Tensor, replaced: torch.Tensor,
                 rotary: bool) -> torch.Tensor | None:
    """``fused`` with the query heads ``replaced`` changes written back (columns from ``_split_heads``)."""
    if replaced is query:  # edited in place: every head counts as replaced
        heads = torch.ones(query.shape[1], dtype=torch.bool, device=query.device)
    else:
        heads = (replaced != query).flatten(2).any(-1).any(0)
    if not heads.any():
        return None
    if rotary and replaced[:, heads].any():
        raise ScalelensError("falcon's tap can only zero a rotary query head: its rotation is applied "
                             "after the projection a replacement is written back to")
    width = fused.shape[-1]
    columns = module._split_heads(torch.arange(width, device=fused.device).view(1, 1, width))[0][0, 0]
    b, s, picked = fused.shape[0], fused.shape[1], columns[heads].flatten()
    fused = fused.clone()
    fused[..., picked] = replaced[:, heads].transpose(1, 2).reshape(b, s, -1).to(fused.dtype)
    return fused


def _cached_keys(cache: Any, layer: int) -> torch.Tensor | None:
    """Keys a cache holds for ``layer`` before this call, (batch, head, n, d_head), or None."""
    if cache is None or layer >= len(cache.layers) or not cache.layers[layer].is_initialized:
        return None
    n = cache.layers[layer].get_seq_length()
    return cache.layers[layer].keys[..., :n, :]


def _repeat_kv(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    groups = n_heads // key.shape[1]
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def _masked_scores(
    scores: torch.Tensor, rows: torch.Tensor | None, mask: Any, kwargs: dict[str, Any], offset: int,
    memo: dict[Any, Any],
) -> torch.Tensor:
    """Apply the model's mask (or a causal one) in place to scores of shape (b, h, q, kv).

    ``rows``: the query index of each score row (b, q), or None when the rows are all the
    queries in order. ``offset`` is the number of cached keys before the first query
    (decoding steps); ``memo`` keeps the causal block for further layers with the same rows.
    """
    q, kv = scores.shape[-2:]
    if mask is not None and mask.dim() == 4:
        if rows is None:
            picked = mask[:, :, :q, :kv]
        else:
            idx = rows.clamp(min=0)[:, None, :, None].expand(-1, mask.shape[1], -1, kv)
            picked = mask[:, :, :, :kv].gather(2, idx)
        if picked.dtype == torch.bool:
            return scores.masked_fill_(~picked, float("-inf"))
        return scores.add_(picked.to(scores.dtype))
    window = kwargs.get("sliding_window")
    key = ("blocked", rows is None, q, kv, offset, window)
    if key not in memo:  # absolute position of each query row, then the keys it may not see
        if rows is None:
            memo[key] = _blocked(torch.arange(q, device=scores.device)[:, None] + offset, kv, window)
        else:
            memo[key] = _blocked(rows[:, :, None] + offset, kv, window)[:, None]
    return scores.masked_fill_(memo[key], float("-inf"))


def _blocked(pos: torch.Tensor, kv: int, window: int | None) -> torch.Tensor:
    """True where a query at position ``pos`` (trailing axis 1) may not see key j < ``kv``.

    Blocked: a later key, or one outside the sliding window.
    """
    keys = torch.arange(kv, device=pos.device)
    blocked = keys > pos
    if window:
        blocked |= keys <= pos - window
    return blocked


def _probs(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor | None, mask: Any, scaling: float,
           kwargs: dict[str, Any], offset: int, memo: dict[Any, Any],
           out: torch.Tensor | None = None, heads: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(mask(softcap(q k^T * scaling))) in float32, in place after the product.

    An ALiBi bias (``kwargs["alibi"]``, (batch, head, 1, kv)) is added to the scaled scores.
    With attention sinks (GPT-OSS passes a learned logit per query head as ``s_aux``) each
    row's softmax also takes its head's sink logit, whose share is dropped afterwards, as the
    model's eager attention does: such rows sum to less than 1. ``heads``: the query heads
    ``q`` holds (a device index), or None for all.
    """
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scaling)
    softcap = kwargs.get("softcap")
    if softcap:
        scores.div_(softcap).tanh_().mul_(softcap)
    alibi = kwargs.get("alibi")
    if alibi is not None:  # BLOOM's per-head linear bias, added before the mask
        scores.add_(alibi.float() if heads is None else alibi.float().index_select(1, heads))
    scores = _masked_scores(scores, rows, mask, kwargs, offset, memo)
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        sinks = sinks.float() if heads is None else sinks.float().index_select(0, heads)
        sink = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        probs = out.copy_(probs) if out is not None else probs.contiguous()
    else:
        probs = torch.softmax(scores, dim=-1, out=out) if out is not None else torch.softmax(scores, dim=-1)
    return probs if mask is None else probs.nan_to_num_(0.0)  # a row a mask blocks entirely: NaN


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    mask: Any,
    scaling: float,
    kwargs: dict[str, Any],
    memo: dict[Any, Any] | None = None,
) -> torch.Tensor:
    """Attention probabilities for selected query rows.

    Args:
        query: (batch, head, seq, d_head) post-rotary queries.
        key: (batch, kv_head, kv_seq, d_head) post-rotary keys.
        rows: (batch, n_rows) int64 query indices into ``query``'s seq axis; -1 marks padding
            (such rows come back as garbage for the caller to mask).
        mask: The mask the model passed to its attention function (4-D or None).
        scaling: Softmax scaling the model uses.
        kwargs: The attention call's keyword arguments (``softcap``, ``sliding_window``,
            ``s_aux``: attention sinks).
        memo: A dict kept across the layers of one batch (same ``rows``): the row index and
            the causal block are built once in it instead of per layer.

    Returns:
        (batch, head, n_rows, kv_seq) float32 probabilities.
    """
    memo = {} if memo is None else memo
    h, d = query.shape[1], query.shape[-1]
    idx = memo.get(("idx", h, d))
    if idx is None:
        idx = memo[("idx", h, d)] = rows.clamp(min=0)[:, None, :, None].expand(-1, h, -1, d)
    q = query.gather(2, idx)
    return _probs(q, _repeat_kv(key, h), rows, mask, scaling, kwargs, key.shape[2] - query.shape[2], memo)


def attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: Any,
    scaling: float,
    kwargs: dict[str, Any],
    heads: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    memo: dict[Any, Any] | None = None,
) -> torch.Tensor:
    """Attention probabilities of every query row.

    :func:`attention_rows` without the row gather, the softmax written into ``out``.

    Args:
        query: (batch, head, seq, d_head) post-rotary queries.
        key: (batch, kv_head, kv_seq, d_head) post-rotary keys.
        mask: The mask the model passed to its attention function (4-D or None).
        scaling: Softmax scaling the model uses.
        kwargs: The attention call's keyword arguments (``softcap``, ``sliding_window``,
            ``s_aux``: attention sinks).
        heads: Query heads to keep (a device index), or None for all.
        out: (batch, head, seq, kv_seq) float32 tensor to write into, or None.
        memo: As for :func:`attention_rows` (the causal block, built once per batch).

    Returns:
        (batch, head, seq, kv_seq) float32 probabilities (``out`` when given).
    """
    k = _repeat_kv(key, query.shape[1])
    q = query
    if heads is not None:
        q, k = q.index_select(1, heads), k.index_select(1, heads)
    offset = key.shape[2] - query.shape[2]
    return _probs(q, k, None, mask, scaling, kwargs, offset, {} if memo is None else memo, out, heads)
