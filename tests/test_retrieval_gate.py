"""The ROUGE-1 gate on decoded words (rouge_score, stemmed) through capture files and the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import tiny_model, word_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from scalelens.analyses.from_capture import (
    decode_ids,
    recorded_tokenizer,
    retrieval_from_capture,
    with_texts,
)
from scalelens.analyses.retrieval import NeedleTest
from scalelens.cache.reader import CaptureFile
from scalelens.errors import ScalelensWarning
from scalelens.measure import retrieval as r
from scalelens.models.load import load_model
from scalelens.models.testing import save_tiny_model

HAYSTACK = [f"w{30 + i % 9} w{31 + i % 7} w{12 + i} w{45 + i % 5}" for i in range(8)]


def english_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer where 'running' and 'run' are different tokens."""
    words = ["[UNK]", "[EOS]", "the", "dog", "is", "running", "run", "shoes", "shoe", "fast"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def test_decoded_gate_differs_from_token_ids():
    tok = english_tokenizer()
    context = np.array(tok("the dog is running shoes fast")["input_ids"])
    answer = np.array(tok("run shoe")["input_ids"] + [1, -1])  # EOS and padding are dropped
    test = NeedleTest(np.zeros((1, 2, 4), dtype=int), context, (3, 5), answer)
    assert test.recall_unit == "token_ids" and test.gate_recall() == 0.0
    decoded = with_texts(test, tok)
    assert (decoded.answer_text, decoded.needle_text) == ("run shoe", "running shoes")
    assert decoded.recall_unit == "words" and decoded.gate_recall() == 1.0
    assert decode_ids(tok, [5, 1, -1]) == "running"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved as an HF directory with its tokenizer, and a needle/haystack setup."""
    tmp = tmp_path_factory.mktemp("gate")
    path = save_tiny_model("gpt_neox", tmp / "model", tokenizer=word_tokenizer())
    (tmp / "needles.jsonl").write_text(
        json.dumps({"needle": "w40 w41 w7 w8", "question": "w20 w21", "answer": "w7 w8"}))
    (tmp / "haystack.txt").write_text("\n".join(HAYSTACK))
    s = r.RetrievalSettings(needles=str(tmp / "needles.jsonl"), haystack=str(tmp / "haystack.txt"),
                            context_lengths=(24,), depths=(0.2, 0.7), gate=-1.0, ablation_k=0)
    return tmp, path, s


def test_recorded_tokenizer_found_for_a_directory_not_in_memory(saved):
    _, path, _ = saved
    tok = recorded_tokenizer({"source": str(path), "revision": None, "vocab_size": 64})
    assert tok is not None and len(tok) == 64 and tok.decode([7, 8]) == "w7 w8"
    assert recorded_tokenizer({"source": "<in-memory>", "vocab_size": 64}) is None
    assert recorded_tokenizer({"source": str(path / "missing"), "vocab_size": 64}) is None


def test_analyze_without_the_model_gates_as_measure_does(saved):
    tmp, path, s = saved
    loaded = load_model(path)
    measured, _ = r.fast_scores(loaded, s, tmp / "dir.h5", progress=False)
    with CaptureFile(tmp / "dir.h5") as f:
        again = retrieval_from_capture(f, gate=s.gate)  # the tokenizer comes from the recorded source
    assert measured.recall_unit == again.recall_unit == "words"
    assert np.array_equal(measured.scores, again.scores)
    assert measured.n_tests_passed == again.n_tests_passed == 2


def test_in_memory_capture_without_tokenizer_warns_and_uses_token_ids(saved, tmp_path):
    _, _, s = saved
    loaded = load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer())
    r.fast_scores(loaded, s, tmp_path / "mem.h5", progress=False)
    with CaptureFile(tmp_path / "mem.h5") as f:
        with pytest.warns(ScalelensWarning, match="token ids"):
            ids = retrieval_from_capture(f)
        words = retrieval_from_capture(f, tokenizer=loaded.tokenizer)
    assert (ids.recall_unit, words.recall_unit) == ("token_ids", "words")


def test_reference_and_ablation_recall_use_words(saved):
    _, path, s = saved
    loaded = load_model(path)
    tests = r.reference_needle_tests(loaded, s)
    assert all(t.recall_unit == "words" and t.answer_text is not None for t in tests)
    prompts = [t.prompt for t in r.haystack_tests(loaded, s, with_answer=True)]
    expected = np.mean([t.gate_recall() for t in tests])
    assert r.needle_recall(loaded, prompts, []) == pytest.approx(expected)


def test_analyze_finds_the_tokenizer_a_model_without_one_was_captured_with(saved, tmp_path):
    """A model directory without tokenizer files, captured with tokenizer=DIR (--tokenizer): the
    capture records DIR, so analyze gates on words as measure did (it fell back to token ids);
    `scalelens analyze --tokenizer` gives one explicitly."""
    import subprocess
    import sys

    _, _, s = saved
    word_dir = tmp_path / "tok"
    word_tokenizer().save_pretrained(word_dir)
    bare = save_tiny_model("gpt_neox", tmp_path / "bare", vocab_size=64)
    loaded = load_model(bare, tokenizer=word_dir)
    (tmp_path / "m").mkdir()
    measured, _ = r.fast_scores(loaded, s, tmp_path / "m" / "retrieval.h5", progress=False)
    with CaptureFile(tmp_path / "m" / "retrieval.h5") as f:
        assert f.capture["tokenizer"] == str(word_dir.resolve())
        again = retrieval_from_capture(f, gate=s.gate)
    assert measured.recall_unit == again.recall_unit == "words"
    assert np.array_equal(measured.scores, again.scores)
    elsewhere = tmp_path / "moved"
    word_dir.rename(elsewhere)  # the recorded tokenizer is gone: --tokenizer names it
    cmd = [sys.executable, "-m", "scalelens.cli", "analyze", str(tmp_path / "m"), "--gate", str(s.gate)]
    runs = [subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
            for extra in ([], ["--tokenizer", str(elsewhere)])]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    units = [json.loads(run.stdout)["retrieval.h5"]["retrieval_heads"]["recall_unit"] for run in runs]
    assert units == ["token_ids", "words"]
    assert "ROUGE-1 gate uses token ids" in runs[0].stderr and "--tokenizer" in runs[0].stderr


def _shifted_word_tokenizer() -> PreTrainedTokenizerFast:
    """The word tokenizer's words under other ids (w0 is id 1, ..., w59 id 0): another model's."""
    vocab = {f"w{i}": (i + 1) % 60 for i in range(60)}
    vocab.update({"[UNK]": 60, "[PAD]": 61, "[BOS]": 62, "[EOS]": 63})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def test_analyze_after_the_model_moved_uses_its_new_path_and_never_another_models_tokenizer(
        saved, tmp_path):
    """analyze looked for the tokenizer at the model path the capture recorded. With the model
    moved and measured again there (the capture reused, results.json rewritten with the new path)
    it fell back to token ids; it now reads the path from that results.json (same weights). And
    with another model at the recorded path, that model's tokenizer decoded the answers without a
    word; a tokenizer whose vocabulary is not the captured one is now passed over, with a warning."""
    import shutil

    from scalelens.measure.run import MeasureSettings, measure

    _, path, s = saved
    first, moved, out = tmp_path / "scratch" / "model", tmp_path / "home" / "model", tmp_path / "m"
    shutil.copytree(path, first)
    settings = MeasureSettings(retrieval=s)
    measured = measure(load_model(first), "retrieval_heads", out, settings, progress=False)
    shutil.move(first, moved)
    measure(load_model(moved), "retrieval_heads", out, settings, progress=False)  # reuses the capture
    with CaptureFile(out / "retrieval.h5") as f:
        assert f.model["source"] == str(first)
        again = retrieval_from_capture(f, gate=s.gate)
        assert again.recall_unit == measured["analyses"]["retrieval_heads"]["recall_unit"] == "words"
        from scalelens.analyses.from_capture import capture_tokenizer

        tok, why = capture_tokenizer(f)
        assert (tok.name_or_path, why) == (str(moved), "")

    save_tiny_model("gpt_neox", first, tokenizer=_shifted_word_tokenizer(), seed=3)
    (out / "results.json").unlink()
    with CaptureFile(out / "retrieval.h5") as f:
        with pytest.warns(ScalelensWarning, match="not the one it was captured with.*token ids"):
            assert retrieval_from_capture(f, gate=s.gate).recall_unit == "token_ids"
        tok, why = capture_tokenizer(f)
        assert tok is None and why == (f"the tokenizer at {first} is not the one it was captured with "
                                       "(another model there now?)")
