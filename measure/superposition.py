"""Superposition measures from the model's weights (no capture needed)."""

from __future__ import annotations

from typing import Any

from scalelens.analyses.superposition import superposition


def measure_superposition(loaded: Any) -> dict[str, Any]:
    """Superposition of the unembedding (LM head) rows, plus the input embedding's."""
    model = loaded.model
    out = superposition(model.get_output_embeddings().weight).to_dict()  # on the model's device
    emb = superposition(model.get_input_embeddings().weight)
    out["embedding"] = emb.to_dict()
    out["tied"] = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return out
