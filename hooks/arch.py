"""One declarative table per architecture family mapping capture points to module paths."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scalelens.errors import ScalelensError


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of a decoder-only family live, as dotted module paths.

    Attributes:
        family: Human name of the family.
        layers: Path from the top model to the ``ModuleList`` of decoder layers.
        attn: Path from a decoder layer to its self-attention module.
        mlp: Path from a decoder layer to its MLP module.
        embed: Path from the top model to the input embedding.
        unembed: Path from the top model to the output (LM head) projection.
        final_norm: Path from the top model to the final norm before the LM head.
    """

    family: str
    layers: str
    attn: str
    mlp: str
    embed: str
    unembed: str
    final_norm: str


_LLAMA_LIKE = ArchSpec(
    family="llama-like",
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    embed="model.embed_tokens",
    unembed="lm_head",
    final_norm="model.norm",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt_neox": ArchSpec(
        family="gpt-neox",
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        embed="gpt_neox.embed_in",
        unembed="lm_head",
        final_norm="gpt_neox.final_layer_norm",
    ),
    "gpt2": ArchSpec(
        family="gpt-2",
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        embed="transformer.wte",
        unembed="lm_head",
        final_norm="transformer.ln_f",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
}


def arch_for(model: nn.Module) -> ArchSpec:
    """Return the table entry for ``model``'s ``config.model_type``; raise if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ScalelensError(
            f"unsupported architecture {model_type!r}; scalelens knows: {known} "
            "(add an ArchSpec to hooks/arch.py to support it)"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the model's decoder layers."""
    layers = model.get_submodule(arch_for(model).layers)
    if not isinstance(layers, nn.ModuleList):
        raise ScalelensError(f"{arch_for(model).layers} is not a ModuleList in this model")
    return layers


def layer_part(model: nn.Module, layer: int, which: str) -> nn.Module:
    """Return sub-module ``which`` (``attn`` or ``mlp``) of decoder layer ``layer``."""
    spec = arch_for(model)
    return decoder_layers(model)[layer].get_submodule(getattr(spec, which))
