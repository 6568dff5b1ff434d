"""Probe text for the residual-stream analyses: sequences from the built-in corpus or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalelens.errors import ScalelensError
from scalelens.probes.haystack import ENGLISH_HAYSTACK, split_sentences, synthetic_material


def probe_sentences(loaded: Any, text_file: str | None) -> list[str]:
    """Sentences to build probe sequences from (user file, or the built-in text)."""
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            raise ScalelensError(f"text file {path} does not exist")
        sentences = split_sentences(path.read_text(encoding="utf-8"))
        if not sentences:
            raise ScalelensError(f"text file {path} has no text")
        return sentences
    if loaded.info.source_kind == "suite":
        return synthetic_material()[1]
    return split_sentences(ENGLISH_HAYSTACK)


def probe_sequences(loaded: Any, text_file: str | None, n: int, length: int) -> list[str]:
    """``n`` sequences of about ``length`` tokens, each starting at another sentence."""
    sentences = probe_sentences(loaded, text_file)
    tok = loaded.tokenizer
    out = []
    for i in range(n):
        parts: list[str] = []
        count, j = 0, i * 7
        while count < length:
            s = sentences[j % len(sentences)]
            c = len(tok("\n" + s, add_special_tokens=False)["input_ids"])
            if count + c > length and parts:
                break
            parts.append(s)
            count, j = count + c, j + 1
        out.append("\n".join(parts))
    return out
