"""Information capacity of a language model (Yuan et al. 2025, "Information Capacity").

Text compression relative to compute, per token:

    IC = (text_bits - nll_bits + b) / log2(FLOPs per token)

* ``text_bits``: the original size of the text in bits per token,
  ``8 * UTF-8 bytes / tokens``, over the predicted tokens only (every token but
  each sequence's first, which the model is never asked to predict);
* ``nll_bits``: the model's negative log-likelihood of those tokens in bits
  (``nats / ln 2``), i.e. the length of their entropy code;
* ``b``: a negative bias the paper chooses per data set so that the sizes of a
  series get nearly the same capacity (the reference code's defaults: -27 for
  most data sets, -24 for its mixed-text set, -18.7 for Chinese FineWeb-Edu);
* FLOPs per token: the forward cost of one token, counted below.

``text_bits - nll_bits`` (the compression gain) and ``log2 FLOPs`` are reported
beside the capacity, so it can be recomputed for any other ``b``.

FLOPs per token (:func:`flops_per_token`), forward only, 2 FLOPs per
multiply-add, the reference implementation's accounting (decoding one token
against a cache of the earlier positions):

* attention projections: ``2 * d_model * d_head * (2 * n_heads + 2 * n_kv_heads)``
  per layer (Q and O over all query heads, K and V over the key/value heads;
  ``8 d^2`` for multi-head attention with ``d_head = d / n_heads``);
* attention context: ``4 * n_heads * d_head * c`` per layer (``q k^T`` and the
  weighted sum of values) for a token attending to ``c`` earlier positions; the
  measurement passes ``c`` = the mean position index of its tokens, which is
  ``(T - 1) / 2`` for sequences of ``T`` tokens as in the reference code;
* MLP: ``4 * d_model * d_ff`` per layer for a plain two-matrix MLP (GPT-NeoX /
  Pythia's GELU MLP, GPT-2), ``6 * d_model * d_ff`` for a gated one (SwiGLU/GeGLU:
  Llama, Mistral, Qwen2, Gemma);
* LM head: ``2 * d_embed * vocab`` (all unembedding rows, padding included), with
  ``d_embed`` the width of the token embeddings and unembedding: ``d_model`` except
  in a model that projects them (OPT-350m: ``word_embed_proj_dim`` 512 beside
  ``d_model`` 1024), which also pays ``4 * d_model * d_embed`` for its projections
  into and out of the residual stream.

Not counted (as in the reference): embedding lookups, norms, biases,
activation functions, softmax, rotary embeddings; Gemma 2/3 sliding windows
(longer than the probe sequences here) are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scalelens.analyses._common import jsonable
from scalelens.errors import ScalelensError

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that its FLOPs depend on.

    Attributes:
        d_model: Residual stream width.
        n_layers: Decoder layers.
        n_heads: Query heads per layer.
        n_kv_heads: Key/value heads per layer (``n_heads`` without grouped-query attention).
        d_head: Width of one head.
        d_ff: MLP hidden width.
        vocab_size: Rows of the unembedding (padded vocabulary).
        gated_mlp: True for a gated MLP (three matrices), False for a plain one (two).
        d_embed: Width of the token embeddings and the unembedding when the model projects
            them into and out of the residual stream (OPT's ``word_embed_proj_dim``);
            None when they are ``d_model`` wide.
    """

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    vocab_size: int
    gated_mlp: bool
    d_embed: int | None = None

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ScalelensError(f"model shape: {name} must be >= 1, got {getattr(self, name)}")
        if self.d_embed is not None and int(self.d_embed) < 1:
            raise ScalelensError(f"model shape: d_embed must be >= 1 or None, got {self.d_embed}")


@dataclass(frozen=True)
class FlopsPerToken:
    """Forward FLOPs of one token, by part (all layers summed).

    Attributes:
        attention_proj: Q, K, V and output projections.
        attention_context: ``q k^T`` and the weighted sum of values over the context.
        mlp: The MLP matrices.
        lm_head: The unembedding.
        context: Mean number of earlier positions a token attends to.
        total: Sum of the parts.
        embed_proj: The projections of the token embedding into the residual stream and of
            the last hidden state out of it (0 when the embeddings are ``d_model`` wide).
    """

    attention_proj: float
    attention_context: float
    mlp: float
    lm_head: float
    context: float
    total: float
    embed_proj: float = 0.0


