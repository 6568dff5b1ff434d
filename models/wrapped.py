"""Unwrap in-memory models: plain HF models, nnsight wrappers and TransformerLens bridges."""

from __future__ import annotations

import sys
from typing import Any

from transformers import PreTrainedModel

from ..errors import ScalelensError


def unwrap(obj: Any) -> tuple[PreTrainedModel, Any, str]:
    """Return ``(hf_model, tokenizer_or_None, source_kind)`` for an in-memory model.

    Args:
        obj: A ``PreTrainedModel``, an nnsight ``LanguageModel`` /
            ``TransformersModel`` (its HF module is ``_module``; older nnsight used
            ``_model``), a TransformerLens ``TransformerBridge`` (``original_model``), or
            any of these wrapped by ``torch.compile`` (its ``_orig_mod``, which captures
            run uncompiled: hooks would make the compiled graph recompile or break).

    Returns:
        The underlying HF model, the wrapper's tokenizer (``None`` for a bare
        model) and ``memory``, ``nnsight`` or ``transformer_lens``.
    """
    if isinstance(obj, PreTrainedModel):
        return obj, None, "memory"
    if _compiled(obj):  # torch.compile(model): probes hook the model itself, run eagerly
        return unwrap(obj._orig_mod)
    package = type(obj).__module__.split(".")[0]
    if package == "nnsight":
        return _nnsight(obj), getattr(obj, "tokenizer", None), "nnsight"
    if package == "transformer_lens":
        return _bridge(obj), getattr(obj, "tokenizer", None), "transformer_lens"
    raise ScalelensError(
        f"cannot load a {type(obj).__name__}; pass a path, hub id, HF model, nnsight "
        "LanguageModel or TransformerLens TransformerBridge"
    )


def _compiled(obj: Any) -> bool:
    """Whether ``obj`` is ``torch.compile``'s wrapper of a module (an ``OptimizedModule``).

    Without ``torch.compile`` having run, its module (a second to import) is not loaded, and
    no object can be one.
    """
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(obj, dynamo.OptimizedModule)


def _nnsight(obj: Any) -> PreTrainedModel:
    if getattr(obj, "dispatched", True) is False and hasattr(obj, "dispatch"):
        obj.dispatch()  # nnsight's documented way to load real weights into a lazy model
    for attr in ("_module", "_model"):
        inner = obj.__dict__.get(attr) if hasattr(obj, "__dict__") else None
        if isinstance(inner, PreTrainedModel):
            return inner
    raise ScalelensError(f"nnsight {type(obj).__name__} does not wrap a Hugging Face model; wrap a causal LM")


def _bridge(obj: Any) -> PreTrainedModel:
    try:
        inner = obj.original_model
    except AttributeError as exc:
        raise ScalelensError(
            "this TransformerBridge has no local model (remote driver); boot it from transformers"
        ) from exc
    if not isinstance(inner, PreTrainedModel):
        raise ScalelensError(
            f"TransformerBridge wraps a {type(inner).__name__}, not a Hugging Face model; "
            "boot it with TransformerBridge.boot_transformers"
        )
    if getattr(obj, "_weights_processed", False):  # set by process_weights, in place on the model
        raise ScalelensError(
            "this TransformerBridge's weights were processed (enable_compatibility_mode or "
            "process_weights: layer norms folded, writing weights and unembedding centred), so its "
            "activations and logits are not the model's; pass a bridge booted without processing "
            "(enable_compatibility_mode(no_processing=True) keeps the weights) or the model itself"
        )
    return inner
