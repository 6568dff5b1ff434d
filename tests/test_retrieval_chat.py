"""Needle prompts for chat/instruct models: the tokenizer's chat template, segment labels, modes."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from tiny_models import tiny_model, word_tokenizer
from tokenizers import processors

from scalelens.analyses.from_capture import needle_tests
from scalelens.cache.reader import CaptureFile
from scalelens.commands.measure import add_analysis_args, settings_from_args
from scalelens.errors import ScalelensError
from scalelens.measure import retrieval as r
from scalelens.models.load import load_model
from scalelens.probes.haystack import (
    TEMPLATE,
    Needle,
    build_tests,
    chat_frame,
    needle_overhead,
    resolve_prompt_format,
)
from scalelens.probes.prompts import tokenize

# [BOS] w58 <message> w59 w57: w58/w59 open and close the user turn, w57 is the generation prompt.
CHAT = ("{{ bos_token }}{% for m in messages %}w58 {{ m['content'] }} w59{% endfor %}"
        "{% if add_generation_prompt %} w57{% endif %}")
NEEDLE = Needle("w40 w41 w7 w8", "w20 w21 w22", "w7 w8")
HAYSTACK = [f"w{30 + i % 9} w{31 + i % 7} w{12 + i} w{45 + i % 5}" for i in range(8)]
BOS = 62


def chat_tokenizer(adds_bos: bool, template: str = CHAT):
    """The word-level test tokenizer with a chat template; optionally it adds [BOS] itself."""
    tok = word_tokenizer()
    if adds_bos:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="[BOS] $A", special_tokens=[("[BOS]", BOS)])
    tok.chat_template = template
    return tok


def _labels_of(tok_prompts, i: int) -> list[str]:
    n = int(tok_prompts.lengths[i])
    return [tok_prompts.labels[c] for c in tok_prompts.segments[i, :n]]


def _message(prompt) -> str:
    return "".join(t for lab, t in prompt.pieces if lab not in (TEMPLATE, "answer_prefix", "answer"))


def test_auto_picks_chat_only_when_a_template_exists():
    plain, chat = word_tokenizer(), chat_tokenizer(adds_bos=False)
    assert resolve_prompt_format(plain, "auto") == "base"
    assert resolve_prompt_format(chat, "auto") == "chat"
    assert resolve_prompt_format(chat, "base") == "base"
    with pytest.raises(ScalelensError, match="chat template"):
        resolve_prompt_format(plain, "chat")
    with pytest.raises(ScalelensError, match="prompt format"):
        resolve_prompt_format(chat, "instruct")
    base_labels = {lab for lab, _ in build_tests([NEEDLE], HAYSTACK, plain, [20], (0.5,))[0].prompt.pieces}
    chat_labels = {lab for lab, _ in build_tests([NEEDLE], HAYSTACK, chat, [20], (0.5,))[0].prompt.pieces}
    assert TEMPLATE not in base_labels and "answer_prefix" not in base_labels
    assert {TEMPLATE, "answer_prefix"} <= chat_labels
    assert chat_labels - {TEMPLATE, "answer_prefix"} == base_labels


@pytest.mark.parametrize("adds_bos", [False, True])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_chat_prompt_labels_the_needle_and_answer(adds_bos, depth):
    tok = chat_tokenizer(adds_bos)
    test = build_tests([NEEDLE], HAYSTACK, tok, [20], (depth,), answer_prefix="w56")[0]
    tp = tokenize([test.prompt], tok)
    n = int(tp.lengths[0])
    ids, labels = tp.ids[0, :n], np.array(_labels_of(tp, 0))
    # The needle answer span decodes to the answer, the needle pieces to the needle sentence.
    assert tok.decode(ids[labels == "needle_answer"]) == "w7 w8"
    assert tok.decode(ids[np.isin(labels, ["needle", "needle_answer"])]) == NEEDLE.needle
    # Piece-wise tokenisation equals the template's own tokenisation: one BOS, nothing lost.
    chat_ids = tok.apply_chat_template([{"role": "user", "content": _message(test.prompt)}],
                                       add_generation_prompt=True)["input_ids"]
    start = int(np.flatnonzero(labels == "answer")[0])
    assert ids[:start].tolist() == chat_ids + [56]
    assert ids.tolist().count(BOS) == 1 and ids[0] == BOS
    assert labels[: len(chat_ids)].tolist()[-2:] == [TEMPLATE, TEMPLATE]  # " w59 w57"
    assert labels[start - 1] == "answer_prefix"
    assert ids[start:].tolist() == [7, 8] and (labels[start:] == "answer").all()


def test_without_answer_prefix_the_answer_follows_the_generation_prompt():
    tok = chat_tokenizer(adds_bos=True)
    test = build_tests([NEEDLE], HAYSTACK, tok, [20], (0.3,), answer_prefix="")[0]
    assert test.prompt.pieces[-1] == ("answer", "w7 w8")  # no leading space after the turn opens
    tp = tokenize([test.prompt], tok)
    labels = _labels_of(tp, 0)
    start = labels.index("answer")
    assert "answer_prefix" not in labels
    assert labels[start - 1] == TEMPLATE and tp.ids[0, start - 1] == 57  # the generation prompt
    assert tp.ids[0, start: tp.lengths[0]].tolist() == [7, 8]


def test_needle_answer_found_as_whole_words():
    tok = word_tokenizer()
    needle = Needle("w17 w1 w11 w1", "w20", "w1")  # "w1" occurs inside "w17" and "w11" first
    tp = tokenize([build_tests([needle], HAYSTACK, tok, [12], (0.5,))[0].prompt], tok)
    labels = np.array(_labels_of(tp, 0))
    span = np.flatnonzero(labels == "needle_answer")
    assert tok.decode(tp.ids[0, span]) == "w1"
    assert tp.ids[0, span[0] - 1] == 17  # the first whole-word "w1", after "w17"


def test_chat_overhead_counts_the_template():
    chat, plain = chat_tokenizer(adds_bos=False), word_tokenizer()
    base = needle_overhead([NEEDLE], plain)
    assert needle_overhead([NEEDLE], chat, "base") == base
    # "[BOS] w58" before, "w59 w57" after, "w56" answer prefix.
    assert needle_overhead([NEEDLE], chat, "chat", answer_prefix="w56") == base + 5
    assert chat_frame(chat_tokenizer(adds_bos=True)).prefix == "w58 "
    assert chat_frame(chat).prefix == "[BOS]w58 "


def test_template_that_rewrites_the_message_is_refused():
    upper = CHAT.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
    with pytest.raises(ScalelensError, match="prompt format base"):
        build_tests([NEEDLE], HAYSTACK, chat_tokenizer(False, upper), [20], (0.5,))
    rewrite = CHAT.replace("{{ m['content'] }}", "{{ m['content'].replace('w7', 'w9') }}")
    with pytest.raises(ScalelensError, match="changes the user message"):
        build_tests([NEEDLE], HAYSTACK, chat_tokenizer(False, rewrite), [20], (0.5,))


@pytest.fixture()
def files(tmp_path):
    needles = tmp_path / "needles.jsonl"
    needles.write_text(json.dumps(NEEDLE.__dict__) + "\n"
                       + json.dumps({"needle": "w3 w4 w5", "question": "w23", "answer": "w4 w5"}) + "\n")
    hay = tmp_path / "haystack.txt"
    hay.write_text("\n".join(HAYSTACK) + "\n")
    return needles, hay


def test_chat_fast_and_reference_agree_at_answer_step_zero(files, tmp_path):
    loaded = load_model(tiny_model("llama", seed=3), tokenizer=chat_tokenizer(adds_bos=True))
    s = r.RetrievalSettings(needles=str(files[0]), haystack=str(files[1]), context_lengths=(30,),
                            depths=(0.0, 0.4, 0.9), gate=-1.0, ablation_k=0, answer_prefix="w56")
    assert s.prompt_format == "auto"
    result, tests = r.fast_scores(loaded, s, tmp_path / "chat.h5", progress=False)
    assert len(tests) == 6 and result.n_tests_passed == 6 and result.recall_unit == "words"
    with CaptureFile(tmp_path / "chat.h5") as f:
        assert {TEMPLATE, "answer_prefix"} <= set(f.segment_labels)
        fast = needle_tests(f)
    ref = r.reference_needle_tests(loaded, s)
    for a, b in zip(fast, ref, strict=True):
        n = len(b.context)
        np.testing.assert_array_equal(np.asarray(a.context)[:n], b.context)
        assert a.needle_span == b.needle_span
        np.testing.assert_array_equal(np.asarray(a.top1_key)[:, :, 0], np.asarray(b.top1_key)[:, :, 0])
        assert int(np.asarray(a.answer)[0]) == int(np.asarray(b.answer)[0])
        assert np.asarray(b.context)[-1] == 56  # the answer prefix is the last prompt token


def test_prompt_format_option(tmp_path):
    p = argparse.ArgumentParser()
    add_analysis_args(p)
    s = settings_from_args(p.parse_args(["--prompt-format", "chat", "--answer-prefix", ""])).retrieval
    assert (s.prompt_format, s.answer_prefix) == ("chat", "")
    default = settings_from_args(p.parse_args([])).retrieval
    assert (default.prompt_format, default.answer_prefix) == ("auto", "Answer:")
    with pytest.raises(SystemExit):
        p.parse_args(["--prompt-format", "instruct"])
    with pytest.raises(ScalelensError):
        r.RetrievalSettings(prompt_format="instruct")
    loaded = load_model(tiny_model("gpt_neox"), tokenizer=chat_tokenizer(adds_bos=False))
    with pytest.raises(ScalelensError, match="chat template"):
        r.haystack_tests(load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer()),
                         r.RetrievalSettings(prompt_format="chat", needles="english"), True)
    base = r.haystack_tests(loaded, r.RetrievalSettings(prompt_format="base", needles="english",
                                                        context_lengths=(20,), depths=(0.5,)), True)
    assert TEMPLATE not in {lab for lab, _ in base[0].prompt.pieces}


@pytest.mark.parametrize("n, expected", [(None, 2), (1, 1), (2, 2)])
def test_n_needles_takes_the_first_n_of_a_needle_file(files, n, expected):
    """A needle file gives every needle by default and its first N with --n-needles N."""
    args = ["--needles", str(files[0])] + ([] if n is None else ["--n-needles", str(n)])
    p = argparse.ArgumentParser()
    add_analysis_args(p)
    s = settings_from_args(p.parse_args(args)).retrieval
    needles, _ = r.needle_material(None, s)
    assert [x.answer for x in needles] == [NEEDLE.answer, "w4 w5"][:expected]


def test_n_needles_past_a_needle_file_is_refused(files):
    s = r.RetrievalSettings(needles=str(files[0]), n_needles=3)
    with pytest.raises(ScalelensError, match=r"--n-needles 3: needle file .*\.jsonl has 2 needle\(s\)"):
        r.needle_material(None, s)


def test_a_model_with_no_declared_context_asks_for_haystack_sizes():
    """max_position_embeddings 0: no default sizes, and the line says so (it said "context (0)")."""
    model = tiny_model("llama")
    model.config.max_position_embeddings = 0
    loaded = load_model(model, tokenizer=word_tokenizer())
    assert loaded.info.max_position == 0
    with pytest.raises(ScalelensError, match="declares no context length.*--context-lengths"):
        r.haystack_tests(loaded, r.RetrievalSettings(needles="english"), with_answer=True)
    tests = r.haystack_tests(loaded, r.RetrievalSettings(needles="english", context_lengths=(30,),
                                                        depths=(0.5,)), with_answer=True)
    assert len(tests) == 2
