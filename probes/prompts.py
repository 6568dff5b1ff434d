"""Prompt sets: reading files, labelled segments, tokenisation and position selection."""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from scalelens.errors import ScalelensError
from scalelens.probes.spec import PositionKind, Positions
from scalelens.textfiles import input_file, read_utf8, text_lines

DEFAULT_LABEL = "text"


class EmbedBlock:
    """A block of input-embedding vectors that stands in a prompt instead of tokens.

    A pseudo-modality, like a VLM's image tokens: the capture feeds the model
    ``inputs_embeds`` in which the block's positions hold these rows (one per
    position) and every other position holds the embedding of its token. Rows live
    in the space of ``model.get_input_embeddings()`` outputs, i.e. what the model
    itself computes from token ids before the first decoder layer (Gemma's
    embedding scaling included where the model does it in that module).

    The array is copied, made read-only and kept as float32 (float64 stays float64);
    it must be 2-D ``(n_vectors, width)`` with at least one row and finite values.
    Two blocks are equal when their shapes, dtypes and values are equal.
    """

    __slots__ = ("array", "_digest")

    def __init__(self, vectors: Any) -> None:
        """Wrap ``vectors`` (array-like, ``(n_vectors, width)``)."""
        arr = np.asarray(vectors)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ScalelensError(
                f"an embedding block must be 2-D (n_vectors, width) with n_vectors, width >= 1, "
                f"got shape {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise ScalelensError(f"an embedding block must hold numbers, got dtype {arr.dtype}")
        arr = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
        if not np.isfinite(arr).all():
            raise ScalelensError("an embedding block holds NaN or inf values")
        arr.flags.writeable = False
        self.array: np.ndarray = arr
        self._digest = hashlib.sha256(
            f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).hexdigest()

    @property
    def n_vectors(self) -> int:
        """Rows, i.e. sequence positions the block takes."""
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        """Vector width (must equal the model's input-embedding width)."""
        return int(self.array.shape[1])

    @property
    def digest(self) -> str:
        """SHA-256 of shape, dtype and values."""
        return self._digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmbedBlock) and other._digest == self._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"EmbedBlock({self.n_vectors}x{self.width}, {self.array.dtype})"


@dataclass(frozen=True)
class Prompt:
    """A prompt made of labelled pieces, e.g. (("document", ...), ("question", ...)).

    A plain prompt is a single piece labelled ``text``. Pieces are tokenised one by
    one and concatenated, so every token carries its piece's label. A piece may be an
    :class:`EmbedBlock` instead of text: it takes one position per vector, labelled
    with its piece's label (a pseudo-modality fed through ``inputs_embeds``).
    """

    pieces: tuple[tuple[str, str | EmbedBlock], ...]
    source: str | None = field(default=None, compare=False)
    """Where the prompt was read (``prompts.txt:12``), for error lines; not part of its identity."""

    @classmethod
    def of(cls, text: str, source: str | None = None) -> Prompt:
        """A prompt with one piece labelled ``text``."""
        return cls(((DEFAULT_LABEL, text),), source)

    def named(self, index: int) -> str:
        """How error lines name this prompt: its file and line, else ``prompt index N``."""
        return f"prompt {self.source}" if self.source else f"prompt index {index}"

    @property
    def text(self) -> str:
        """The prompt's text pieces as one string (embedding blocks have no text)."""
        return "".join(t for _, t in self.pieces if isinstance(t, str))

    @property
    def has_embeds(self) -> bool:
        """Whether any piece is an embedding block."""
        return any(isinstance(t, EmbedBlock) for _, t in self.pieces)


def as_prompts(items: str | Prompt | list[str] | list[Prompt]) -> list[Prompt]:
    """Accept plain strings or Prompt objects; one string or Prompt is one prompt."""
    if isinstance(items, str | Prompt):
        return [Prompt.of(items) if isinstance(items, str) else items]
    prompts = []
    for n, p in enumerate(items):
        if not isinstance(p, str | Prompt):
            raise ScalelensError(f"prompt index {n} is a {type(p).__name__}, not text or a Prompt")
        prompts.append(p if isinstance(p, Prompt) else Prompt.of(p))
    return prompts


