"""Corpus, tokenizer and token chunks of a suite build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..errors import ScalelensError
from .corpus import documents_sha256, generate_documents, read_text_file
from .manifest import staged_dir
from .presets import SuitePreset
from .tokenizer import encode_documents, save_tokenizer, train_tokenizer
from .train import chunk_stream

TOKENIZER_DIR = "tokenizer"
VALID_TEXT = "data/valid.txt"
VALID_CHUNKS = 16


@dataclass
class SuiteData:
    """Everything training needs, shared by all sizes.

    Attributes:
        tokenizer: The suite tokenizer.
        train: ``[n, seq_len]`` training chunks.
        valid: ``[m, seq_len]`` held-out chunks (at most ``VALID_CHUNKS``).
        corpus: Description recorded in the manifest.
    """

    tokenizer: PreTrainedTokenizerBase
    train: torch.Tensor
    valid: torch.Tensor
    corpus: dict[str, Any]


def corpus_documents(preset: SuitePreset, corpus_file: str | Path | None) -> list[str]:
    """The documents a build trains on: the user's file or the built-in generator."""
    return read_text_file(corpus_file) if corpus_file else generate_documents(preset.corpus)


def split_documents(docs: list[str], valid_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last ``valid_fraction`` of documents (at least one)."""
    if len(docs) < 2:
        raise ScalelensError("the corpus needs at least 2 documents (separate them with blank lines)")
    n_valid = max(1, int(len(docs) * valid_fraction))
    return docs[:-n_valid], docs[-n_valid:]


def load_or_train_tokenizer(out: Path, train_docs: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Reuse ``<out>/tokenizer`` if complete, else train it and move it into place."""
    final = out / TOKENIZER_DIR
    if (final / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(final))
    tokenizer = train_tokenizer(train_docs, vocab_size)
    with staged_dir(final) as tmp:
        save_tokenizer(tokenizer, tmp)
    return AutoTokenizer.from_pretrained(str(final))


def prepare_data(out: Path, preset: SuitePreset, corpus_file: str | Path | None) -> SuiteData:
    """Build (or reuse) the tokenizer and cut the corpus into training chunks.

    Args:
        out: Suite directory.
        preset: Resolved preset (seeded).
        corpus_file: Optional user text; ``None`` uses the built-in generator.

    Returns:
        Tokenizer, chunks and the corpus record for the manifest.
    """
    docs = corpus_documents(preset, corpus_file)
    train_docs, valid_docs = split_documents(docs, preset.valid_fraction)
    tokenizer = load_or_train_tokenizer(out, train_docs, preset.vocab_size)
    if len(tokenizer) > preset.vocab_size:
        raise ScalelensError(
            f"{out / TOKENIZER_DIR} has {len(tokenizer)} tokens, more than {preset.vocab_size}; "
            "delete the suite directory and rebuild"
        )
    seq_len = preset.train.seq_len
    train_stream = encode_documents(tokenizer, train_docs)
    valid_stream = encode_documents(tokenizer, valid_docs)
    valid = chunk_stream(valid_stream, min(seq_len, len(valid_stream)))[:VALID_CHUNKS]
    _write_valid_text(out, valid_docs)
    record = _corpus_record(preset, corpus_file, docs, len(train_stream), len(valid_stream))
    return SuiteData(tokenizer, chunk_stream(train_stream, seq_len), valid, record)


def _write_valid_text(out: Path, valid_docs: list[str]) -> None:
    path = out / VALID_TEXT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(valid_docs), encoding="utf-8")
    tmp.replace(path)


def _corpus_record(
    preset: SuitePreset,
    corpus_file: str | Path | None,
    docs: list[str],
    n_train: int,
    n_valid: int,
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "n_docs": len(docs),
        "sha256": documents_sha256(docs),
        "n_train_tokens": n_train,
        "n_valid_tokens": n_valid,
        "valid_fraction": preset.valid_fraction,
    }
    if corpus_file:
        return {
            "kind": "file",
            "path": str(Path(corpus_file).resolve()),
            **base,
            "description": "user text file, documents separated by blank lines",
        }
    return {
        "kind": "builtin",
        "seed": preset.corpus.seed,
        "config": preset.corpus.to_dict(),
        "description": (
            "synthetic pseudo-word text: Zipfian words with sparse preferred successors, "
            "sentences ending in ' .' and a newline, repeated sentences and spans, "
            "key/value facts queried later ('what is the code of X ? Y')"
        ),
        **base,
    }
