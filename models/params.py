"""Parameter counts computed from a config, without allocating weights."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


def count_parameters(config: PretrainedConfig) -> tuple[int, int]:
    """Count total and non-embedding parameters of the causal LM a config describes.

    The model is built on the ``meta`` device, so even 12B configs cost no memory.
    Non-embedding follows Kaplan et al. (2020), as Pythia's table does: total minus
    every embedding table (the token embedding, learned absolute position
    embeddings such as GPT-2's ``wpe`` or OPT's ``embed_positions``, any other
    ``nn.Embedding`` lookup) and the output embedding. A matrix tied to another
    is subtracted once. Rotary and ALiBi positions have no parameters.

    Args:
        config: A Hugging Face config of a causal LM.

    Returns:
        ``(total, non_embedding)``.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    matrices = {id(w): w.numel() for w in _embedding_weights(model)}
    return total, total - sum(matrices.values())


def _embedding_weights(model: PreTrainedModel) -> list[torch.Tensor]:
    """The weights of every embedding table and of the output embedding (tied ones repeat)."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    modules = (*tables, model.get_input_embeddings(), model.get_output_embeddings())
    return [m.weight for m in modules if m is not None and isinstance(m.weight, torch.Tensor)]
