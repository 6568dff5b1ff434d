"""One declarative table per architecture family mapping capture points to module paths."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from torch import nn

from scalelens.errors import ScalelensError
from scalelens.hooks.points import CapturePoint


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of a decoder-only family live, as dotted module paths.

    Attributes:
        family: Human name of the family.
        layers: Path from the top model to the ``ModuleList`` of decoder layers.
        attn: Path from a decoder layer to its self-attention module.
        mlp: Path from a decoder layer to its MLP module.
        unembed: Path from the top model to the output (LM head) projection.
        no_tap: Why per-head probes (``attn_pattern``, ``q``, ``k``) cannot be read in this
            family, or ``""`` when its attention goes through transformers' attention registry.
        no_branches: Why ``attn_out``/``mlp_out`` cannot be read in this family, or ``""``.
        mlp_out_changed: Why ``mlp_out`` read after the forward pass (nnsight keeps module
            outputs by reference) would be wrong, or ``""``; forward hooks read it in time.
        mlp_out_changed_by: Config flags of which one must be true for that to happen; empty:
            always.
        own_attn: True where the attention module's ``_attn(query, key, value, mask)`` (GPT-Neo's
            in its ``attention`` sub-module) computes attention outside the registry and the tap
            wraps it (GPT-Neo, GPT-NeoX Japanese).
        proj_tap: Where the tap reads queries and keys of a family whose attention module
            computes attention in its own forward: ``"fused_alibi"``, from one fused
            ``query_key_value`` projection, plus the ALiBi bias the module is passed (BLOOM);
            ``"q_proj"``, from ``q_proj``'s output, the keys from ``k_proj`` on the same input
            (XGLM, which scales its queries after the projection); ``"split_heads"``, from the
            fused ``query_key_value`` projection split by the module's own ``_split_heads`` and
            rotated by its modelling code (Falcon's three layouts, rotary or ALiBi);
            ``"chunked_alibi"``, from the fused ``Wqkv`` projection cut in q, k, v thirds (clamped
            by ``clip_qkv``), plus the ALiBi ``position_bias`` the module is passed (MPT); ``""``:
            none.
    """

    family: str
    layers: str
    attn: str
    mlp: str
    unembed: str
    no_tap: str = ""
    no_branches: str = ""
    mlp_out_changed: str = ""
    mlp_out_changed_by: tuple[str, ...] = ()
    own_attn: bool = False
    proj_tap: str = ""

    def changes_mlp_out(self, config: object) -> bool:
        """Whether a model of this family with ``config`` changes its MLP output after returning it."""
        flags = self.mlp_out_changed_by
        return bool(self.mlp_out_changed) and (not flags or any(getattr(config, f, False) for f in flags))


_LLAMA_LIKE = ArchSpec(
    family="llama-like",
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    unembed="lm_head",
)

_GPT2_LIKE = ArchSpec(
    family="gpt-2-like",
    layers="transformer.h",
    attn="attn",
    mlp="mlp",
    unembed="lm_head",
)

_FALCON_LIKE = replace(_GPT2_LIKE, family="falcon-like", attn="self_attention")

