"""Retrieval-head scores (Wu et al. 2024), the pure scoring part.

Per needle-in-a-haystack test (:class:`NeedleTest`):
    ``top1_key``: ``(layer, head, query)`` int, the key position each head
    attends to most from answer step ``s`` (the same axes, per prompt, as the
    ``top1_key`` capture ``(prompt, layer, head, query)``); ``-1`` = no row;
    ``context``: ``(kv_seq,)`` int, the token ids the key positions index;
    ``needle_span``: ``(start, end)``, the needle answer's positions
    ``[start, end)`` in ``context``;
    ``answer``: ``(query,)`` int, the token produced at each step; negative
    ids are padding and ignored.

Step alignment: query row ``s`` is the position whose logits produced
``answer[s]`` (greedy decoding feeds ``answer[s-1]`` there; teacher forcing
uses the positions of the last prompt token and ``answer[:-1]``).

Copy-paste event of head ``(l, h)`` at step ``s``: with ``j = top1_key[l, h, s]``,
``start <= j < end`` and ``context[j] == answer[s]`` (so the produced token is
a needle token, copied from where it sits in the needle). A step gives at most
one event per head since only the top-1 key is considered.

Per-test score of a head, ``counting``:
    * ``"positions"`` (default): distinct needle positions ``j`` copied from,
      divided by the needle length ``end - start``; always in ``[0, 1]``;
    * ``"steps"``: every event adds ``1 / (end - start)``, as the reference
      implementation accumulates it; equals ``"positions"`` unless a head copies
      the same needle position at two steps (an answer repeating the needle),
      in which case it can exceed 1.

Gate: a test counts only when the ROUGE-1 recall of the answer against the
needle answer is > ``gate`` (0.5, strictly, as in the reference). Like the
reference (``rouge_score``'s ``RougeScorer(["rouge1"], use_stemmer=True)``
recall of the response against the needle), the recall is taken on stemmed
words of the decoded text when the test carries ``answer_text`` and
``needle_text`` (:func:`rouge1_word_recall`). Without them, or when the needle
text holds no word ``rouge_score`` keeps (it keeps only ``[a-z0-9]``, so a
needle in another script has none), it is the clipped unigram-overlap recall
on the token ids of the answer and ``context[start:end]``
(:func:`rouge1_recall`). A caller may also pass its own ``NeedleTest.recall``.
The unit each test used is reported in ``RetrievalResult.recall_unit``.

Final score of a head: the mean of its per-test scores over the tests that
pass the gate. Retrieval heads: score > ``threshold`` (0.1).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from scalelens.analyses._common import as_array, jsonable
from scalelens.errors import ScalelensError

Counting = Literal["positions", "steps"]


def rouge1_recall(candidate: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """ROUGE-1 recall: clipped unigram overlap divided by the reference length.

    Args:
        candidate: Generated tokens (ids or words).
        reference: Reference tokens, non-empty.

    Returns:
        ``sum_u min(count_cand(u), count_ref(u)) / len(reference)``.
    """
    if len(reference) == 0:
        raise ScalelensError("ROUGE-1 recall needs a non-empty reference")
    cand, ref = Counter(candidate), Counter(reference)
    overlap = sum(min(n, cand[tok]) for tok, n in ref.items())
    return overlap / len(reference)


def rouge_words(text: str) -> list[str]:
    """Lowercase alphanumeric words, like ``rouge_score``'s tokenizer (no stemming)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


@lru_cache(maxsize=1)
def _rouge1_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ScalelensError(
            "word-level ROUGE-1 needs the rouge-score package; pip install rouge-score"
        ) from None
    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_word_recall(candidate: str, reference: str) -> float:
    """ROUGE-1 recall on stemmed words, as the reference implementation computes it.

    ``rouge_score``'s ``RougeScorer(["rouge1"], use_stemmer=True)``: lowercase
    ``[a-z0-9]`` words, Porter-stemmed ("running" and "run" match), clipped
    unigram overlap divided by the number of reference words.

    Args:
        candidate: The generated answer text.
        reference: The needle answer text; must hold at least one such word.

    Returns:
        Recall in [0, 1].
    """
    if not rouge_words(reference):
        raise ScalelensError(f"ROUGE-1 recall needs a reference with [a-z0-9] words, got {reference!r}")
    return float(_rouge1_scorer().score(reference, candidate)["rouge1"].recall)


