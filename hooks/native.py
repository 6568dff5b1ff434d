"""Native backend: plain torch forward hooks on the unmodified HF modules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from scalelens.hooks.arch import decoder_layers, layer_part
from scalelens.hooks.points import CapturePoint

Sink = Callable[[CapturePoint, int, torch.Tensor], None]


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def _module_and_kind(model: Any, point: CapturePoint, layer: int) -> tuple[nn.Module, str]:
    if point is CapturePoint.RESID_PRE:
        return decoder_layers(model)[layer], "pre"
    if point is CapturePoint.RESID_POST:
        return decoder_layers(model)[layer], "post"
    if point is CapturePoint.ATTN_OUT:
        return layer_part(model, layer, "attn"), "post"
    if point is CapturePoint.MLP_OUT:
        return layer_part(model, layer, "mlp"), "post"
    if point is CapturePoint.LOGITS:
        return model.get_output_embeddings(), "post"
    raise ValueError(f"{point} is not a module-output point")


def _batch_shape(model: nn.Module, handles: list[Any]) -> dict[str, int]:
    """Record the batch size each forward pass runs (read by hooks whose module flattens it)."""
    seen: dict[str, int] = {}

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        seen["b"] = h.shape[0]

    handles.append(decoder_layers(model)[0].register_forward_pre_hook(pre, with_kwargs=True))
    return seen


@contextmanager
def native_hooks(model: nn.Module, wanted: set[tuple[CapturePoint, int]], sink: Sink) -> Iterator[None]:
    """Register forward hooks for ``wanted`` (point, layer) pairs; remove them on exit."""
    handles: list[Any] = []
    try:
        batch = _batch_shape(model, handles) if any(p.is_residual_like for p, _ in wanted) else {}
        for point, layer in sorted(wanted):
            module, kind = _module_and_kind(model, point, layer)
            if kind == "pre":
                def pre(_m, args, kwargs, p=point, i=layer):
                    sink(p, i, args[0] if args else kwargs["hidden_states"])
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(_m, _args, output, p=point, i=layer):
                    h = _first(output)
                    if h.dim() == 2 and p.is_residual_like:  # OPT's feed-forward: (b * s, d) rows
                        h = h.view(batch["b"], -1, h.shape[-1])
                    sink(p, i, h)
                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _PaddingNotice(logging.Filter):
    """Drops transformers' "pass an attention_mask" notice (GPT-2 prints it for padded ids).

    scalelens right-pads on purpose and runs without a mask (README: under causal attention no
    real token sees a later padding key), so the notice would only mislead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "recommend passing in an `attention_mask`" not in record.getMessage()


_PADDING_NOTICE = _PaddingNotice()


@contextmanager
def _no_padding_notice() -> Iterator[None]:
    log = logging.getLogger("transformers.modeling_utils")
    log.addFilter(_PADDING_NOTICE)
    try:
        yield
    finally:
        log.removeFilter(_PADDING_NOTICE)


class _StopForward(Exception):
    """Raised right after the last decoder layer a capture needs; caught by :func:`forward`."""


def _stop(_module: nn.Module, _args: object, _output: object) -> None:
    raise _StopForward


def forward(model: Any, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
            logits: bool = False, stop_after: int | None = None,
            inputs_embeds: torch.Tensor | None = None,
            logits_to_keep: torch.Tensor | None = None) -> None:
    """Run the decoder stack, and the LM head only when ``logits`` are wanted.

    Give either ``input_ids`` or ``inputs_embeds`` (b, s, width), not both.

    ``logits_to_keep``: sequence positions (1-D, sorted) the LM head runs on, passed to the
    model's own ``logits_to_keep`` (the logits hook then sees ``(b, len(positions), vocab)``);
    None runs it on every position.

    ``stop_after``: end the pass right after decoder layer ``stop_after`` (a forward hook
    registered after the capture hooks, so those still fire for that layer); later layers,
    the final norm and the LM head are not computed. Ignored when ``logits`` are wanted.
    """
    handle = None
    if stop_after is not None and not logits:
        handle = decoder_layers(model)[stop_after].register_forward_hook(_stop)
    try:
        with torch.inference_mode(), _no_padding_notice():
            run = model if logits else model.base_model
            inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
            if logits and logits_to_keep is not None:
                inputs["logits_to_keep"] = logits_to_keep
            run(**inputs, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()
