import json

import numpy as np
import pytest

from scalelens.analyses.retrieval import (
    NeedleTest,
    answer_recall,
    copy_events,
    head_scores,
    retrieval_scores,
    rouge1_recall,
    rouge1_word_recall,
    rouge_words,
)
from scalelens.errors import ScalelensError

L, H = 3, 4
START, END = 10, 16  # needle span: 6 tokens


def _context(seed=0):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(100, 200, size=30)
    ctx[START:END] = [7, 8, 9, 8, 11, 12]  # token 8 appears twice in the needle
    return ctx


def _test(answer, top1, ctx=None, **kw):
    return NeedleTest(top1, _context() if ctx is None else ctx, (START, END), np.array(answer), **kw)


def _copying_top1(answer_len, copies):
    """top1 keys: head (1, 2) copies needle position START+s at step s for s in copies;
    every other head looks at key 0."""
    top1 = np.zeros((L, H, answer_len), dtype=np.int64)
    for s in copies:
        top1[1, 2, s] = START + s
    return top1


def test_perfect_copying_head_scores_one():
    answer = [7, 8, 9, 8, 11, 12]
    t = _test(answer, _copying_top1(6, range(6)))
    scores = head_scores(t)
    assert scores[1, 2] == 1.0
    assert np.count_nonzero(scores) == 1
    assert np.array_equal(head_scores(t, "steps"), scores)


def test_partial_copy_exact_fraction():
    answer = [7, 8, 9, 8, 11, 12]
    t = _test(answer, _copying_top1(6, [0, 3, 5]))
    assert head_scores(t)[1, 2] == pytest.approx(3 / 6)
    events = copy_events(t)
    assert events.shape == (L, H, 6) and events[1, 2].tolist() == [1, 0, 0, 1, 0, 1]


def test_outside_span_or_mismatching_token_scores_zero():
    answer = [7, 8, 9, 8, 11, 12]
    ctx = _context()
    top1 = np.zeros((L, H, 6), dtype=np.int64)
    ctx[3] = 7
    top1[0, 0] = 3  # same token 7 as step 0 but outside the needle
    top1[0, 1] = START + 2  # inside the needle, but holds 9 while answer varies
    top1[0, 3] = END  # one past the needle
    top1[2, 3, :] = -1  # no row at all
    t = _test(answer, top1, ctx)
    scores = head_scores(t)
    assert scores[0, 0] == 0.0 and scores[0, 3] == 0.0 and scores[2, 3] == 0.0
    assert scores[0, 1] == pytest.approx(1 / 6)  # only step 2 (token 9) matches


def test_repeated_copy_counts_once_in_positions_mode_and_per_step_in_steps_mode():
    # The answer repeats the first two needle tokens; the head copies the same
    # positions again. Each step is one event at most.
    answer = [7, 8, 9, 8, 11, 12, 7, 8]
    top1 = _copying_top1(8, range(6))
    top1[1, 2, 6:] = [START, START + 1]
    t = _test(answer, top1, recall=1.0)
    assert head_scores(t)[1, 2] == 1.0
    assert head_scores(t, "steps")[1, 2] == pytest.approx(8 / 6)
    # Token 8 sits twice in the needle: copying it at step 1 from its second
    # position is an event, but that position is already covered by step 3.
    top1[1, 2, 1] = START + 3
    top1[1, 2, 7] = -1
    t2 = _test(answer, top1, recall=1.0)
    assert head_scores(t2)[1, 2] == pytest.approx(5 / 6)
    assert head_scores(t2, "steps")[1, 2] == pytest.approx(7 / 6)


def test_rouge1_recall_clipped():
    assert rouge1_recall([1, 2, 2, 2], [2, 2, 3, 4]) == pytest.approx(2 / 4)
    assert rouge1_recall([], [1]) == 0.0
    assert rouge1_recall(rouge_words("Eat a Sandwich!"), rouge_words("eat a sandwich, sit")) == 0.75
    with pytest.raises(ScalelensError):
        rouge1_recall([1], [])


