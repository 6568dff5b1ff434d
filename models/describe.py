"""Build a ``ModelInfo`` from a config (and the loaded weights' dtype)."""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ..errors import ScalelensError
from .info import ModelInfo
from .params import count_parameters


def check_architecture(config: PretrainedConfig) -> None:
    """Raise unless the config describes a decoder-only causal LM transformers can build.

    Encoder-decoder models and encoder families that merely have a causal-LM head
    (BERT, RoBERTa, ...) are refused rather than guessed at.
    """
    model_type = getattr(config, "model_type", None) or "<none>"
    known = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    encoder = getattr(config, "is_encoder_decoder", False) or (
        model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    if not known or encoder:
        kind = "an encoder or encoder-decoder" if known else "not a causal-LM"
        raise ScalelensError(
            f"unsupported architecture {model_type!r} ({kind} model); "
            "load a decoder-only causal LM such as gpt_neox, llama, qwen3, gemma2 or gpt2"
        )


def describe(
    config: PretrainedConfig,
    *,
    name: str,
    source: str,
    source_kind: str,
    revision: str | None,
    step: int | None,
    dtype: str,
    attn_implementation: str,
) -> ModelInfo:
    """Fill a ``ModelInfo`` from a causal-LM config.

    Widths and counts come from the config's standard accessors (``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``), which transformers maps for
    GPT-2-style names; ``d_head`` honours an explicit ``head_dim`` (Gemma, Llama), and is the
    query/key width ``qk_head_dim`` under multi-head latent attention (DeepSeek V3).

    Args:
        config: The model's config.
        name: Short human name.
        source: Hub id, path or ``<in-memory>``.
        source_kind: How it was loaded (see ``ModelInfo``).
        revision: Revision / checkpoint name, if any.
        step: Training step, if known.
        dtype: Weight dtype name (``float32``).
        attn_implementation: Attention implementation in use.

    Returns:
        The filled ``ModelInfo``.

    Raises:
        ScalelensError: For a config without those sizes, or one that sets them per layer
            (``per_layer_config``: Gemma 4's head widths), in one line.
    """
    text = config.get_text_config()
    try:
        return _describe(config, text, name=name, source=source, source_kind=source_kind,
                         revision=revision, step=step, dtype=dtype, attn_implementation=attn_implementation)
    except AmbiguousGlobalPerLayerAttributeError as exc:  # Gemma 4: head widths set per layer
        key = re.search(r"'(\w+)' is a per-layer attribute", str(exc))
        raise ScalelensError(
            f"unsupported architecture {text.model_type!r}: its config sets "
            f"{key.group(1) if key else 'some sizes'} per layer (per_layer_config), and scalelens "
            "needs every layer the same (d_head, n_heads, ...)"
        ) from None


def _describe(config: PretrainedConfig, text: PretrainedConfig, **fields: Any) -> ModelInfo:
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
               if getattr(text, k, None) is None]
    if missing:
        raise ScalelensError(
            f"unsupported architecture {text.model_type!r}: its config has no {', '.join(missing)} "
            "(scalelens measures attention transformers: GPT-NeoX, Llama, Gemma, GPT-2, ...)"
        )
    d_model = int(text.hidden_size)
    n_heads = int(text.num_attention_heads)
    # multi-head latent attention (DeepSeek V3): queries and keys are qk_head_dim wide (no-rope
    # and rope parts), while its head_dim names the rope part alone
    d_head = getattr(text, "qk_head_dim", None) or getattr(text, "head_dim", None) or d_model // n_heads
    total, non_embedding = count_parameters(config)
    return ModelInfo(
        architecture=str(text.model_type),
        n_params=total,
        n_params_non_embedding=non_embedding,
        d_model=d_model,
        n_layers=int(text.num_hidden_layers),
        n_heads=n_heads,
        d_head=int(d_head),
        vocab_size=int(text.vocab_size),
        max_position=_context(text),
        **fields,
    )


def weights_fingerprint(model: torch.nn.Module, per_tensor: int = 256) -> str:
    """A hash of ``per_tensor`` evenly strided values of every parameter.

    Cheap on any device (one copy to the host), and different for a model retrained or
    re-initialised at the same path; ``""`` when some tensor has no data (meta device).
    Buffers are left out: some (rotary caches) grow during a forward pass.
    """
    import hashlib

    picked, shapes = [], []
    for name, t in model.named_parameters():
        if t.device.type == "meta":
            return ""
        flat = t.detach().reshape(-1)
        picked.append(flat[:: max(1, flat.numel() // per_tensor)][:per_tensor].float())
        shapes.append(f"{name}{tuple(t.shape)}{t.dtype}")
    values = torch.cat(picked).cpu().numpy() if picked else b""
    digest = hashlib.sha256("|".join(shapes).encode())
    digest.update(bytes(values))
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary: every token with its id (added tokens too).

    What decoding a captured token id depends on; ``""`` for a tokenizer without a
    readable vocabulary.
    """
    import hashlib
    import json

    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - any tokenizer-like object: no vocabulary, no fingerprint
        return ""
    items = sorted(((int(i), str(t)) for t, i in vocab.items()))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def _context(config: PretrainedConfig) -> int:
    """The context length a config declares: ``max_position_embeddings`` (MPT: ``max_seq_len``); 0: none."""
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "max_seq_len", 0) or 0)
