"""Parameter counts computed from a config, without allocating weights."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


def count_parameters(config: PretrainedConfig) -> tuple[int, int]:
    """Count total and non-embedding parameters of the causal LM a config describes.

    The model is built on the ``meta`` device, so even 12B configs cost no memory.
    Non-embedding = total - input embedding - output embedding (an embedding
    matrix tied to the unembedding is subtracted once). Learned position
    embeddings (GPT-2's ``wpe``) count as non-embedding.

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
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    return [m.weight for m in modules if m is not None and isinstance(m.weight, torch.Tensor)]
