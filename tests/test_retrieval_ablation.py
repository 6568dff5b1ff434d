"""Retrieval-head detection and the masking ablation on a model with one known retrieval head.

``tests/copy_model.py`` hand-sets a tiny GPT-2 whose greedy answer copies the needle's answer
word through head ``COPY_HEAD`` alone: recall is 1 with it, 0 with it masked, and masking any
other head changes nothing. The micro-suite models never retrieve a needle (recall 0 in every
arm), so these numbers are what tell the ablation's arms and ``masked_heads``' indexing apart.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from copy_model import COPY_HEAD, FILLER, N_HEADS, N_LAYERS, NEEDLES, save_copy_model

from scalelens.measure import retrieval as r
from scalelens.models.load import load_model
from scalelens.probes.prompts import tokenize

DEPTHS = (0.0, 0.5, 1.0)
LENGTHS = (12, 48)
N_TESTS = len(NEEDLES) * len(DEPTHS) * len(LENGTHS)
ALL_HEADS = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]


@pytest.fixture(scope="module")
def copy_lm(tmp_path_factory):
    """The copy model loaded from disk, its needle tests and settings."""
    tmp = tmp_path_factory.mktemp("copy_model")
    lm = load_model(save_copy_model(tmp))
    s = r.RetrievalSettings(needles=str(tmp / "needles.jsonl"), haystack=str(tmp / "haystack.txt"),
                            context_lengths=LENGTHS, depths=DEPTHS, ablation_k=1)
    tests = r.haystack_tests(lm, s, with_answer=True)
    assert len(tests) == N_TESTS
    return lm, s, tests, tmp


@pytest.fixture(scope="module")
def fast(copy_lm):
    lm, s, _, tmp = copy_lm
    return r.fast_scores(lm, s, tmp / "fast.h5", progress=False)[0]


def _expected_scores() -> np.ndarray:
    """Score 1 for the copy head (it copies the whole one-word needle in every test), 0 elsewhere."""
    scores = np.zeros((N_LAYERS, N_HEADS))
    scores[COPY_HEAD] = 1.0
    return scores


def test_fast_scoring_finds_the_copy_head_and_only_it(copy_lm, fast):
    assert fast.n_tests == fast.n_tests_passed == N_TESTS  # every greedy answer is the needle
    assert fast.recall_unit == "words"
    np.testing.assert_array_equal(fast.scores, _expected_scores())
    assert fast.retrieval_heads == [list(COPY_HEAD)]
    assert fast.top_heads(1) == [COPY_HEAD]
    assert fast.fraction == 1 / (N_LAYERS * N_HEADS)


def test_reference_scoring_finds_the_copy_head_and_only_it(copy_lm):
    lm, s, _, _ = copy_lm
    ref = r.reference_scores(lm, dataclasses.replace(s, mode="reference"), progress=False)
    assert ref.n_tests_passed == N_TESTS
    np.testing.assert_array_equal(ref.scores, _expected_scores())
    assert ref.retrieval_heads == [list(COPY_HEAD)]


@pytest.mark.parametrize(("heads", "recall"), [
    ([], 1.0),
    ([COPY_HEAD], 0.0),
    ([(1, 1)], 1.0),  # same layer, the head index equal to the layer index
    ([(0, 2)], 1.0),  # same head index, the other layer
    ([h for h in ALL_HEADS if h != COPY_HEAD], 1.0),
    ([(0, 1), (1, 0), COPY_HEAD], 0.0),  # the copy head last, after heads of both layers
], ids=["none", "copy", "same-layer", "same-index", "all-others", "others-then-copy"])
def test_needle_recall_falls_to_zero_only_with_the_copy_head_masked(copy_lm, heads, recall):
    lm, _, tests, _ = copy_lm
    assert r.needle_recall(lm, [t.prompt for t in tests], heads) == recall


def test_masked_copy_head_answers_the_filler_word(copy_lm):
    """Masked, the head attends uniformly: the answer word's logit falls under the filler's."""
    lm, _, tests, _ = copy_lm
    tok = tokenize([tests[0].prompt], lm.tokenizer)
    end = int(np.flatnonzero(tok.segments[0] == tok.labels.index("answer"))[0])
    ids = torch.tensor(tok.ids[:, :end], dtype=torch.long)
    answer = int(tok.ids[0, end])
    with torch.no_grad():
        plain = lm.model(ids).logits[0, -1]
        with r.masked_heads(lm, [COPY_HEAD]):
            masked = lm.model(ids).logits[0, -1]
    assert int(plain.argmax()) == answer and int(masked.argmax()) == FILLER
    assert plain[answer] > plain[FILLER] + 4 and masked[answer] < masked[FILLER] - 2


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_ablation_masks_the_top_head_in_the_top_arm_only(copy_lm, fast, seed):
    """Top-1 is the copy head: masked, recall 0; a random other head masked, recall stays 1."""
    lm, _, tests, _ = copy_lm
    out = r.ablation(lm, fast, tests, k=1, seed=seed, n_tests=8)
    assert out["top_heads"] == [list(COPY_HEAD)] and list(COPY_HEAD) not in out["random_heads"]
    assert out["n_tests"] == 8
    assert out["recall_unmasked"] == 1.0
    assert out["recall_top_masked"] == 0.0
    assert out["recall_random_masked"] == 1.0


def test_ablation_masks_the_random_heads_in_the_random_arm(copy_lm, fast):
    """A result naming the four layer-0 heads as its top 4: the random arm draws 4 of the 4 other
    heads, the copy head among them, so it is the random arm whose recall falls to 0."""
    lm, _, tests, _ = copy_lm
    scores = np.zeros((N_LAYERS, N_HEADS))
    scores[0] = 1.0
    wrong = dataclasses.replace(fast, scores=scores)
    k = N_LAYERS * N_HEADS // 2
    out = r.ablation(lm, wrong, tests, k=k, seed=3, n_tests=8)
    assert sorted(map(tuple, out["top_heads"])) == [(0, h) for h in range(N_HEADS)]
    assert sorted(map(tuple, out["random_heads"])) == [(1, h) for h in range(N_HEADS)]
    assert out["recall_unmasked"] == 1.0
    assert out["recall_top_masked"] == 1.0
    assert out["recall_random_masked"] == 0.0