def flops_per_token(shape: ModelShape, context: float) -> FlopsPerToken:
    """Forward FLOPs of one token attending to ``context`` earlier positions.

    Args:
        shape: The model's sizes.
        context: Mean number of earlier positions each token attends to (>= 0).

    Returns:
        The FLOPs by part; see the module docstring for the formulas.

    Raises:
        ScalelensError: If ``context`` is negative or not finite.
    """
    if not math.isfinite(context) or context < 0:
        raise ScalelensError(f"context must be a finite number >= 0, got {context}")
    s = shape
    proj = 2.0 * s.d_model * s.d_head * (2 * s.n_heads + 2 * s.n_kv_heads) * s.n_layers
    ctx = 4.0 * s.n_heads * s.d_head * context * s.n_layers
    mlp = (6.0 if s.gated_mlp else 4.0) * s.d_model * s.d_ff * s.n_layers
    d_embed = s.d_embed or s.d_model
    head = 2.0 * d_embed * s.vocab_size
    embed_proj = 0.0 if d_embed == s.d_model else 4.0 * s.d_model * d_embed
    total = proj + ctx + mlp + head + embed_proj
    return FlopsPerToken(proj, ctx, mlp, head, float(context), total, embed_proj)


@dataclass(frozen=True)
class CapacityResult:
    """Information capacity of one model on one text.

    Attributes:
        information_capacity: ``(text_bits - nll_bits + bias) / log2_flops_per_token``.
        text_bits_per_token: ``8 * n_bytes / n_tokens``.
        nll_bits_per_token: Mean negative log-likelihood of the predicted tokens, in bits.
        compression_gain_bits: ``text_bits_per_token - nll_bits_per_token``.
        bias: The numerator bias ``b``.
        flops_per_token: Forward FLOPs of one token.
        log2_flops_per_token: Its base-2 logarithm (the denominator).
        n_tokens: Predicted tokens the averages are over.
        n_bytes: UTF-8 bytes of those tokens' text.
        flops: The FLOPs by part, or None when only the total was given.
    """

    information_capacity: float
    text_bits_per_token: float
    nll_bits_per_token: float
    compression_gain_bits: float
    bias: float
    flops_per_token: float
    log2_flops_per_token: float
    n_tokens: int
    n_bytes: int
    flops: FlopsPerToken | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (inf/NaN become None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def information_capacity(nll_nats: float, n_tokens: int, n_bytes: int,
                         flops: float | FlopsPerToken, bias: float = 0.0) -> CapacityResult:
    """Information capacity from a mean NLL, the text's size and the FLOPs per token.

    Args:
        nll_nats: Mean negative log-likelihood per predicted token, in nats (the
            usual cross-entropy loss).
        n_tokens: Number of predicted tokens the mean is over (>= 1).
        n_bytes: UTF-8 bytes of the text of those tokens (>= 0).
        flops: Forward FLOPs per token (> 1), a number or a :class:`FlopsPerToken`.
        bias: The numerator bias ``b`` (the paper's is negative, chosen per data set).

    Returns:
        The capacity with its parts.

    Raises:
        ScalelensError: On a non-finite or negative NLL, no tokens, negative bytes,
            or FLOPs not above 1 (whose logarithm would not be positive).
    """
    parts = flops if isinstance(flops, FlopsPerToken) else None
    total = flops.total if isinstance(flops, FlopsPerToken) else float(flops)
    if not math.isfinite(nll_nats) or nll_nats < 0:
        raise ScalelensError(f"the mean NLL must be a finite number >= 0, got {nll_nats}")
    if n_tokens < 1:
        raise ScalelensError(f"information capacity needs at least one predicted token, got {n_tokens}")
    if n_bytes < 0:
        raise ScalelensError(f"byte count must be >= 0, got {n_bytes}")
    if not math.isfinite(total) or total <= 1:
        raise ScalelensError(f"FLOPs per token must be a finite number > 1, got {total}")
    text_bits = 8.0 * n_bytes / n_tokens
    nll_bits = nll_nats / LN2
    log2_flops = math.log2(total)
    return CapacityResult(
        information_capacity=(text_bits - nll_bits + bias) / log2_flops,
        text_bits_per_token=text_bits,
        nll_bits_per_token=nll_bits,
        compression_gain_bits=text_bits - nll_bits,
        bias=float(bias),
        flops_per_token=total,
        log2_flops_per_token=log2_flops,
        n_tokens=int(n_tokens),
        n_bytes=int(n_bytes),
        flops=parts,
    )
