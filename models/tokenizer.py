"""A byte-level BPE tokenizer trained locally, saved as a Hugging Face fast tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def train_tokenizer(docs: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-NeoX style special tokens).

    Like Pythia's tokenizer, ``<|endoftext|>`` (id 0) serves as BOS, EOS and UNK and
    ``<|padding|>`` (id 1) pads. Byte-level BPE never produces unknown tokens, so a
    user corpus in any script tokenizes.

    Args:
        docs: Training text.
        vocab_size: Target vocabulary size including the 256 byte symbols and the
            two special tokens.

    Returns:
        A fast tokenizer; save it with ``save_pretrained`` and reload it with
        ``AutoTokenizer.from_pretrained``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def encode_documents(tokenizer: PreTrainedTokenizerBase, docs: list[str], batch: int = 4096) -> np.ndarray:
    """Tokenize documents into one stream, each document followed by EOS (Pythia's EOD).

    Args:
        tokenizer: The suite tokenizer.
        docs: Documents in order.
        batch: Documents tokenized per call (bounds peak memory).

    Returns:
        The concatenated token ids as an ``int64`` array.
    """
    eos = [tokenizer.eos_token_id]
    parts: list[np.ndarray] = []
    for start in range(0, len(docs), batch):
        encoded = tokenizer(docs[start : start + batch], add_special_tokens=False)["input_ids"]
        parts.extend(np.asarray(ids + eos, dtype=np.int64) for ids in encoded)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(path)`` works offline."""
    tokenizer.save_pretrained(str(path))
