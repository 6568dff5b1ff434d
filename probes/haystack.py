"""Needle-in-a-haystack stimuli (Wu et al. 2024) as labelled prompts.

A test is a haystack of whole sentences with a needle sentence inserted at a
sentence boundary at a given depth, followed by a question; the needle's answer
is the piece the model must produce. Prompts are labelled pieces; the ``base``
format (a base model's plain text) is::

    haystack | needle | needle_answer | needle | haystack | question | answer

and the ``chat`` format (instruct models) puts everything up to the question in
one user message of the tokenizer's chat template, with the generation prompt,
and starts the assistant's turn with an answer prefix (``Answer:``)::

    template | haystack | ... | question | template | answer_prefix | answer

``template`` is the chat template's own text around the message (everything
before it, and everything after it through the generation prompt).
``needle_answer`` is the part of the needle sentence the answer repeats: its token
span is the needle span of the retrieval score.
The ``answer`` piece is present for teacher-forced (fast) scoring and left out
for greedy decoding (the reference mode).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelens.errors import ScalelensError
from scalelens.probes.prompts import Prompt
from scalelens.textfiles import input_file, read_utf8, text_lines

DEPTHS = tuple(round(0.1 * i, 1) for i in range(10))
PROMPT_FORMATS = ("auto", "base", "chat")
NEEDLE_SETS = ("auto", "english", "synthetic")
"""Built-in needle sets a ``needles`` setting may name instead of a .jsonl file."""
ANSWER_PREFIX = "Answer:"
TEMPLATE = "template"  # segment label of the chat template's own text
_SENTINEL = "\x00scalelens user message\x00"


@dataclass(frozen=True)
class Needle:
    """A needle sentence, the question asking for it, and the expected answer."""

    needle: str
    question: str
    answer: str

    def __post_init__(self) -> None:
        if not (self.needle.strip() and self.question.strip() and self.answer.strip()):
            raise ScalelensError("a needle needs non-empty 'needle', 'question' and 'answer'")
        if self.answer.strip() not in self.needle:
            raise ScalelensError(f"needle answer {self.answer!r} does not occur in its needle sentence")


@dataclass(frozen=True)
class HaystackTest:
    """One test: where the needle went and the prompt pieces."""

    needle: Needle
    context_tokens: int
    depth: float
    prompt: Prompt

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (stored beside the capture)."""
        return {"needle": self.needle.__dict__, "context_tokens": self.context_tokens,
                "depth": self.depth}


ENGLISH_NEEDLES = (
    Needle("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
           "What is the best thing to do in San Francisco?",
           "eat a sandwich and sit in Dolores Park on a sunny day"),
    Needle("The secret ingredient of the soup is a spoon of smoked paprika from Seville.",
           "What is the secret ingredient of the soup?", "a spoon of smoked paprika from Seville"),
)

ENGLISH_HAYSTACK = (
    "The river runs slowly through the old town in the summer. Farmers bring vegetables to the "
    "market every morning. Children play near the bridge while their parents talk. The library "
    "opens at nine and closes late on Thursdays. A small bakery sells bread that smells of "
    "cinnamon. The train to the coast leaves twice a day. Many visitors walk along the harbour "
    "at sunset. The museum shows paintings of ships and storms. In winter the streets are quiet "
    "and cold. The school has a garden where students grow herbs. An old clock tower stands in "
    "the square. People meet in the cafe to read the newspaper. The hills behind the town are "
    "covered with vineyards. A festival with music and lanterns takes place every autumn."
)


_NEEDLE_KEYS = ("needle", "question", "answer")


def _needle_text(value: Any, key: str, where: str) -> str:
    """A needle field as text: a string or a number (``42``), never null, a list or empty."""
    ok = isinstance(value, str | int | float) and not isinstance(value, bool)
    if not ok or not str(value).strip():
        raise ScalelensError(f'{where}: "{key}" must be non-empty text, got {json.dumps(value)}')
    return str(value)