@dataclass(frozen=True, eq=False)
class NeedleTest:
    """One needle-in-a-haystack test; see the module docstring for the contract.

    Attributes:
        top1_key: ``(layer, head, query)`` int top-1 key position per step.
        context: ``(kv_seq,)`` int token ids indexed by key positions.
        needle_span: ``(start, end)`` of the needle answer in ``context``.
        answer: ``(query,)`` int produced token per step (negative = padding).
        recall: ROUGE-1 recall to gate on; None computes it (see ``recall_unit``).
        answer_text: The decoded answer, for the word-level gate.
        needle_text: The decoded needle answer, for the word-level gate.
    """

    top1_key: Any
    context: Any
    needle_span: tuple[int, int]
    answer: Any
    recall: float | None = None
    answer_text: str | None = None
    needle_text: str | None = None

    def __post_init__(self) -> None:
        top1 = as_array("top1_key", self.top1_key, 3, "iu")
        context = as_array("context", self.context, 1, "iu")
        answer = as_array("answer", self.answer, 1, "iu")
        if top1.shape[2] != answer.shape[0]:
            raise ScalelensError(
                f"top1_key has {top1.shape[2]} steps but answer has {answer.shape[0]} tokens"
            )
        start, end = self.needle_span
        if not 0 <= start < end <= context.shape[0]:
            raise ScalelensError(f"needle_span {self.needle_span} not inside [0, {context.size}]")

    def needle_tokens(self) -> np.ndarray:
        """The needle answer tokens ``context[start:end]``."""
        start, end = self.needle_span
        return np.asarray(self.context)[start:end]

    @property
    def recall_unit(self) -> str:
        """What the gate recall is computed on: ``given``, ``words`` or ``token_ids``."""
        if self.recall is not None:
            return "given"
        if self.answer_text is not None and self.needle_text is not None and rouge_words(self.needle_text):
            return "words"
        return "token_ids"

    def gate_recall(self) -> float:
        """``recall`` if given, else ROUGE-1 recall on stemmed words or on token ids."""
        if self.recall is not None:
            return float(self.recall)
        return answer_recall(self.answer, self.needle_tokens(), self.answer_text, self.needle_text)


def answer_recall(answer: Any, needle: Any, answer_text: str | None = None,
                  needle_text: str | None = None) -> float:
    """ROUGE-1 recall of an answer against the needle answer, as the gate takes it.

    Args:
        answer: Produced token ids (negative ids are padding and dropped).
        needle: The needle answer's token ids.
        answer_text: Decoded answer.
        needle_text: Decoded needle answer.

    Returns:
        Recall on stemmed words when both texts are given and the needle text
        holds a ``[a-z0-9]`` word, else on token ids.
    """
    if answer_text is not None and needle_text is not None and rouge_words(needle_text):
        return rouge1_word_recall(answer_text, needle_text)
    ids = np.asarray(answer)
    return rouge1_recall(ids[ids >= 0].tolist(), np.asarray(needle).tolist())


def copy_events(test: NeedleTest) -> np.ndarray:
    """Copy-paste events, ``(layer, head, query)`` bool.

    Args:
        test: One needle test.

    Returns:
        True where the head's top-1 key lies in the needle span and holds the
        token produced at that step.
    """
    top1 = np.asarray(test.top1_key)
    context = np.asarray(test.context)
    answer = np.asarray(test.answer)
    start, end = test.needle_span
    inside = (top1 >= start) & (top1 < end)
    key_token = context[np.where(inside, top1, start)]
    return np.asarray(inside & (key_token == answer) & (answer >= 0))


