"""Capture backends: who runs the forward pass and hands module outputs to the probes.

Every backend captures the same residual-like points (resid_pre, resid_post,
attn_out, mlp_out) and calls ``sink(point, layer, tensor)`` with a (batch, seq,
d_model) tensor for each wanted (point, layer) during :meth:`Backend.forward`.
Per-head points (q, k, attention probabilities) come from the attention tap
(``hooks/attention.py``), which works on the underlying HF model under the native and
nnsight backends; TransformerLens's bridge recomputes attention itself, so the
transformer-lens backend refuses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from scalelens.errors import ScalelensError
from scalelens.hooks import native
from scalelens.hooks.points import CapturePoint

Sink = Callable[[CapturePoint, int, torch.Tensor], None]
Wanted = set[tuple[CapturePoint, int]]


def _saved_state(obj: object) -> tuple[object, dict[str, Any], dict[str, Any]]:
    attrs = dict(vars(obj))
    contents = {k: v.copy() for k, v in attrs.items() if isinstance(v, (dict, set, list))}
    return obj, attrs, contents


def _put_back(obj: object, attrs: dict[str, Any], contents: dict[str, Any]) -> None:
    current = vars(obj)
    for key in [k for k in current if k not in attrs]:
        del current[key]
    for key, value in attrs.items():
        if key in contents:  # in place, so handles holding the container stay valid
            value.clear()
            if isinstance(value, list):
                value.extend(contents[key])
            else:
                value.update(contents[key])
        current[key] = value


@contextmanager
def left_as_found(model: nn.Module, *others: object) -> Iterator[None]:
    """On exit, put ``model`` (and ``others``, e.g. the tokenizer) back exactly as they were.

    nnsight installs a controller as every module's instance ``forward``, TransformerLens's
    ``TransformerBridge`` swaps bridge components into the module tree, transformers installs
    output-recording hooks on first use; all of that is permanent by design. Backends built on
    those libraries enter this before wrapping the model, so the wrapping lasts only while the
    backend is open. Restores each module's, config's and other object's attribute bindings, and
    the contents of its dict/set/list attributes (``_modules``, ``_parameters``, hook dicts) in
    place. Tensor values are not copied: nothing here may write into weights.
    """
    objs: list[object] = list(model.modules())
    configs = {id(c): c for m in objs if hasattr(c := vars(m).get("config"), "__dict__")}
    saved = [_saved_state(o) for o in [*objs, *configs.values(), *others] if o is not None]
    try:
        yield
    finally:
        for obj, attrs, contents in saved:
            _put_back(obj, attrs, contents)


class Backend:
    """Base class: a context manager whose :meth:`forward` feeds ``sink``."""

    name = "base"
    accepts_embeds = False  # whether forward_embeds is implemented (embedding-block prompts)
    keeps_logit_rows = False  # whether forward honours logit_rows (the LM head on those positions only)

    def __init__(self, model: nn.Module, tokenizer: Any, wanted: Wanted, sink: Sink) -> None:
        """Prepare to capture ``wanted`` (point, layer) pairs of ``model`` into ``sink``."""
        self.model, self.tokenizer, self.wanted, self.sink = model, tokenizer, wanted, sink
        self.stop_after: int | None = None  # last decoder layer the capture needs, if not the last
        self.logit_rows: torch.Tensor | None = None  # sequence positions the LM head must cover
        self._stack = ExitStack()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Run one batch; call ``sink`` for every wanted point."""
        raise NotImplementedError

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Run one batch given as ``inputs_embeds`` (b, s, width) instead of token ids."""
        raise ScalelensError(f"the {self.name} backend cannot feed embedding blocks (inputs_embeds); "
                             "use backend native")


class NativeBackend(Backend):
    """Plain torch forward hooks on the unmodified HF modules (the default)."""

    name = "native"
    accepts_embeds = True
    keeps_logit_rows = True

    def __enter__(self) -> NativeBackend:
        self._stack.enter_context(native.native_hooks(self.model, self.wanted, self.sink))
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Run the decoder stack once."""
        logits = any(p is CapturePoint.LOGITS for p, _ in self.wanted)
        native.forward(self.model, input_ids, attention_mask, logits=logits, stop_after=self.stop_after,
                       logits_to_keep=self.logit_rows)

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Run the decoder stack once on ``inputs_embeds``."""
        logits = any(p is CapturePoint.LOGITS for p, _ in self.wanted)
        native.forward(self.model, None, attention_mask, logits=logits, stop_after=self.stop_after,
                       inputs_embeds=inputs_embeds, logits_to_keep=self.logit_rows)


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