def read_needles(path: str | Path) -> list[Needle]:
    """Read ``{"needle", "question", "answer"}`` objects, one per line."""
    p = input_file(path, "needle file")
    needles = []
    for i, line in enumerate(read_utf8(p, "needle file").split("\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            fields = {k: obj[k] for k in _NEEDLE_KEYS}
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ScalelensError(
                f'{p}:{i + 1}: expected {{"needle": ..., "question": ..., "answer": ...}}'
            ) from None
        texts = [_needle_text(v, k, f"{p}:{i + 1}") for k, v in fields.items()]
        try:
            needles.append(Needle(*texts))
        except ScalelensError as e:
            raise ScalelensError(f"{p}:{i + 1}: {e}") from None
    if not needles:
        raise ScalelensError(f"needle file {p} has no needles")
    return needles


def synthetic_material(n_needles: int = 4, seed: int = 0,
                       corpus: Any = None) -> tuple[list[Needle], list[str]]:
    """Needles and haystack sentences in the language of the built-in corpus.

    Half the needles are key/value facts (``the code of X is N .``), half are word
    lists to be repeated (``list : a b c .`` / ``again :``), the two recall formats
    the mini suite was trained on. The haystack holds plain story sentences.
    ``corpus`` is the suite's CorpusConfig (its words and names); default: the
    built-in default corpus.
    """
    from dataclasses import replace

    from scalelens.models.corpus import CorpusConfig, generate_documents

    cfg = replace(corpus or CorpusConfig(seed=seed), n_docs=300)
    docs = generate_documents(cfg)
    lines = [ln for d in docs for ln in d.splitlines() if ln.strip()]
    special = ("the code of", "what is", "list :", "again :")
    story = [ln for ln in lines if not ln.startswith(special)]
    names = sorted({ln.split()[3] for ln in lines if ln.startswith("the code of")})
    words = sorted({w for ln in story for w in ln.split() if w.isalpha()})
    rng = random.Random(seed + 1)
    needles = []
    for i in range(n_needles):
        if i % 2 == 0:
            name, value = rng.choice(names), str(rng.randint(100, 9999))
            needles.append(Needle(f"the code of {name} is {value} .",
                                  f"what is the code of {name} ?", f"{value} ."))
        else:
            span = " ".join(rng.choice(words) for _ in range(6))
            needles.append(Needle(f"list : {span} .", "again :", f"{span} ."))
    return needles, sorted(set(story), key=story.index)


def split_sentences(text: str) -> list[str]:
    """Split haystack text into sentences (lines, or '. '-separated prose).

    Lines end at LF and CRLF only (:func:`~scalelens.textfiles.text_lines`).
    """
    lines = [ln.strip() for ln in text_lines(text) if ln.strip()]
    if len(lines) > 1:
        return lines
    parts = [p.strip() for p in text.replace("\n", " ").split(". ") if p.strip()]
    return [p if p.endswith(".") else p + "." for p in parts]


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """The largest ``n`` in ``1..limit`` with ``fits(n)``, by bisection; 0 if none.

    ``fits`` should be monotone (a longer prefix or haystack never takes fewer tokens); the
    answer always satisfies ``fits``, even where it is not.
    """
    lo, hi = 0, limit + 1  # fits(lo) taken as true, fits(hi) as false
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def clip_to_tokens(tok: Any, text: str, length: int) -> str:
    """The longest prefix of ``text`` of at most ``length`` tokens, cut between words.

    Cut in the text, not by decoding token ids: a tokenizer with unknown tokens would
    give back ``[UNK]`` for the words it does not know.
    """
    def fits(k: int) -> bool:
        return len(tok(text[:k], add_special_tokens=False)["input_ids"]) <= length

    if fits(len(text)):
        return text
    lo = largest_fitting(fits, len(text) - 1)
    space = max(text.rfind(" ", 0, lo + 1), text.rfind("\n", 0, lo + 1))
    return text[:space].rstrip() if space > 0 and fits(space) else text[:lo]


def _fill(sentences: list[str], tokenizer: Any, budget: int) -> list[tuple[str, int]]:
    """Cycle through sentences until ``budget`` tokens; each with its token count.

    A first sentence longer than ``budget`` on its own is cut to it.
    """
    out: list[tuple[str, int]] = []
    total, i = 0, 0
    while total < budget:
        s = sentences[i % len(sentences)]
        n = len(tokenizer("\n" + s, add_special_tokens=False)["input_ids"])
        if total + n > budget and out:
            break
        if n > budget:  # the line break before it counts too
            s = clip_to_tokens(tokenizer, s, max(1, budget - 1))
            n = len(tokenizer("\n" + s, add_special_tokens=False)["input_ids"])
        out.append((s, n))
        total, i = total + n, i + 1
    return out


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (an instruct / chat model)."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_format(tokenizer: Any, prompt_format: str) -> str:
    """``base`` or ``chat``; ``auto`` is ``chat`` exactly when the tokenizer has a chat template."""
    if prompt_format not in PROMPT_FORMATS:
        raise ScalelensError(
            f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "base"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise ScalelensError("prompt format chat needs a tokenizer with a chat template; use base")
    return prompt_format


@dataclass(frozen=True)
class ChatFrame:
    """The chat template's text around one user message.

    Attributes:
        rendered_prefix: Template text before the message, as rendered.
        prefix: ``rendered_prefix`` without a leading BOS text when the tokenizer
            adds BOS itself (so the prompt holds one BOS, as the template means).
        suffix: Template text after the message, through the generation prompt.
    """

    rendered_prefix: str
    prefix: str
    suffix: str


def render_chat(tokenizer: Any, message: str) -> str:
    """One user message through the chat template, with the generation prompt."""
    from jinja2 import TemplateError

    try:
        out = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                            add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError) as exc:
        raise ScalelensError(f"the tokenizer's chat template failed on a user message ({exc}); "
                             "use prompt format base") from None
    return str(out)


def chat_frame(tokenizer: Any) -> ChatFrame:
    """Split the chat template around a single user message."""
    rendered = render_chat(tokenizer, _SENTINEL)
    if rendered.count(_SENTINEL) != 1:
        raise ScalelensError(
            "the chat template does not render the user message once; use prompt format base")
    prefix, _, suffix = rendered.partition(_SENTINEL)
    return ChatFrame(prefix, _strip_added_bos(tokenizer, prefix), suffix)


def _strip_added_bos(tokenizer: Any, prefix: str) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not prefix.startswith(bos):
        return prefix
    added = list(tokenizer("", add_special_tokens=True)["input_ids"])
    return prefix[len(bos):] if added[:1] == [tokenizer.bos_token_id] else prefix


def build_tests(needles: list[Needle], haystack: list[str], tokenizer: Any,
                context_lengths: list[int], depths: tuple[float, ...] = DEPTHS,
                with_answer: bool = True, prompt_format: str = "auto",
                answer_prefix: str = ANSWER_PREFIX) -> list[HaystackTest]:
    """Build every (needle, context length, depth) test.

    Args:
        needles: The needles.
        haystack: Haystack sentences (cycled to reach each length).
        tokenizer: The model's tokenizer (lengths are counted in its tokens).
        context_lengths: Haystack sizes in tokens.
        depths: Needle depths in [0, 1] (0 = start, 1 = end of the haystack).
        with_answer: Append the answer piece (teacher forcing).
        prompt_format: ``base``, ``chat`` or ``auto`` (:func:`resolve_prompt_format`).
        answer_prefix: Text the assistant's turn starts with (chat format only;
            "" for none).
    """
    if not haystack:
        raise ScalelensError("the haystack has no sentences")
    if any(not 0 <= d <= 1 for d in depths):
        raise ScalelensError(f"depths must lie in [0, 1], got {list(depths)}")
    chat = resolve_prompt_format(tokenizer, prompt_format) == "chat"
    frame = chat_frame(tokenizer) if chat else None
    tests = []
    for length in context_lengths:
        filled = _fill(haystack, tokenizer, length)
        for needle in needles:
            for depth in depths:
                pieces = _content(filled, needle, depth)
                if frame is not None:
                    pieces = _chat_pieces(pieces, frame, tokenizer, answer_prefix)
                if with_answer:
                    pieces.append(("answer", _answer_text(needle, chat, answer_prefix)))
                tests.append(HaystackTest(needle, length, depth, Prompt(tuple(pieces))))
    return tests


def _answer_text(needle: Needle, chat: bool, answer_prefix: str) -> str:
    """The answer piece: after a space, unless it opens the assistant's turn."""
    bare = chat and (not answer_prefix or answer_prefix[-1].isspace())
    return ("" if bare else " ") + needle.answer.strip()


def _chat_pieces(content: list[tuple[str, str]], frame: ChatFrame, tokenizer: Any,
                 answer_prefix: str) -> list[tuple[str, str]]:
    """Wrap the user message's pieces in the template (checked against a full render)."""
    message = "".join(text for _, text in content)
    if render_chat(tokenizer, message) != frame.rendered_prefix + message + frame.suffix:
        raise ScalelensError("the chat template changes the user message's text, so its needle span "
                             "cannot be located; use prompt format base")
    pieces = [(TEMPLATE, frame.prefix)] if frame.prefix else []
    pieces += content
    if frame.suffix:
        pieces.append((TEMPLATE, frame.suffix))
    if answer_prefix:
        pieces.append(("answer_prefix", answer_prefix))
    return pieces


def split_needle(needle: Needle) -> tuple[str, str, str]:
    """``(before, answer, after)``: the needle sentence around its answer.

    The answer is found as whole words where it occurs so (``"7"`` in
    ``"code 17 is 7"`` is the last one), else at its first occurrence.
    """
    answer = needle.answer.strip()
    found = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", needle.needle)
    start = found.start() if found else needle.needle.index(answer)
    return needle.needle[:start], answer, needle.needle[start + len(answer):]


def _content(filled: list[tuple[str, int]], needle: Needle, depth: float) -> list[tuple[str, str]]:
    """Haystack with the needle at ``depth``, then the question (no answer).

    The needle goes at the first sentence boundary at or after ``depth`` x the haystack's
    tokens (the reference NIAH code backs up to the boundary at or before it instead; the
    two differ by at most one sentence, and agree at depths 0 and 1).
    """
    total = sum(n for _, n in filled)
    cut, acc = len(filled), 0
    for i, (_, n) in enumerate(filled):  # first sentence boundary at or after depth * total
        if acc >= depth * total:
            cut = i
            break
        acc += n
    before = "\n".join(s for s, _ in filled[:cut])
    after = "\n".join(s for s, _ in filled[cut:])
    pieces = [("haystack", before)] if before else []
    head, answer, tail = split_needle(needle)
    head = ("\n" if before else "") + head
    if head.strip():
        pieces.append(("needle", head.rstrip()))
    elif head:  # a needle that opens with its answer still starts on its own line
        pieces.append(("needle", head))
    # after a space, as the answer piece: the copied tokens are the produced ones (" 7" is not "7")
    pieces.append(("needle_answer", " " + answer))
    if tail.strip():
        pieces.append(("needle", tail))
    if after:
        pieces.append(("haystack", "\n" + after))
    pieces.append(("question", "\n" + needle.question))
    return pieces


def needle_overhead(needles: list[Needle], tokenizer: Any, prompt_format: str = "auto",
                    answer_prefix: str = ANSWER_PREFIX) -> int:
    """Tokens a test adds to its haystack (largest needle).

    Needle, question and answer; in the chat format also the template's text and
    the answer prefix.
    """
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    extra = 0
    if resolve_prompt_format(tokenizer, prompt_format) == "chat":
        frame = chat_frame(tokenizer)
        extra = count(frame.prefix) + count(frame.suffix) + count(answer_prefix)
    return extra + max(count("\n" + n.needle) + count("\n" + n.question) + count(" " + n.answer) + 4
                       for n in needles)


MIN_DEFAULT_LENGTH = 16
"""The smallest default haystack size (tokens); a shorter context needs explicit sizes."""


def default_context_lengths(max_position: int, reserve: int = 64, n: int = 3) -> list[int]:
    """``n`` haystack sizes evenly spaced up to the model's context minus ``reserve`` tokens.

    Raises:
        ScalelensError: if that leaves less than :data:`MIN_DEFAULT_LENGTH` tokens (the
            measurement names sizes that fit, :mod:`scalelens.measure.haystack_fit`).
    """
    top = max_position - reserve
    if top < MIN_DEFAULT_LENGTH:
        raise ScalelensError(f"the model's context ({max_position}) is too short for the default haystack "
                             "sizes; give smaller ones (context_lengths=, on the command line "
                             "--context-lengths)")
    return sorted({max(MIN_DEFAULT_LENGTH, top * (i + 1) // n) for i in range(n)})
