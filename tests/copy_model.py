"""A tiny GPT-2 with hand-set weights that answers a needle test through one known head.

Words w0..w9 (token ids 0..9) are "answer words"; haystack, needle prefix and question use
other words. Every head, MLP and position embedding is zero except head ``COPY_HEAD``
(layer 1, head 2), a retrieval head by construction:

- its query is a constant (the q bias) and its key is large on answer words only, so from any
  position it attends (softmax weight ~1) to the answer word in the context: the needle's answer;
- its value and output copy that word into its own residual direction, which the unembedding
  reads as that word's logit (~7.9);
- a constant residual direction gives the filler word ``FILLER`` a logit of 3.

So the greedy next token after the question is the needle's answer word. With the head masked
(zeroed query: uniform attention over n >= 10 tokens) the answer word's logit falls under 1
and the model answers ``FILLER``. The other heads output exactly zero, so masking them changes
nothing.

``copy_model(n_layers, n_heads, copy_head)`` builds other shapes of it (the width stays
``HIDDEN``; more layers, more parameters), for sweeps over "sizes" that all retrieve, and
``copy_head=None`` one that never retrieves (it answers ``FILLER`` to every needle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_models import word_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

COPY_HEAD = (1, 2)  # (layer, head): the head index differs from the layer index on purpose
N_LAYERS, N_HEADS, HIDDEN = 2, 4, 128
HEAD_DIM = HIDDEN // N_HEADS
VOCAB = 64  # tiny_models.word_tokenizer: w0..w59, then [UNK], [PAD], [BOS] (62), [EOS] (63)
ANSWER_WORDS = range(10)  # token ids of w0..w9
FILLER = 59  # token id of w59, the answer with the copy head masked
QUERY_BIAS = 20.0  # attention logit gap between an answer word and any other word: ~2 x this
FILLER_LOGIT = 3.0
CONSTANT_DIM = HIDDEN - 1  # residual dim the final norm sets to FILLER_LOGIT
ANSWER_DIMS = 64  # residual dims 64..73 carry the copied answer word

# One needle per answer word it retrieves; haystack sentences use w10..w58 only.
NEEDLES = [{"needle": f"w40 w41 w{a}", "question": "w20 w21", "answer": f"w{a}"} for a in (3, 6, 1)]
HAYSTACK = [f"w{30 + i % 9} w{12 + i} w{45 + i % 5}" for i in range(8)]


def copy_model(n_layers: int = N_LAYERS, n_heads: int = N_HEADS,
               copy_head: tuple[int, int] | None = COPY_HEAD) -> GPT2LMHeadModel:
    """The hand-set GPT-2 described in the module docstring (eval mode, float32).

    Args:
        n_layers: Decoder layers.
        n_heads: Heads per layer; a head needs 10 dims for the answer words, so at most 12.
        copy_head: ``(layer, head)`` of the one retrieval head, or None for none.
    """
    if HIDDEN // n_heads < len(ANSWER_WORDS) or HIDDEN % n_heads:
        raise ValueError(f"n_heads={n_heads}: a head of {HIDDEN} dims needs {len(ANSWER_WORDS)}+ dims")
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=HIDDEN, n_layer=n_layers, n_head=n_heads,
                     tie_word_embeddings=False, bos_token_id=62, eos_token_id=63)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith((".ln_1.weight", ".ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
        model.transformer.wte.weight[:, :VOCAB] = torch.eye(VOCAB)  # one residual dim per token
        if copy_head is not None:
            _set_copy_head(model, copy_head)
        model.transformer.ln_f.weight[CONSTANT_DIM] = 0.0
        model.transformer.ln_f.bias[CONSTANT_DIM] = FILLER_LOGIT
        unembed = model.lm_head.weight
        for a in ANSWER_WORDS:
            unembed[a, ANSWER_DIMS + a] = 1.0
        unembed[FILLER, CONSTANT_DIM] = 1.0
    return model


def _set_copy_head(model: GPT2LMHeadModel, copy_head: tuple[int, int]) -> None:
    """Constant query, key on answer words, value/output copying the word (GPT-2's Conv1D: x @ W)."""
    layer, head = copy_head
    head_dim = HIDDEN // model.config.n_head
    attn = model.transformer.h[layer].attn
    q, k, v = (part * HIDDEN + head * head_dim for part in range(3))
    attn.c_attn.bias[q] = QUERY_BIAS
    # the layer norm maps a one-hot residual to ~11.27 at its dim (~-0.09 elsewhere): 1/11.27
    # makes the copied direction about one unit, as large as the current token's embedding
    gain = 1 / 11.27
    for a in ANSWER_WORDS:
        attn.c_attn.weight[a, k] = 1.0
        attn.c_attn.weight[a, v + a] = 1.0
        attn.c_proj.weight[head * head_dim + a, ANSWER_DIMS + a] = gain


def save_copy_model(directory: Path, n_layers: int = N_LAYERS, n_heads: int = N_HEADS,
                    copy_head: tuple[int, int] | None = COPY_HEAD) -> Path:
    """Save the model, the word tokenizer, ``needles.jsonl`` and ``haystack.txt`` in ``directory``.

    The model goes to ``directory / "model"`` (returned); the shape arguments are ``copy_model``'s.
    """
    model_dir = directory / "model"
    copy_model(n_layers, n_heads, copy_head).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    (directory / "needles.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NEEDLES))
    (directory / "haystack.txt").write_text("\n".join(HAYSTACK) + "\n")
    return model_dir