def test_gate_excludes_failing_tests_and_averages_the_rest():
    good = _test([7, 8, 9, 8, 11, 12], _copying_top1(6, range(6)))
    half = _test([7, 8, 9, 8, 5, 5], _copying_top1(6, range(4)))  # recall 4/6 > 0.5
    # Recall 3/6 = 0.5 is not > 0.5: excluded even though the head copies.
    bad = _test([7, 8, 9, 5, 5, 5], _copying_top1(6, range(3)))
    forced = _test([7, 8, 9, 5, 5, 5], _copying_top1(6, range(3)), recall=0.9)
    res = retrieval_scores([good, half, bad])
    assert (res.n_tests, res.n_tests_passed) == (3, 2)
    assert res.scores[1, 2] == pytest.approx((1 + 4 / 6) / 2)
    assert res.retrieval_heads == [[1, 2]]
    assert res.fraction == pytest.approx(1 / (L * H))
    assert res.fraction_zero == pytest.approx(1 - 1 / (L * H))
    res2 = retrieval_scores([good, half, bad, forced])
    assert res2.n_tests_passed == 3
    assert res2.scores[1, 2] == pytest.approx((1 + 4 / 6 + 3 / 6) / 3)
    json.dumps(res.to_dict(), allow_nan=False)


def test_threshold_ordering_and_top_heads():
    answer = [7, 8, 9, 8, 11, 12]
    top1 = np.zeros((L, H, 6), dtype=np.int64)
    top1[2, 0, :] = np.arange(START, END)  # score 1
    top1[0, 3, :3] = np.arange(START, START + 3)  # score 0.5
    top1[1, 1, 0] = START  # score 1/6 > 0.1
    res = retrieval_scores([_test(answer, top1)], threshold=0.1)
    assert res.retrieval_heads == [[2, 0], [0, 3], [1, 1]]
    assert res.top_heads(2) == [(2, 0), (0, 3)]
    assert retrieval_scores([_test(answer, top1)], threshold=0.2).retrieval_heads == [[2, 0], [0, 3]]


def test_no_test_passes_gives_nan_scores_and_a_note():
    res = retrieval_scores([_test([1, 2, 3], np.zeros((L, H, 3), dtype=int))])
    assert res.n_tests_passed == 0 and np.isnan(res.scores).all()
    assert res.retrieval_heads == [] and "gate" in res.note
    d = res.to_dict()
    assert d["fraction"] is None and d["scores"][0][0] is None
    json.dumps(d, allow_nan=False)


def test_padding_answer_tokens_ignored():
    answer = [7, 8, 9, 8, 11, 12, -1, -1]
    top1 = _copying_top1(8, range(6))
    top1[1, 2, 6:] = -1
    t = _test(answer, top1)
    assert t.gate_recall() == 1.0
    assert head_scores(t)[1, 2] == 1.0


def test_bad_inputs():
    with pytest.raises(ScalelensError):
        _test([1, 2], np.zeros((L, H, 3), dtype=int))
    with pytest.raises(ScalelensError):
        NeedleTest(np.zeros((L, H, 1), dtype=int), _context(), (5, 40), np.array([1]))
    with pytest.raises(ScalelensError):
        retrieval_scores([])
    a = _test([7], np.zeros((L, H, 1), dtype=int))
    b = _test([7], np.zeros((L, H + 1, 1), dtype=int))
    with pytest.raises(ScalelensError):
        retrieval_scores([a, b])
    with pytest.raises(ScalelensError):
        head_scores(a, "tokens")  # type: ignore[arg-type]


def test_word_level_rouge_stems_like_the_reference():
    assert rouge1_word_recall("run", "running") == 1.0
    assert rouge1_word_recall("They eat sandwiches.", "eat a sandwich") == pytest.approx(2 / 3)
    assert rouge1_word_recall("", "eat") == 0.0
    with pytest.raises(ScalelensError):
        rouge1_word_recall("x", "?!")


def test_gate_takes_word_recall_where_token_ids_disagree():
    # The answer's ids share nothing with the needle's, but its words do after stemming.
    top1 = _copying_top1(2, [])
    words = _test([150, 151], top1, answer_text="run shoe", needle_text="running shoes")
    ids_only = _test([150, 151], top1)
    assert words.recall_unit == "words" and words.gate_recall() == 1.0
    assert ids_only.recall_unit == "token_ids" and ids_only.gate_recall() == 0.0
    assert answer_recall([150, 151], [7, 8], "run shoe", "running shoes") == 1.0
    res = retrieval_scores([words])
    assert (res.n_tests_passed, res.recall_unit) == (1, "words")
    res = retrieval_scores([ids_only])
    assert (res.n_tests_passed, res.recall_unit) == (0, "token_ids")
    assert retrieval_scores([words, ids_only]).recall_unit == "token_ids,words"
    assert retrieval_scores([_test([7], top1[:, :, :1], recall=0.9)]).recall_unit == "given"