def head_scores(test: NeedleTest, counting: Counting = "positions") -> np.ndarray:
    """Per-test retrieval score of every head, ``(layer, head)`` float.

    Args:
        test: One needle test.
        counting: ``"positions"`` or ``"steps"``; see the module docstring.

    Returns:
        Copied needle positions (or copy events) divided by the needle length.
    """
    events = copy_events(test)
    start, end = test.needle_span
    if counting == "steps":
        return np.asarray(events.sum(axis=2) / (end - start))
    if counting != "positions":
        raise ScalelensError(f"counting must be 'positions' or 'steps', got {counting!r}")
    top1 = np.asarray(test.top1_key)
    copied = np.zeros(events.shape[:2] + (end - start,), dtype=bool)
    layer, head, step = np.nonzero(events)
    copied[layer, head, top1[layer, head, step] - start] = True
    return np.asarray(copied.sum(axis=2) / (end - start))


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Retrieval scores of all heads averaged over the tests that pass the gate.

    Attributes:
        scores: ``(layer, head)`` float mean score (NaN if no test passed).
        threshold: Score a retrieval head must exceed.
        retrieval_heads: ``[layer, head]`` pairs with score > threshold, by
            descending score (ties by layer, head).
        fraction: Share of heads that are retrieval heads (NaN if no test passed).
        fraction_zero: Share of heads with score exactly 0 (NaN likewise).
        n_tests: Tests given.
        n_tests_passed: Tests whose recall passed the gate.
        gate: The ROUGE-1 recall bar (strictly greater passes).
        counting: ``"positions"`` or ``"steps"``.
        note: Why scores are missing, or empty.
        recall_unit: What the gate recall was computed on (``words``,
            ``token_ids``, ``given``; comma-joined when tests differ).
    """

    scores: np.ndarray
    threshold: float
    retrieval_heads: list[list[int]]
    fraction: float
    fraction_zero: float
    n_tests: int
    n_tests_passed: int
    gate: float
    counting: str
    note: str
    recall_unit: str = "token_ids"

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` highest-scoring ``(layer, head)`` pairs (ties by layer, head)."""
        flat = np.nan_to_num(self.scores, nan=-np.inf).ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[:k]
        n_heads = self.scores.shape[1]
        return [(int(i // n_heads), int(i % n_heads)) for i in order]

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data (NaN becomes None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def retrieval_scores(
    tests: Sequence[NeedleTest],
    *,
    threshold: float = 0.1,
    gate: float = 0.5,
    counting: Counting = "positions",
) -> RetrievalResult:
    """Score every head over a set of needle tests.

    Args:
        tests: Needle tests, all with the same ``(layer, head)`` shape.
        threshold: Retrieval-head bar, score > threshold.
        gate: Tests count only when their ROUGE-1 recall is > gate.
        counting: ``"positions"`` (bounded in [0, 1]) or ``"steps"`` (reference).

    Returns:
        A :class:`RetrievalResult`.

    Raises:
        ScalelensError: With no tests or tests of different model shapes.
    """
    if not tests:
        raise ScalelensError("retrieval_scores needs at least one NeedleTest")
    shapes = {np.asarray(t.top1_key).shape[:2] for t in tests}
    if len(shapes) != 1:
        raise ScalelensError(f"tests disagree on (layer, head): {sorted(shapes)}")
    passed = [t for t in tests if t.gate_recall() > gate]
    shape = shapes.pop()
    unit = ",".join(sorted({t.recall_unit for t in tests}))
    if not passed:
        nan = float("nan")
        note = f"no test passed the ROUGE-1 recall gate > {gate}"
        return RetrievalResult(
            np.full(shape, nan), threshold, [], nan, nan, len(tests), 0, gate, counting, note, unit
        )
    scores = np.mean([head_scores(t, counting) for t in passed], axis=0)
    layer, head = np.nonzero(scores > threshold)
    order = np.lexsort((head, layer, -scores[layer, head]))
    return RetrievalResult(
        scores=scores,
        threshold=threshold,
        retrieval_heads=[[int(layer[i]), int(head[i])] for i in order],
        fraction=float(np.mean(scores > threshold)),
        fraction_zero=float(np.mean(scores == 0)),
        n_tests=len(tests),
        n_tests_passed=len(passed),
        gate=gate,
        counting=counting,
        note="",
        recall_unit=unit,
    )
