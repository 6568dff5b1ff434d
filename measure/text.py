"""Probe text for the residual-stream analyses: sequences from the built-in corpus or a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelens.errors import ScalelensError
from scalelens.probes.haystack import ENGLISH_HAYSTACK, clip_to_tokens, split_sentences
from scalelens.textfiles import input_file, read_utf8, text_lines


def suite_manifest(loaded: Any) -> Any:
    """The mini-suite manifest a loaded checkpoint belongs to, or None."""
    from scalelens.models.manifest import MANIFEST_NAME, read_manifest

    if loaded.info.source_kind != "suite":
        return None
    path = Path(loaded.info.source)
    for parent in (path, *list(path.parents)[:3]):
        if (parent / MANIFEST_NAME).is_file():
            return read_manifest(parent)
    return None


def suite_corpus(loaded: Any) -> Any:
    """The built-in CorpusConfig the suite was trained on, or None."""
    from scalelens.models.corpus import CorpusConfig

    manifest = suite_manifest(loaded)
    if manifest is None or manifest.corpus.get("kind") != "builtin":
        return None
    return CorpusConfig(**manifest.corpus["config"])


def probe_sentences(loaded: Any, text_file: str | None) -> list[str]:
    """Sentences to build probe sequences from (user file, or the built-in text)."""
    if text_file:
        path = input_file(text_file, "text file")
        sentences = split_sentences(read_utf8(path, "text file"))
        if not sentences:
            raise ScalelensError(f"text file {path} has no text")
        return sentences
    manifest = suite_manifest(loaded)
    if manifest is not None:
        path = manifest.root / manifest.valid_text
        text = read_utf8(path, "the suite's validation text")
        sentences = [ln for ln in text_lines(text) if ln.strip()]  # lines end as split_sentences's do
        if not sentences:  # probe_sequences would cycle through no sentences forever
            raise ScalelensError(f"the suite's validation text {path} has no text; "
                                 "give probe text with --text FILE")
        return sentences
    return split_sentences(ENGLISH_HAYSTACK)


def probe_sequences(loaded: Any, text_file: str | None, n: int, length: int) -> list[str]:
    """``n`` sequences of about ``length`` tokens, each starting at another sentence.

    Sequence ``i`` starts at sentence ``i * stride`` (mod the sentence count), with a stride
    coprime to that count, so the first ``len(sentences)`` sequences all start apart. A
    sentence longer than ``length`` on its own is cut to ``length`` tokens.
    """
    sentences = probe_sentences(loaded, text_file)
    tok = loaded.tokenizer
    stride = _coprime_stride(len(sentences))
    out = []
    for i in range(n):
        parts: list[str] = []
        count, j = 0, i * stride
        while count < length:
            s = sentences[j % len(sentences)]
            c = len(tok("\n" + s, add_special_tokens=False)["input_ids"])
            if count + c > length and parts:
                break
            parts.append(s)
            count, j = count + c, j + 1
        out.append(clip_to_tokens(tok, "\n".join(parts), length))
    return out


def probe_texts(loaded: Any, s: Any) -> list[str]:
    """The probe sequences of ``s`` (a ``MassiveSettings``: ``text``, ``n_sequences``, ``length``).

    ``length`` None: min(256, the model's context), 256 for a model that declares none.
    """
    length = s.length or min(256, loaded.info.max_position or 256)
    return probe_sequences(loaded, s.text, s.n_sequences, length)


def _coprime_stride(n: int, start: int = 7) -> int:
    """The smallest stride from ``start`` on sharing no factor with ``n`` (7 for most texts)."""
    stride = start
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def check_probe_text(loaded: Any, text_file: str | None, length: int | None) -> None:
    """Refuse an unreadable probe text or a ``--seq-length`` past the model's context.

    Run before any analysis captures, so the error leaves no capture file behind.
    """
    limit = loaded.info.max_position
    if length is not None and limit and length > limit:
        raise ScalelensError(f"--seq-length {length} exceeds the model's context of {limit} tokens; "
                             f"use --seq-length {limit} or less")
    probe_sentences(loaded, text_file)
