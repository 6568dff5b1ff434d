"""Information capacity on a live model: NLL of the probe text, FLOPs per token from the config.

The probe text is the residual-stream analyses' (``measure/text.py``: the suite's
held-out text, the built-in English text, or ``--text``), with the massive
activations' ``--n-sequences``, ``--seq-length`` and ``--batch-size``; the loss
is computed as the massive-activation intervention computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelens.analyses.capacity import CapacityResult, ModelShape, flops_per_token, information_capacity
from scalelens.errors import ScalelensError
from scalelens.hooks.rope import prompt_batches
from scalelens.measure.massive import MassiveSettings, mean_loss
from scalelens.measure.text import probe_texts
from scalelens.probes.prompts import TokenizedPrompts, as_prompts, tokenize

# Whether a family's MLP is gated (three matrices: 6 d d_ff FLOPs) or plain (two: 4 d d_ff).
GATED_MLP: dict[str, bool] = {
    "gpt_neox": False,
    "gpt2": False,
    "gpt_neo": False,
    "llama": True,
    "mistral": True,
    "qwen2": True,
    "gemma": True,
    "gemma2": True,
    "gemma3_text": True,
    "qwen3": True,
    "olmo": True,
    "olmo2": True,
    "phi3": True,  # gate and up fused in one matrix: still three d x d_ff products
    "stablelm": True,
    "granite": True,
    "olmo3": True,
    "cohere": True,
    "smollm3": True,
    "helium": True,
    "glm": True,  # gate and up fused
    "glm4": True,  # gate and up fused
    "exaone4": True,
    "ernie4_5": True,
    "seed_oss": True,
    "nemotron": False,  # up, squared ReLU, down
    "apertus": False,  # up, xIELU, down
    "arcee": False,  # up, squared ReLU, down
    "ministral": True,
    "cohere2": True,
    "internlm3": True,
    "exaone": True,
    "hunyuan_v1_dense": True,
    "vaultgemma": True,
    "cwm": True,
    "nanochat": False,  # up, squared ReLU, down
    "jais2": False,
    "codegen": False,
    "persimmon": False,
    "phi": False,
    "starcoder2": False,
    "gptj": False,
    "opt": False,
    "falcon": False,
    "gpt_bigcode": False,
    "bloom": False,
    "bitnet": True,
    "iquestcoder": True,
    "ministral3": True,
    "biogpt": False,
    "ctrl": False,
    "xglm": False,
    "mpt": False,
    "gpt_neox_japanese": False,
    "cohere_compass_text": True,
    "apertus1p5_text": False,  # up, xIELU, down
    "hyperclovax": True,
}


def _ff_multiple(cfg: Any) -> int:
    """The MLP width as a multiple of d_model where no field names the width.

    GPT-NeoX Japanese states the multiple; 4 elsewhere (MPT's modelling code builds 4 d whatever
    its config's ``expansion_ratio`` says).
    """
    return int(getattr(cfg, "intermediate_multiple_size", None) or 4)


def _kv_heads(cfg: Any, heads: int) -> int:
    """Key/value heads per layer (Falcon keeps them in its own fields)."""
    if cfg.model_type == "falcon":
        if cfg.new_decoder_architecture:
            return int(cfg.num_kv_heads)
        return 1 if cfg.multi_query else heads
    return int(getattr(cfg, "num_key_value_heads", None) or heads)


# The reference implementation's default numerator bias (its data sets other than
# mixed text, -24, and Chinese FineWeb-Edu, -18.7).
DEFAULT_BIAS = -27.0


@dataclass(frozen=True)
class CapacitySettings:
    """Settings of the information-capacity measurement.

    Attributes:
        bias: The numerator bias ``b`` of Yuan et al. (chosen per data set in the
            paper; the result also holds the compression gain and log2 FLOPs, so the
            capacity can be recomputed for any other ``b``).
    """

    bias: float = DEFAULT_BIAS


def model_shape(config: Any) -> ModelShape:
    """The FLOP-relevant sizes of a Hugging Face causal-LM config.

    Raises:
        ScalelensError: For a family whose MLP kind is not in ``GATED_MLP``.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(cfg, "model_type", None)
    if kind not in GATED_MLP:
        known = ", ".join(sorted(GATED_MLP))
        raise ScalelensError(f"no FLOP count for architecture {kind!r}; known: {known}")
    d = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    d_embed = getattr(cfg, "word_embed_proj_dim", None)  # OPT: embeddings projected to and from d
    widths = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "dff")
    d_ff = next((getattr(cfg, k) for k in widths if getattr(cfg, k, None)), None) or _ff_multiple(cfg) * d
    return ModelShape(
        d_model=d,
        n_layers=int(cfg.num_hidden_layers),
        n_heads=heads,
        n_kv_heads=_kv_heads(cfg, heads),
        d_head=int(getattr(cfg, "head_dim", None) or d // heads),
        d_ff=int(d_ff),
        vocab_size=int(cfg.vocab_size),
        gated_mlp=GATED_MLP[kind],
        d_embed=int(d_embed) if d_embed and int(d_embed) != d else None,
    )


def predicted_bytes(tok: TokenizedPrompts, tokenizer: Any) -> int:
    """UTF-8 bytes of the predicted tokens (every token but each prompt's first), decoded as is."""
    total = 0
    for row, n in zip(tok.ids, tok.lengths, strict=True):
        ids = [int(i) for i in row[1:int(n)]]
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        total += len(text.encode("utf-8"))
    return total


def mean_context(lengths: np.ndarray) -> float:
    """Mean number of earlier positions over every position of prompts of ``lengths`` tokens."""
    lens = np.asarray(lengths, dtype=np.float64)
    return float((lens * (lens - 1) / 2).sum() / lens.sum())


def mean_nll(loaded: Any, tok: TokenizedPrompts, batch_size: int) -> tuple[float, int]:
    """Mean next-token NLL (nats) over the predicted tokens, and their number.

    Batches never mix prompts the model's rotary scaling would treat differently
    (:func:`~scalelens.hooks.rope.prompt_batches`), so each prompt counts as it would alone.
    """
    return mean_loss(loaded, tok, prompt_batches(loaded.model, tok.lengths, batch_size))


def measure_capacity(loaded: Any, text: MassiveSettings, s: CapacitySettings) -> CapacityResult:
    """Information capacity of ``loaded`` on the probe text (see ``analyses/capacity.py``)."""
    texts = probe_texts(loaded, text)
    tok = tokenize(as_prompts(texts), loaded.tokenizer, loaded.info.max_position or None)
    nll, count = mean_nll(loaded, tok, text.batch_size)
    if count and not np.isfinite(nll):  # e.g. float16 logits past 65504
        raise ScalelensError(f"information capacity: the model's mean loss on the probe text is {nll} "
                             f"(its {loaded.info.dtype} logits overflow?); measure in float32 or bfloat16, "
                             "or leave information_capacity out")
    flops = flops_per_token(model_shape(loaded.model.config), mean_context(tok.lengths))
    return information_capacity(nll, count, predicted_bytes(tok, loaded.tokenizer), flops, s.bias)
