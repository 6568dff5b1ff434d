"""Fast (teacher-forced) and reference (greedy) retrieval scores are identical where the
greedy answer equals the needle answer.

A random model never reproduces a given needle, so the needle is made to fit the
model: a fixed-point iteration puts a candidate answer into the needle, decodes
greedily, makes what was produced the new answer, and repeats until the model's
greedy answer is the needle answer in every test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_model, word_tokenizer

from scalelens.analyses.from_capture import needle_tests
from scalelens.cache.reader import CaptureFile
from scalelens.measure import retrieval as r
from scalelens.models.load import load_model

HAYSTACK = [f"w{30 + i % 9} w{31 + i % 7} w{12 + i} w{45 + i % 5}" for i in range(8)]
DEPTHS = (0.0, 0.3, 0.5, 0.8, 1.0)
N_WORDS = 60  # w0..w59; ids 60.. are [UNK], [PAD], [BOS], [EOS]
CANDIDATES = [(arch, seed) for seed in range(8) for arch in ("gpt_neox", "llama")]


def _write_needle(path: Path, answer: list[int]) -> None:
    words = " ".join(f"w{t}" for t in answer)
    path.write_text(json.dumps({"needle": f"w40 w41 {words}", "question": "w20 w21", "answer": words}))


def _settings(tmp: Path, mode: str = "fast") -> r.RetrievalSettings:
    return r.RetrievalSettings(mode=mode, needles=str(tmp / "needles.jsonl"),
                               haystack=str(tmp / "haystack.txt"), context_lengths=(24,),
                               depths=DEPTHS, ablation_k=0, batch_size=8)


def _fixed_point(loaded, tmp: Path, answer: list[int], rounds: int = 6) -> bool:
    """Iterate needle answer := greedy answer; True when every test reproduces its needle."""
    for _ in range(rounds):
        _write_needle(tmp / "needles.jsonl", answer)
        tests = r.reference_needle_tests(loaded, _settings(tmp))
        produced = {tuple(np.asarray(t.answer).tolist()) for t in tests}
        if produced == {tuple(answer)}:
            return True
        if len(produced) != 1 or max(max(p) for p in produced) >= N_WORDS:
            return False  # depths disagree, or a special token: no needle holds it
        answer = list(produced.pop())
    return False


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    """A tiny model and a needle its greedy answer reproduces, with some head copying from it."""
    tmp = tmp_path_factory.mktemp("fixed_point")
    (tmp / "haystack.txt").write_text("\n".join(HAYSTACK) + "\n")
    for arch, seed in CANDIDATES:
        loaded = load_model(tiny_model(arch, seed=seed), tokenizer=word_tokenizer())
        if not _fixed_point(loaded, tmp, [7, 8]):
            continue
        ref = r.reference_scores(loaded, _settings(tmp, "reference"), progress=False)
        if np.nanmax(ref.scores) > 0:  # a head copied: the comparison is not all zeros
            return loaded, tmp, ref, (arch, seed)
    pytest.fail(f"no candidate model in {CANDIDATES} reached a needle fixed point with a copying head")


def test_fast_and_reference_scores_are_identical_on_full_matches(matched):
    loaded, tmp, ref, _ = matched
    ref_tests = r.reference_needle_tests(loaded, _settings(tmp, "reference"))
    full = [t for t in ref_tests
            if np.array_equal(np.asarray(t.answer), t.needle_tokens())]
    assert len(full) == len(ref_tests) == len(DEPTHS) >= 1  # every test is a full match
    fast, _ = r.fast_scores(loaded, _settings(tmp), tmp / "fast.h5", overwrite=True, progress=False)
    assert fast.n_tests_passed == ref.n_tests_passed == len(full)
    assert np.array_equal(fast.scores, ref.scores)
    assert fast.retrieval_heads == ref.retrieval_heads
    assert fast.fraction == ref.fraction and fast.fraction_zero == ref.fraction_zero
    assert fast.recall_unit == ref.recall_unit == "words"
    assert np.nanmax(fast.scores) > 0


def test_teacher_forced_rows_equal_greedy_rows_at_every_step(matched):
    loaded, tmp, _, _ = matched
    r.fast_scores(loaded, _settings(tmp), tmp / "rows.h5", overwrite=True, progress=False)
    with CaptureFile(tmp / "rows.h5") as f:
        fast = needle_tests(f, loaded.tokenizer)
    ref = r.reference_needle_tests(loaded, _settings(tmp, "reference"))
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a.top1_key), np.asarray(b.top1_key))
        np.testing.assert_array_equal(np.asarray(a.answer), np.asarray(b.answer))
        assert a.needle_span == b.needle_span and a.gate_recall() == b.gate_recall() == 1.0
        assert a.answer_text == b.answer_text == b.needle_text