def test_needle_text_without_latin_words_falls_back_to_token_ids():
    t = _test([7, 8, 9, 8, 11, 12], _copying_top1(6, []), answer_text="東京", needle_text="東京")
    assert t.recall_unit == "token_ids" and t.gate_recall() == 1.0


def test_top1_inside_the_needle_on_a_different_token_is_no_copy():
    # Each step attends a needle position (inside the span) that holds another token than
    # the one produced: steps 0-4 look one position ahead (8, 9, 8, 11, 12 against the
    # produced 7, 8, 9, 8, 11), step 5 one behind (11 against 12). The score is 0.
    answer = [7, 8, 9, 8, 11, 12]
    top1 = np.zeros((L, H, 6), dtype=np.int64)
    top1[1, 2] = [START + 1, START + 2, START + 3, START + 4, START + 5, START + 4]
    t = _test(answer, top1)
    assert not copy_events(t).any()
    assert head_scores(t)[1, 2] == 0.0 and head_scores(t, "steps")[1, 2] == 0.0


def test_a_score_equal_to_the_threshold_is_not_a_retrieval_head():
    # Head (0, 3) copies 3 of 6 needle tokens: score exactly 0.5. The rule is score > threshold.
    answer = [7, 8, 9, 8, 11, 12]
    top1 = np.zeros((L, H, 6), dtype=np.int64)
    top1[2, 0, :] = np.arange(START, END)  # score 1
    top1[0, 3, :3] = np.arange(START, START + 3)  # score 0.5
    res = retrieval_scores([_test(answer, top1)], threshold=0.5)
    assert res.scores[0, 3] == 0.5
    assert res.retrieval_heads == [[2, 0]]
    assert res.fraction == pytest.approx(1 / (L * H))


def test_fraction_zero_counts_only_heads_that_never_copied():
    # Head (1, 1) copies one token in one of two passing tests: mean score 1/12, below the
    # 0.1 bar yet not zero, so it is neither a retrieval head nor a zero-score head.
    answer = [7, 8, 9, 8, 11, 12]
    copying = np.zeros((L, H, 6), dtype=np.int64)
    copying[1, 1, 0] = START
    res = retrieval_scores([_test(answer, copying), _test(answer, np.zeros_like(copying))])
    assert res.scores[1, 1] == pytest.approx(1 / 12)
    assert res.retrieval_heads == [] and res.fraction == 0.0
    assert res.fraction_zero == pytest.approx(1 - 1 / (L * H))


def test_token_id_zero_is_a_real_answer_token_for_the_gate():
    # Id 0 is a real vocabulary entry (Pythia's <|endoftext|>, GPT-2's "!"); only negative ids pad.
    assert answer_recall([0, 5, -1], [0, 5]) == 1.0
    assert answer_recall([5, -1], [0, 5]) == 0.5


def test_retrieval_scores_pass_the_counting_mode_on():
    # The answer repeats the first two needle tokens and the head copies them again:
    # 6 distinct positions (score 1) but 8 copy events (8 / 6 when counting steps).
    answer = [7, 8, 9, 8, 11, 12, 7, 8]
    top1 = _copying_top1(8, range(6))
    top1[1, 2, 6:] = [START, START + 1]
    t = _test(answer, top1, recall=1.0)
    assert retrieval_scores([t]).scores[1, 2] == 1.0
    res = retrieval_scores([t], counting="steps")
    assert res.scores[1, 2] == pytest.approx(8 / 6) and res.counting == "steps"


def test_a_needle_of_digits_is_gated_on_words():
    # rouge_score keeps [a-z0-9]: a number is a word, so "1987" is gated on words, not ids.
    assert rouge_words("Room 42, floor 7b") == ["room", "42", "floor", "7b"]
    t = _test([150, 151], _copying_top1(2, []), answer_text="In 1987.", needle_text="1987")
    assert t.recall_unit == "words" and t.gate_recall() == 1.0