def _jsonl_prompt(line: str, where: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ScalelensError(f"{where}: invalid JSON ({e.msg}); write one JSON object per line") from None
    if isinstance(obj, dict) and "segments" in obj:
        segments = obj["segments"]
        ok = isinstance(segments, list) and segments and all(
            isinstance(s, dict) and isinstance(s.get("label"), str) and s["label"]
            and isinstance(s.get("text"), str) for s in segments)
        if not ok:
            raise ScalelensError(
                f'{where}: "segments" must be a non-empty list of {{"label": str, "text": str}} objects'
            )
        return Prompt(tuple((s["label"], s["text"]) for s in segments), where)
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return Prompt.of(obj["text"], where)
    raise ScalelensError(f'{where}: expected an object with "text" (a string) or "segments"')


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Read prompts from ``.txt`` (one per line) or ``.jsonl`` (``text`` or ``segments``).

    Blank lines are skipped and a UTF-8 byte-order mark is accepted.

    Raises:
        ScalelensError: if the file is missing, not UTF-8, holds no prompts, or a
            ``.jsonl`` line is not a prompt object.
    """
    file = input_file(path, "prompt file")
    if file.suffix.lower() == ".json":
        raise ScalelensError(f"prompt file {file}: .json is not read; use .jsonl (one JSON object per "
                             "line) or .txt (one prompt per line)")
    text = read_utf8(file, "prompt file")
    if "\x00" in text:
        raise ScalelensError(f"prompt file {file} holds NUL bytes (a binary file?); give a text file")
    lines = text_lines(text)
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise ScalelensError(f"prompt file {file} has no prompts; write one prompt per line")
    if file.suffix.lower() == ".jsonl":
        return [_jsonl_prompt(ln, f"{file}:{i}") for i, ln in numbered]
    return [Prompt.of(ln, f"{file}:{i}") for i, ln in numbered]


class EmbedSpan(NamedTuple):
    """Where an embedding block sits: prompt index, first position, the block."""

    prompt: int
    start: int
    block: EmbedBlock


@dataclass(frozen=True)
class TokenizedPrompts:
    """Token ids and segment codes of a prompt set, padded to a common length.

    Attributes:
        ids: (prompt, seq) int32, padded with -1. Positions of an embedding block
            hold a placeholder token id (:func:`placeholder_id`); ``embeds`` says
            which positions those are.
        segments: (prompt, seq) int16 index into ``labels``, -1 on padding.
        lengths: (prompt,) int32 number of real positions (tokens and vectors).
        labels: Segment label names.
        embeds: Embedding blocks, ordered by prompt then position; empty for a
            text-only prompt set.
    """

    ids: np.ndarray
    segments: np.ndarray
    lengths: np.ndarray
    labels: tuple[str, ...]
    embeds: tuple[EmbedSpan, ...] = ()

    @property
    def seq_len(self) -> int:
        """Padded length."""
        return int(self.ids.shape[1])

    def batch_ids(self, start: int, stop: int) -> np.ndarray:
        """Prompts ``start`` .. ``stop - 1`` as int64 ids cut to the longest of them (-1 pads)."""
        width = int(self.lengths[start:stop].max())
        return self.ids[start:stop, :width].astype(np.int64)

    def fingerprint(self) -> str:
        """SHA-256 of the token ids and segments (detects a changed prompt set on resume)."""
        h = hashlib.sha256()
        for arr in (self.ids, self.segments, self.lengths):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(self.labels).encode())
        for span in self.embeds:  # nothing added for text-only sets: their fingerprint is unchanged
            h.update(f"{span.prompt},{span.start},{span.block.digest};".encode())
        return h.hexdigest()

    @cached_property
    def _embed_prompts(self) -> list[int]:
        return [span.prompt for span in self.embeds]

    def embeds_between(self, start: int, stop: int) -> list[EmbedSpan]:
        """The blocks of prompts ``start`` .. ``stop - 1`` (in prompt, then position order)."""
        keys = self._embed_prompts
        return list(self.embeds[bisect.bisect_left(keys, start):bisect.bisect_left(keys, stop)])


def placeholder_id(tokenizer: Any, vocab_size: int | None = None) -> int:
    """Token id at padding and embedding-block positions: pad, else EOS, else 0.

    With ``vocab_size``, an id past the model's embedding (a pad token added to the
    tokenizer without resizing the model) is skipped.
    """
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None and (vocab_size is None or 0 <= int(value) < vocab_size):
            return int(value)
    return 0


def _encode_piece(tokenizer, text: str, first: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def tokenize(prompts: list[Prompt], tokenizer, max_length: int | None = None,
             vocab_size: int | None = None) -> TokenizedPrompts:
    """Tokenise prompts piece by piece; raise if any is empty or longer than ``max_length``.

    Special tokens (e.g. BOS) are added to the first piece only when it is text; an
    embedding block takes one placeholder position per vector (a prompt that starts
    with a block starts with its first vector; see :func:`placeholder_id`, given
    the model's ``vocab_size``).
    """
    if not prompts:
        raise ScalelensError("no prompts to capture")
    labels: list[str] = []
    rows: list[tuple[list[int], list[int]]] = []
    spans: list[EmbedSpan] = []
    for n, prompt in enumerate(prompts):
        ids: list[int] = []
        seg: list[int] = []
        for i, (label, content) in enumerate(prompt.pieces):
            if label not in labels:
                labels.append(label)
            if isinstance(content, EmbedBlock):
                spans.append(EmbedSpan(n, len(ids), content))
                piece = [placeholder_id(tokenizer, vocab_size)] * content.n_vectors
            else:
                piece = _encode_piece(tokenizer, content, i == 0)
            ids += piece
            seg += [labels.index(label)] * len(piece)
        if not ids:
            raise ScalelensError(f"{prompt.named(n)} tokenises to nothing; remove empty prompts")
        if max_length is not None and len(ids) > max_length:
            raise ScalelensError(
                f"{prompt.named(n)} has {len(ids)} tokens, more than the limit {max_length} (max_length=, "
                "--max-length on the command line, at most the model's context); shorten or split the prompt"
            )
        rows.append((ids, seg))
    seq = max(len(r[0]) for r in rows)
    ids_arr = np.full((len(rows), seq), -1, dtype=np.int32)
    seg_arr = np.full((len(rows), seq), -1, dtype=np.int16)
    for i, (ids, seg) in enumerate(rows):
        ids_arr[i, : len(ids)] = ids
        seg_arr[i, : len(seg)] = seg
    lengths = np.array([len(r[0]) for r in rows], dtype=np.int32)
    return TokenizedPrompts(ids_arr, seg_arr, lengths, tuple(labels), tuple(spans))


def select_positions(tok: TokenizedPrompts, positions: Positions) -> np.ndarray:
    """Resolve positions per prompt: (prompt, query) int32, padded with -1."""
    per: list[np.ndarray] = []
    for i, n in enumerate(tok.lengths):
        per.append(_positions_of(tok, i, int(n), positions))
    width = max(1, max(len(p) for p in per))
    out = np.full((len(per), width), -1, dtype=np.int32)
    for i, p in enumerate(per):
        out[i, : len(p)] = p
    return out


def _positions_of(tok: TokenizedPrompts, i: int, n: int, positions: Positions) -> np.ndarray:
    if positions.kind is PositionKind.ALL:
        return np.arange(n)
    if positions.kind is PositionKind.LAST:
        return np.array([n - 1])
    if positions.kind is PositionKind.SEGMENT:
        if positions.segment not in tok.labels:
            raise ScalelensError(
                f"segment {positions.segment!r} not in the prompts; labels: {', '.join(tok.labels)}"
            )
        code = tok.labels.index(positions.segment)
        idx = np.flatnonzero(tok.segments[i, :n] == code) + positions.offset
        return idx[(idx >= 0) & (idx < n)]
    idx = np.array(positions.indices)
    idx = np.where(idx < 0, idx + n, idx)
    if (idx < 0).any() or (idx >= n).any():
        raise ScalelensError(f"position(s) {list(positions.indices)} out of range for prompt index {i} "
                             f"of {n} tokens; positions count from 0, negative ones from the end")
    return idx
