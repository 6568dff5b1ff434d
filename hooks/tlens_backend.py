"""TransformerLens backend: TransformerLens 4's ``TransformerBridge`` around the loaded HF model.

The bridge is built offline from the in-memory model with
``build_bridge_from_module(model, architecture, hf_config=...)``; no tokenizer is handed
to it (its tokenizer setup re-downloads the tokenizer by name, and captures feed token
ids anyway). No weight processing is applied: the bridge's default is raw HF weights,
and ``enable_compatibility_mode`` (LayerNorm folding, weight centering) is never called.

Hook names are the bridge's component hooks, which wrap the HF modules one to one:
``blocks.{i}.hook_in`` / ``hook_out`` (decoder layer input/output), ``blocks.{i}.attn.hook_out``
and ``blocks.{i}.mlp.hook_out`` (attention / MLP module outputs), ``unembed.hook_out``
(LM head). TransformerLens's own aliases ``hook_attn_out`` / ``hook_mlp_out`` are not used:
on Gemma 2/3 they sit after the post-attention / post-MLP norms, which is not what
scalelens's ``attn_out`` / ``mlp_out`` mean.

Limits, both from how the bridge works: it replaces the model's submodules with bridge
components (undone by :func:`left_as_found` when the backend closes), and it recomputes
attention itself instead of calling the HF attention function, so the values come from
TransformerLens's eager attention (within ~1e-7 of the model's kernel) and the attention
tap (``attn_pattern``, ``q``, ``k``) cannot run under it: that is refused.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import torch

from scalelens.errors import ScalelensError
from scalelens.hooks.arch import arch_for
from scalelens.hooks.attention import TAP_PREFIX
from scalelens.hooks.backends import Backend, left_as_found
from scalelens.hooks.points import CapturePoint

if importlib.util.find_spec("transformer_lens") is None:  # the registry leaves this backend out
    raise ImportError("transformer-lens is not installed")

# transformer_lens is imported lazily when the first batch runs: importing it takes seconds
# and silences the ``transformers`` logger process-wide.

_HOOKS = {
    CapturePoint.RESID_PRE: "blocks.{}.hook_in",
    CapturePoint.RESID_POST: "blocks.{}.hook_out",
    CapturePoint.ATTN_OUT: "blocks.{}.attn.hook_out",
    CapturePoint.MLP_OUT: "blocks.{}.mlp.hook_out",
    CapturePoint.LOGITS: "unembed.hook_out",
}


def hook_name(point: CapturePoint, layer: int) -> str:
    """The TransformerBridge hook that carries ``point`` of layer ``layer``."""
    if point not in _HOOKS:
        raise ValueError(f"{point} is not a module-output point")
    return _HOOKS[point].format(layer)


class TransformerLensBackend(Backend):
    """Captures module outputs through TransformerLens hooks on a TransformerBridge."""

    name = "transformer-lens"

    def __enter__(self) -> TransformerLensBackend:
        arch_for(self.model)  # unsupported architecture: one-line ScalelensError
        # The bridge is built at the first batch, once the attention tap (entered after the
        # backend) is known: building it rewires the modules the tap would register.
        self._bridge: Any = None
        self._stop_at: str | None = None
        self._stack.callback(self.__dict__.pop, "_bridge", None)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Run one batch through the bridge with a sink-feeding hook per wanted point."""
        bridge = self._bridge if self._bridge is not None else self._build(input_ids)
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        last = max((i for _, i in self.wanted), default=-1)
        reached: list[bool] = []  # the last wanted layer's hooks have run

        def stop(tensor: torch.Tensor, *, hook: Any) -> torch.Tensor:
            # A module can run before the blocks too (NanoChat's final norm also normalises the
            # embeddings): stop only once every wanted layer is behind.
            if reached:
                raise StopAtLayerException(tensor)
            return tensor

        def mark(tensor: Any, *, hook: Any) -> Any:
            reached.append(True)
            return tensor

        hooks: list[tuple[str, Any]] = [(hook_name(p, i), _feed(self.sink, p, i))
                                        for p, i in sorted(self.wanted)]
        if self._stop_at is not None:  # no logits wanted: every wanted point is a layer's
            hooks += [(f"blocks.{last}.hook_out", mark), (self._stop_at, stop)]
        with torch.inference_mode(), bridge.hooks(fwd_hooks=hooks):
            try:
                # output_attentions=False: the bridge would otherwise ask HF to keep every
                # layer's attention weights and install its output-recording hooks.
                bridge(input_ids, attention_mask=attention_mask, return_type=None,
                       use_cache=False, output_attentions=False)
            except StopAtLayerException:
                pass

    def _build(self, input_ids: torch.Tensor) -> Any:
        impl = getattr(self.model.config, "_attn_implementation", None) or ""
        if impl.startswith(TAP_PREFIX):
            raise ScalelensError(
                "the transformer-lens backend cannot capture attn_pattern, q or k: "
                "TransformerBridge recomputes attention itself, bypassing the attention tap; "
                "use backend native or nnsight for per-head probes"
            )
        spec = arch_for(self.model)
        if "." in spec.mlp and any(p is CapturePoint.MLP_OUT for p, _ in self.wanted):
            # The bridge hooks the whole MLP module; scalelens reads a part of it (MPT's MLP
            # module returns its output with the residual added, its down projection does not).
            raise ScalelensError(
                f"the transformer-lens backend cannot capture mlp_out of {self.model.config.model_type}: "
                f"its MLP module returns the residual added, the branch is {spec.mlp}; "
                "use backend native or nnsight"
            )
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        architecture = type(self.model).__name__
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ScalelensError(
                f"transformer-lens has no TransformerBridge adapter for {architecture}; "
                "use backend native or nnsight"
            )
        self._stack.enter_context(left_as_found(self.model))
        try:
            bridge = build_bridge_from_module(self.model, architecture,
                                              hf_config=copy.deepcopy(self.model.config))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ScalelensError(f"transformer-lens could not wrap {architecture}: {first}") from exc
        if bridge.compatibility_mode:  # processed (folded/centred) weights would change values
            raise ScalelensError("transformer-lens bridge came up in compatibility mode; refusing")
        _check_runs(bridge, architecture, input_ids)
        missing = [n for n in (hook_name(p, i) for p, i in self.wanted) if n not in bridge.hook_dict]
        if missing:
            raise ScalelensError(
                f"transformer-lens's {architecture} bridge has no hook {missing[0]}; "
                "use backend native or nnsight"
            )
        if not any(p is CapturePoint.LOGITS for p, _ in self.wanted):
            # Run no further than the last wanted layer (never the LM head), like native.
            last = max((i for _, i in self.wanted), default=-1)
            at = [n for n in (f"blocks.{last + 1}.hook_in", "ln_final.hook_in") if n in bridge.hook_dict]
            self._stop_at = at[0] if at else None
        self._bridge = bridge
        return bridge


def _check_runs(bridge: Any, architecture: str, input_ids: torch.Tensor) -> None:
    """Refuse, in one line, a bridge whose adapter cannot run this model.

    An adapter written for another transformers version can build and then fail inside its
    own forward (CodeGen's reads an attribute transformers no longer has). Two tokens of the
    first prompt, without hooks, find that out before any capture hook runs, so a failure of
    scalelens's own hooks is never mistaken for one of the bridge.
    """
    try:
        with torch.inference_mode():
            bridge(input_ids[:1, :2], return_type=None, use_cache=False, output_attentions=False)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ScalelensError(
            f"transformer-lens's {architecture} bridge cannot run this model "
            f"({type(exc).__name__}: {first}); use backend native or nnsight"
        ) from exc


def _feed(sink: Any, point: CapturePoint, layer: int) -> Any:
    def hook(tensor: Any, *, hook: Any) -> Any:
        sink(point, layer, tensor[0] if isinstance(tensor, tuple) else tensor)
        return tensor

    return hook
