"""What scalelens records about a loaded model."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import ScalelensWarning


@dataclass(frozen=True)
class ModelInfo:
    """Metadata about a loaded model, stored with every capture and result.

    Attributes:
        name: Short human name, e.g. ``pythia-70m`` or a directory's basename.
        source: Where it came from: hub id, path, or ``<in-memory>``.
        source_kind: One of ``hub``, ``local``, ``suite``, ``gguf``, ``memory``,
            ``nnsight``, ``transformer_lens``.
        revision: Hub revision / checkpoint name (``step3000``), if any.
        step: Training step parsed from the revision, if any.
        architecture: HF ``model_type`` (``gpt_neox``, ``llama``, ``gemma2``, ...).
        n_params: Total parameter count computed from the config.
        n_params_non_embedding: Parameters excluding the token, position and output
            embeddings (Kaplan et al. 2020; see ``models.params.count_parameters``).
        d_model: Residual stream width.
        n_layers: Number of decoder layers.
        n_heads: Number of attention (query) heads.
        d_head: Width of one query/key head (what the ``q``/``k`` probes store).
        vocab_size: Rows of the unembedding.
        max_position: Longest context the model supports (0: none declared, e.g. ALiBi BLOOM).
        dtype: Torch dtype of the weights as loaded.
        attn_implementation: The HF attention implementation the model was loaded with.
    """

    name: str
    source: str
    source_kind: str
    revision: str | None
    step: int | None
    architecture: str
    n_params: int
    n_params_non_embedding: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    vocab_size: int
    max_position: int
    dtype: str
    attn_implementation: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from a dict, warning about (and dropping) unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"ignoring unknown ModelInfo keys: {unknown}", ScalelensWarning, stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in names})
