"""Needle prompts from users' needles and haystacks, on the micro suite's BPE tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from scalelens.analyses.retrieval import NeedleTest, head_scores
from scalelens.probes.haystack import Needle, build_tests, split_sentences
from scalelens.probes.prompts import tokenize

HAYSTACK = ["the dog runs home .", "a cat sits on the mat .", "the sun is warm today ."]


@pytest.fixture(scope="module")
def bpe(micro_suite):
    return AutoTokenizer.from_pretrained(micro_suite / "tokenizer")


def _span(tp, label: str) -> np.ndarray:
    n = int(tp.lengths[0])
    return np.flatnonzero(tp.segments[0, :n] == tp.labels.index(label))


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_a_needle_opening_with_its_answer_is_copied_token_for_token(bpe, depth):
    """A needle whose answer starts the sentence: its answer was tokenized without the space the
    answer piece has ("seven" vs " seven" are other BPE tokens), so no head could copy the first
    answer token (a perfect copier scored 0.9), and the needle was glued to the sentence before."""
    needle = Needle("seven two one is the code .", "what is the code ?", "seven two one")
    alone, spaced = (bpe(t, add_special_tokens=False)["input_ids"] for t in ("seven", " seven"))
    assert alone[0] != spaced[0]  # the tokenizer tells the two apart
    test = build_tests([needle], HAYSTACK, bpe, [30], (depth,))[0]
    assert ("\n" + needle.needle if depth > 0 else needle.needle) in test.prompt.text.replace("\n ", "\n")
    tp = tokenize([test.prompt], bpe)
    ids = tp.ids[0, : int(tp.lengths[0])]
    need, ans = _span(tp, "needle_answer"), _span(tp, "answer")
    assert ids[need].tolist() == ids[ans].tolist()
    # A head whose top-1 key is needle token s at answer step s copies every token.
    top1 = (need[0] + np.arange(len(ans)))[None, None, :]
    copier = NeedleTest(top1, ids, (int(need[0]), int(need[-1]) + 1), ids[ans])
    assert head_scores(copier)[0, 0] == 1.0


def test_a_haystack_sentence_longer_than_the_context_length_is_cut_to_it(bpe, tmp_path):
    """A haystack of long lines (a paragraph per line, or prose without '. '): the first line
    was taken whole whatever --context-lengths said, so lengths 40, 80 and 200 were all the same
    232-token haystack, and a 300-word line was refused as 'haystacks of [50] tokens'."""
    needle = Needle("the code is 4821 .", "what is the code ?", "4821 .")
    paragraph = " ".join(["the dog runs home and a cat sits on the mat ."] * 8)
    assert len(bpe(paragraph)["input_ids"]) > 200
    for lines in ([paragraph, paragraph], ["word " * 300]):
        for length in (40, 80, 200):
            tp = tokenize([build_tests([needle], lines, bpe, [length], (0.5,))[0].prompt], bpe)
            assert length - 8 <= len(_span(tp, "haystack")) <= length


def test_haystack_lines_end_at_lf_and_crlf_only():
    """U+2028, form feed and NEL inside a haystack line stay in its sentence, as in prompt files."""
    text = "a b\u2028c .\r\nd\x0ce .\n\ne\x85f .\n"
    assert split_sentences(text) == ["a b\u2028c .", "d\x0ce .", "e\x85f ."]
    assert split_sentences("one fact. two facts. three") == ["one fact.", "two facts.", "three."]
