"""Retrieval heads on a live model: needle tests, fast and reference scoring, masking ablation."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from scalelens.analyses.from_capture import RETRIEVAL_PROBES, decode_ids, retrieval_from_capture, with_texts
from scalelens.analyses.retrieval import NeedleTest, RetrievalResult, answer_recall, retrieval_scores
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks.arch import layer_part
from scalelens.hooks.attention import attention_rows, attention_tap
from scalelens.measure.haystack_fit import context_hint
from scalelens.measure.text import suite_corpus
from scalelens.probes.haystack import (
    ANSWER_PREFIX,
    DEPTHS,
    ENGLISH_HAYSTACK,
    ENGLISH_NEEDLES,
    MIN_DEFAULT_LENGTH,
    PROMPT_FORMATS,
    HaystackTest,
    Needle,
    build_tests,
    default_context_lengths,
    needle_overhead,
    read_needles,
    resolve_prompt_format,
    split_sentences,
    synthetic_material,
)
from scalelens.probes.prompts import Prompt, TokenizedPrompts, placeholder_id, tokenize
from scalelens.probes.spec import Positions, ProbeSpec
from scalelens.progress import progress_bar
from scalelens.textfiles import input_file, read_utf8

# Built-in needles per test set: far past any use (each needle is a test per length and depth).
MAX_NEEDLES = 1000
DEFAULT_NEEDLES = 2  # of a built-in set when n_needles is None


@dataclass(frozen=True)
class RetrievalSettings:
    """Settings of the retrieval-head measurement.

    Attributes:
        mode: ``fast`` (one teacher-forced pass) or ``reference`` (greedy decoding).
        needles: ``auto``, ``english``, ``synthetic`` or a .jsonl file of needles.
        haystack: A text file of haystack sentences, or None for the built-in one.
        context_lengths: Haystack sizes in tokens; None: 3 sizes up to the context. A size
            given twice is kept once.
        depths: Needle depths in [0, 1]; a depth given twice is kept once.
        n_needles: Needles to use: the first N of the set or file. None: 2 of a built-in
            set, every needle of a file.
        threshold: Retrieval-head bar (score > threshold).
        gate: ROUGE-1 recall a test must exceed to count.
        ablation_k: Heads to mask in the ablation (0 skips it).
        ablation_tests: Tests (spread over lengths and depths) decoded in each ablation arm.
        seed: Seed of the random heads in the ablation.
        batch_size: Prompts per forward pass in fast mode.
        prompt_format: ``auto`` (chat when the tokenizer has a chat template),
            ``base`` (plain text) or ``chat`` (the tokenizer's chat template).
        answer_prefix: Text the assistant's turn starts with in the chat format.
    """

    mode: str = "fast"
    needles: str = "auto"
    haystack: str | None = None
    context_lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] = DEPTHS
    n_needles: int | None = None
    threshold: float = 0.1
    gate: float = 0.5
    ablation_k: int = 5
    ablation_tests: int = 8
    seed: int = 0
    batch_size: int = 4
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_format: str = "auto"
    answer_prefix: str = ANSWER_PREFIX

    def __post_init__(self) -> None:
        # A repeated size or depth repeated every needle test at it (--context-lengths 8,8 built
        # 40 tests, each twice, not 20): dropped, as repeated --dilutions are, keeping the order.
        if self.context_lengths is not None:
            object.__setattr__(self, "context_lengths", tuple(dict.fromkeys(self.context_lengths)))
        object.__setattr__(self, "depths", tuple(dict.fromkeys(self.depths)))
        if self.mode not in ("fast", "reference"):
            raise ScalelensError(f"retrieval mode must be fast or reference, got {self.mode!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ScalelensError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, "
                                 f"got {self.prompt_format!r}")
        if self.n_needles is not None and not 1 <= self.n_needles <= MAX_NEEDLES:
            raise ScalelensError(f"--n-needles must be 1 to {MAX_NEEDLES:,}, got {self.n_needles:,}")


def needle_material(loaded: Any, s: RetrievalSettings) -> tuple[list[Needle], list[str]]:
    """Needles and haystack sentences for ``loaded`` (suite language or English, or files)."""
    kind = s.needles
    if kind == "auto":
        kind = "synthetic" if loaded.info.source_kind == "suite" else "english"
    n = s.n_needles or DEFAULT_NEEDLES
    if kind == "synthetic":
        needles, hay = synthetic_material(n, corpus=suite_corpus(loaded))
    elif kind == "english":
        if n > len(ENGLISH_NEEDLES):
            raise ScalelensError(f"--n-needles {n}: the built-in English set has "
                                 f"{len(ENGLISH_NEEDLES)} needles; give more with --needles FILE.jsonl")
        needles, hay = list(ENGLISH_NEEDLES[:n]), split_sentences(ENGLISH_HAYSTACK)
    else:
        needles, hay = read_needles(kind), split_sentences(ENGLISH_HAYSTACK)
        if s.n_needles and s.n_needles > len(needles):
            raise ScalelensError(f"--n-needles {s.n_needles}: needle file {kind} has "
                                 f"{len(needles)} needle(s)")
        needles = needles[: s.n_needles]
    if s.haystack:
        path = input_file(s.haystack, "haystack file")
        hay = split_sentences(read_utf8(path, "haystack file"))
        if not hay:
            raise ScalelensError(f"haystack file {path} has no sentences")
    return needles, hay


def haystack_tests(loaded: Any, s: RetrievalSettings, with_answer: bool,
                   within_context: bool = True) -> list[HaystackTest]:
    """Build the needle tests for ``loaded`` under settings ``s``.

    ``within_context``: refuse a haystack longer than the model's context before building
    it (a huge ``--context-lengths`` would otherwise tokenize for hours first). Text
    dominance's soft-token documents are pooled into fewer vectors, and pass False.
    """
    needles, hay = needle_material(loaded, s)
    fmt = resolve_prompt_format(loaded.tokenizer, s.prompt_format)
    if within_context and s.context_lengths:
        check_context_lengths(loaded, s, needles, hay, fmt)
    lengths = list(s.context_lengths or _default_lengths(loaded, s, needles, hay, fmt))
    return build_tests(needles, hay, loaded.tokenizer, lengths, s.depths, with_answer=with_answer,
                       prompt_format=fmt, answer_prefix=s.answer_prefix)


def _default_lengths(loaded: Any, s: RetrievalSettings, needles: list[Needle], hay: list[str],
                     fmt: str) -> list[int]:
    """Three haystack sizes up to the context; refused, naming sizes that fit, in a short context."""
    limit = loaded.info.max_position
    if not limit:
        raise ScalelensError("the model declares no context length, so there are no default haystack "
                             "sizes; give them with --context-lengths (in Python context_lengths=)")
    reserve = needle_overhead(needles, loaded.tokenizer, fmt, s.answer_prefix)
    if limit - reserve < MIN_DEFAULT_LENGTH:
        raise ScalelensError(f"the model's context ({limit}) is too short for the default haystack sizes; "
                             f"{context_hint(loaded, s, needles, hay, fmt)}")
    return default_context_lengths(limit, reserve)


def check_context_lengths(loaded: Any, s: RetrievalSettings, needles: list[Needle], hay: list[str],
                          fmt: str) -> None:
    """Refuse haystack sizes larger than the model's context, before any such haystack is built.

    Raises:
        ScalelensError: naming the largest size, the context and sizes that fit.
    """
    limit, longest = loaded.info.max_position, max(s.context_lengths or (0,))
    if limit and longest > limit:
        raise ScalelensError(
            f"--context-lengths up to {longest} tokens exceed the model's context of {limit} tokens "
            f"before the needle, question and answer are added; {context_hint(loaded, s, needles, hay, fmt)}"
        )


def check_fit(loaded: Any, tests: list[HaystackTest], s: RetrievalSettings) -> TokenizedPrompts:
    """The tests' prompts, tokenized.

    Raises:
        ScalelensError: if one is longer than the model's context (naming settings that fit).
    """
    tok = tokenize([t.prompt for t in tests], loaded.tokenizer)
    limit, lengths = loaded.info.max_position, tok.lengths
    if limit and int(lengths.max()) > limit:
        sizes = sorted({t.context_tokens for t in tests})
        needles, hay = needle_material(loaded, s)
        fmt = resolve_prompt_format(loaded.tokenizer, s.prompt_format)
        raise ScalelensError(
            f"needle tests of up to {int(lengths.max())} tokens (haystacks of {sizes} tokens plus "
            f"needle, question and answer) exceed the model's context of {limit} tokens; "
            f"{context_hint(loaded, s, needles, hay, fmt)}"
        )
    return tok


def retrieval_probes() -> list[ProbeSpec]:
    """Top-1 key per head and the greedy prediction at every answer-producing row."""
    rows = Positions.parse("segment:answer@-1")
    return [ProbeSpec(RETRIEVAL_PROBES[0], "attn_pattern", reduction="top1", positions=rows),
            ProbeSpec(RETRIEVAL_PROBES[1], "logits", reduction="top1", positions=rows)]


def fast_scores(loaded: Any, s: RetrievalSettings, out: Path, overwrite: bool = False,
                progress: bool = True) -> tuple[RetrievalResult, list[HaystackTest]]:
    """Teacher-forced scoring: one capture pass, then scoring from the file."""
    tests = haystack_tests(loaded, s, with_answer=True)
    check_fit(loaded, tests, s)
    capture(loaded, retrieval_probes(), [t.prompt for t in tests], out, batch_size=s.batch_size,
            overwrite=overwrite, reuse_complete=True,
            progress=progress)
    with CaptureFile(out) as f:
        return retrieval_from_capture(f, s.threshold, s.gate, tokenizer=loaded.tokenizer), tests


# -- reference mode: greedy decoding token by token -------------------------------------
def _attn_modules(loaded: Any) -> dict[int, torch.nn.Module]:
    return {i: layer_part(loaded.model, i, "attn") for i in range(loaded.info.n_layers)}


def _greedy_top1(loaded: Any, ids: torch.Tensor, steps: int) -> tuple[np.ndarray, list[int]]:
    """Decode ``steps`` tokens greedily; top-1 key of every head at every step.

    As the paper's code does it: the prompt runs once into a KV cache, then one forward
    pass per produced token over the cached keys; the LM head runs on the last position
    only. The cache keeps every key (no sliding-window layers), so key indices are
    absolute positions and the model's own mask applies any window.
    """
    info = loaded.info
    top1 = torch.full((info.n_layers, info.n_heads, steps), -1, dtype=torch.long, device=ids.device)
    state = {"step": 0}

    def tap(layer, q, k, mask, scaling, kwargs):  # stays on the device: no sync per layer
        rows = torch.full((q.shape[0], 1), q.shape[2] - 1, device=q.device)
        probs = attention_rows(q, k, rows, mask, scaling, kwargs)
        top1[layer, :, state["step"]] = probs[0, :, 0].argmax(-1)

    produced: list[int] = []
    cache = {_cache_kwarg(loaded.model): DynamicCache()}
    with attention_tap(loaded.model, _attn_modules(loaded), tap), torch.inference_mode():
        for step in range(steps):
            state["step"] = step
            out = loaded.model(input_ids=ids, **cache, use_cache=True, logits_to_keep=1)
            produced.append(int(out.logits[0, -1].argmax()))
            ids = ids.new_tensor([[produced[-1]]])
    return top1.cpu().numpy(), produced


def _cache_kwarg(model: Any) -> str:
    """``cache`` (newer transformers) or ``past_key_values``, whichever ``forward`` takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def reference_needle_tests(loaded: Any, s: RetrievalSettings, progress: bool = False) -> list[NeedleTest]:
    """Greedy decoding of every test: produced tokens and top-1 keys per step, decoded texts."""
    tests = haystack_tests(loaded, s, with_answer=True)
    tok = check_fit(loaded, tests, s)
    need, ans = tok.labels.index("needle_answer"), tok.labels.index("answer")
    needle_tests = []
    for i in progress_bar(range(len(tests)), desc="retrieval (reference)", unit="test", disable=not progress):
        n = int(tok.lengths[i])
        seg = tok.segments[i, :n]
        start = int(np.flatnonzero(seg == ans)[0])
        ids = torch.tensor(tok.ids[i, :start], dtype=torch.long, device=loaded.model.device)[None]
        top1, produced = _greedy_top1(loaded, ids, n - start)
        span = np.flatnonzero(seg == need)
        test = NeedleTest(top1, tok.ids[i, :start], (int(span[0]), int(span[-1]) + 1), np.array(produced))
        needle_tests.append(with_texts(test, loaded.tokenizer))
    return needle_tests


def reference_scores(loaded: Any, s: RetrievalSettings, progress: bool = True) -> RetrievalResult:
    """The paper's procedure: greedy decoding, top-1 attention at every produced token."""
    return retrieval_scores(reference_needle_tests(loaded, s, progress), threshold=s.threshold, gate=s.gate)


# -- masking ablation ---------------------------------------------------------------
@contextmanager
def masked_heads(loaded: Any, heads: list[tuple[int, int]]) -> Iterator[None]:
    """Make the listed heads attend uniformly (zeroed pre-softmax logits) while inside.

    The query is zeroed; an ALiBi family's bias for those heads (BLOOM) is zeroed too.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    modules = {i: layer_part(loaded.model, i, "attn") for i in by_layer}

    def zero_query(layer, q, k, mask, scaling, kwargs):
        q = q.clone()
        q[:, by_layer[layer]] = 0
        if "alibi" in kwargs:
            kwargs["alibi"][:, by_layer[layer]] = 0
        return q

    if not heads:
        yield
        return
    with attention_tap(loaded.model, modules, zero_query):
        yield


def needle_recall(loaded: Any, prompts: list[Prompt], heads: list[tuple[int, int]]) -> float:
    """Mean ROUGE-1 recall (stemmed words, as the gate) of greedy answers with ``heads`` masked."""
    tok = tokenize(prompts, loaded.tokenizer, loaded.info.max_position or None)
    need, ans = tok.labels.index("needle_answer"), tok.labels.index("answer")
    recalls = []
    pad = placeholder_id(loaded.tokenizer, loaded.info.vocab_size)
    with masked_heads(loaded, heads), torch.inference_mode():
        for i, n in enumerate(tok.lengths):
            seg = tok.segments[i, :n]
            start = int(np.flatnonzero(seg == ans)[0])
            ids = torch.tensor(tok.ids[i, :start], dtype=torch.long, device=loaded.model.device)[None]
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=int(n - start), pad_token_id=pad)
            produced = out[0, start:].cpu().numpy()
            needle = tok.ids[i, :n][seg == need]
            recalls.append(answer_recall(produced, needle, decode_ids(loaded.tokenizer, produced),
                                         decode_ids(loaded.tokenizer, needle)))
    return float(np.mean(recalls))


def ablation(loaded: Any, result: RetrievalResult, tests: list[HaystackTest], k: int,
             seed: int, n_tests: int = 8) -> dict[str, Any]:
    """Needle recall with the top-``k`` retrieval heads masked vs ``k`` random other heads.

    Greedy decoding of ``n_tests`` tests (every few of ``tests``) in three arms:
    unmasked, top-``k`` masked, ``k`` random non-top heads masked (seeded).
    """
    info = loaded.info
    k = min(k, info.n_layers * info.n_heads // 2)  # leave as many other heads to draw from
    top = result.top_heads(k)
    others = [(a, b) for a in range(info.n_layers) for b in range(info.n_heads) if (a, b) not in top]
    rand = random.Random(seed).sample(others, k)
    stride = max(1, len(tests) // max(1, n_tests))
    prompts = [t.prompt for t in tests[::stride][:n_tests]]
    return {
        "k": k,
        "seed": seed,
        "n_tests": len(prompts),
        "top_heads": [list(h) for h in top],
        "random_heads": [list(h) for h in rand],
        "recall_unmasked": needle_recall(loaded, prompts, []),
        "recall_top_masked": needle_recall(loaded, prompts, top),
        "recall_random_masked": needle_recall(loaded, prompts, rand),
    }