# No MLP module: fc2 is the feed-forward branch's last projection (OPT; BioGPT and XGLM too).
_OPT_LIKE = ArchSpec(family="opt", layers="model.decoder.layers", attn="self_attn", mlp="fc2",
                     unembed="lm_head")

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt_neox": ArchSpec(
        family="gpt-neox",
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        unembed="lm_head",
    ),
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "olmo3": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "granitemoe": replace(_LLAMA_LIKE, family="granite-moe", mlp="block_sparse_moe"),
    "helium": _LLAMA_LIKE,
    "glm": _LLAMA_LIKE,
    "persimmon": _LLAMA_LIKE,
    "codegen": _GPT2_LIKE,
    "phi": _LLAMA_LIKE,
    "olmoe": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "glm4": _LLAMA_LIKE,
    "nemotron": _LLAMA_LIKE,
    "exaone4": _LLAMA_LIKE,
    "ernie4_5": _LLAMA_LIKE,
    "seed_oss": _LLAMA_LIKE,
    "apertus": _LLAMA_LIKE,
    "arcee": _LLAMA_LIKE,
    "deepseek_v3": _LLAMA_LIKE,  # q/k heads (nope + rope parts) wider than v heads
    "ministral": _LLAMA_LIKE,
    "cohere2": _LLAMA_LIKE,
    "internlm3": _LLAMA_LIKE,
    "exaone": _LLAMA_LIKE,
    "hunyuan_v1_dense": _LLAMA_LIKE,
    "vaultgemma": _LLAMA_LIKE,
    "nanochat": _LLAMA_LIKE,
    "jais2": _LLAMA_LIKE,
    "cwm": _LLAMA_LIKE,
    "glm4_moe": _LLAMA_LIKE,
    "ernie4_5_moe": _LLAMA_LIKE,
    "hunyuan_v1_moe": _LLAMA_LIKE,
    "phimoe": _LLAMA_LIKE,
    "minimax_m2": _LLAMA_LIKE,
    "flex_olmo": _LLAMA_LIKE,
    "solar_open": _LLAMA_LIKE,
    "deepseek_v2": _LLAMA_LIKE,  # latent attention as deepseek_v3's
    "glm4_moe_lite": _LLAMA_LIKE,  # latent attention as deepseek_v3's
    "minicpm3": _LLAMA_LIKE,  # latent attention as deepseek_v3's, scaled branches
    "llama4_text": replace(_LLAMA_LIKE, family="llama4", mlp="feed_forward"),  # chunked and no-rope layers
    "granitemoeshared": replace(_LLAMA_LIKE, family="granite-moe", mlp="block_sparse_moe"),
    "bitnet": _LLAMA_LIKE,
    "iquestcoder": _LLAMA_LIKE,
    "ministral3": _LLAMA_LIKE,
    "gpt_oss": _LLAMA_LIKE,  # attention sinks: the tap's softmax takes them (hooks/attention.py)
    "sarvam_mla": _LLAMA_LIKE,  # DeepSeek V3's modelling code
    "sarvam_moe": _LLAMA_LIKE,  # GLM-4 MoE's modelling code
    "dots1": _LLAMA_LIKE,
    "cohere_compass_text": _LLAMA_LIKE,  # parallel, scaled logits, no-rope layers
    "apertus1p5_text": _LLAMA_LIKE,
    "hyperclovax": _LLAMA_LIKE,
    "aria_text": _LLAMA_LIKE,
    "exaone_moe": _LLAMA_LIKE,
    "hy_v3": _LLAMA_LIKE,
    "mellum": _LLAMA_LIKE,
    "cohere2_moe": _LLAMA_LIKE,  # parallel, scaled logits
    "flint": _LLAMA_LIKE,
    "mimo_v2_flash": _LLAMA_LIKE,
    "afmoe": _LLAMA_LIKE,
    "beam": _LLAMA_LIKE,
    "kolibri1": _LLAMA_LIKE,
    "axk1": _LLAMA_LIKE,  # latent attention as deepseek_v3's
    "youtu": _LLAMA_LIKE,  # latent attention as deepseek_v3's
    "modernbert-decoder": replace(_LLAMA_LIKE, family="modernbert-decoder", attn="attn", unembed="decoder"),
    "jetmoe": replace(
        _LLAMA_LIKE,
        family="jetmoe",
        attn="self_attention",
        no_tap="its query heads are picked per token by a router from expert projections (mixture of "
               "attention heads), so a head index names no fixed head",
    ),
    "dbrx": ArchSpec(  # attention inside a norm-attention-norm block
        family="dbrx",
        layers="transformer.blocks",
        attn="norm_attn_norm.attn",
        mlp="ffn",
        unembed="lm_head",
    ),
    "opt": _OPT_LIKE,
    "gpt_neo": replace(_GPT2_LIKE, family="gpt-neo", own_attn=True),
    "biogpt": replace(_OPT_LIKE, family="biogpt", layers="biogpt.layers", unembed="output_projection"),
    "ctrl": replace(_GPT2_LIKE, family="ctrl", attn="multi_head_attention", mlp="ffn"),
    "xglm": replace(_OPT_LIKE, family="xglm", layers="model.layers", proj_tap="q_proj"),
    "mpt": ArchSpec(  # its MLP module adds the residual itself: its down projection is the branch
        family="mpt",
        layers="transformer.blocks",
        attn="attn",
        mlp="ffn.down_proj",
        unembed="lm_head",
        proj_tap="chunked_alibi",
    ),
    "gpt_neox_japanese": ArchSpec(
        family="gpt-neox-japanese",
        layers="gpt_neox_japanese.layers",
        attn="attention",
        mlp="mlp",
        unembed="embed_out",
        own_attn=True,
        no_branches="its last layer adds an attention bias outside the attention module",
    ),
    "falcon": replace(
        _FALCON_LIKE,
        family="falcon",
        proj_tap="split_heads",
        mlp_out_changed="with parallel attention Falcon adds the attention output into the MLP's "
                        "output tensor in place after the MLP returns",
        mlp_out_changed_by=("parallel_attn", "new_decoder_architecture"),
    ),
    "bloom": replace(
        _FALCON_LIKE,
        family="bloom",
        proj_tap="fused_alibi",
        no_branches="its attention and MLP modules return their output with the residual already added",
    ),
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


_BRANCHES = frozenset({CapturePoint.ATTN_OUT, CapturePoint.MLP_OUT})


def check_points(model: nn.Module, points: Iterable[CapturePoint]) -> None:
    """Raise one line when ``model``'s family cannot give one of ``points`` exactly.

    Per-head points (``attn_pattern``, ``q``, ``k``) need attention computed through
    transformers' registry; ``attn_out``/``mlp_out`` need sub-modules that return only their
    branch. A family that cannot is refused rather than captured wrong.
    """
    spec = arch_for(model)
    wanted = set(points)
    model_type = model.config.model_type  # type: ignore[union-attr]
    tapped = sorted(p.value for p in wanted if p.from_attention_tap)
    if tapped and spec.no_tap:
        raise ScalelensError(
            f"{model_type} cannot give per-head probes ({', '.join(tapped)}; also retrieval and text "
            f"dominance): {spec.no_tap}; use resid, massive, norms and logits probes for it"
        )
    branches = sorted(p.value for p in wanted & _BRANCHES)
    if branches and spec.no_branches:
        raise ScalelensError(
            f"{model_type} cannot give {', '.join(branches)}: {spec.no_branches}; "
            "use resid_pre/resid_post instead"
        )
