"""Capture backends: who runs the forward pass and hands module outputs to the probes.

Every backend captures the same residual-like points (resid_pre, resid_post,
attn_out, mlp_out) and calls ``sink(point, layer, tensor)`` with a (batch, seq,
d_model) tensor for each wanted (point, layer) during :meth:`Backend.forward`.
Per-head points (q, k, attention probabilities) come from the attention tap
(``hooks/attention.py``), which works on the underlying HF model whatever runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from scalelens.errors import ScalelensError
from scalelens.hooks import native
from scalelens.hooks.points import CapturePoint

Sink = Callable[[CapturePoint, int, torch.Tensor], None]
Wanted = set[tuple[CapturePoint, int]]


class Backend:
    """Base class: a context manager whose :meth:`forward` feeds ``sink``."""

    name = "base"

    def __init__(self, model: nn.Module, tokenizer: Any, wanted: Wanted, sink: Sink) -> None:
        """Prepare to capture ``wanted`` (point, layer) pairs of ``model`` into ``sink``."""
        self.model, self.tokenizer, self.wanted, self.sink = model, tokenizer, wanted, sink
        self._stack = ExitStack()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run one batch; call ``sink`` for every wanted point."""
        raise NotImplementedError


class NativeBackend(Backend):
    """Plain torch forward hooks on the unmodified HF modules (the default)."""

    name = "native"

    def __enter__(self) -> NativeBackend:
        self._stack.enter_context(native.native_hooks(self.model, self.wanted, self.sink))
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the decoder stack once."""
        logits = any(p is CapturePoint.LOGITS for p, _ in self.wanted)
        native.forward(self.model, input_ids, attention_mask, logits=logits)


def _registry() -> dict[str, type[Backend]]:
    backends: dict[str, type[Backend]] = {"native": NativeBackend}
    try:
        from scalelens.hooks.nnsight_backend import NNsightBackend

        backends["nnsight"] = NNsightBackend
    except ImportError:
        pass
    try:
        from scalelens.hooks.tlens_backend import TransformerLensBackend

        backends["transformer-lens"] = TransformerLensBackend
    except ImportError:
        pass
    return backends


def make_backend(name: str, model: nn.Module, tokenizer: Any, wanted: Wanted, sink: Sink) -> Backend:
    """Build backend ``name``; raise a one-line error if it is unknown or not installed."""
    backends = _registry()
    if name not in backends:
        raise ScalelensError(
            f"backend {name!r} is not available; available: {', '.join(sorted(backends))}"
        )
    return backends[name](model, tokenizer, wanted, sink)
