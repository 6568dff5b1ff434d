from __future__ import annotations

import re

import pytest

from scalelens.errors import ScalelensError
from scalelens.models.corpus import CorpusConfig, generate_documents, read_text_file
from scalelens.models.tokenizer import encode_documents, train_tokenizer

FACT = re.compile(r"the code of (\w+) is (\d+) \.")
QUESTION = re.compile(r"what is the code of (\w+) \? (\d+) \.")


@pytest.fixture(scope="module")
def docs():
    return generate_documents(CorpusConfig(n_docs=300, seed=7))


def test_same_seed_same_text_other_seed_other_text(docs):
    assert generate_documents(CorpusConfig(n_docs=300, seed=7)) == docs
    assert generate_documents(CorpusConfig(n_docs=300, seed=8)) != docs


def test_sentences_end_in_delimiters(docs):
    for doc in docs:
        assert doc.endswith(" .\n")
        assert all(line.endswith(" .") for line in doc.splitlines())


def test_questions_are_answered_by_earlier_facts(docs):
    n_questions = 0
    for doc in docs:
        facts = dict(FACT.findall(doc))
        for key, value in QUESTION.findall(doc):
            assert facts[key] == value
            n_questions += 1
    assert n_questions > 50


def test_spans_and_sentences_repeat(docs):
    copies = [d for d in docs if "list : " in d]
    assert len(copies) > 30
    for doc in copies:
        span = doc.split("list : ")[1].split(" .")[0]
        assert f"again : {span} ." in doc
    repeated = sum(len(set(d.splitlines())) < len(d.splitlines()) for d in docs)
    assert repeated > 30


def test_word_frequencies_are_zipfian(docs):
    counts: dict[str, int] = {}
    for doc in docs:
        for word in doc.split():
            if word.isalpha() and word.islower():
                counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 5 * ranked[50] > 0 and len(ranked) > 200


def test_tokenizer_round_trips_and_marks_documents(docs):
    tok = train_tokenizer(docs, vocab_size=512)
    assert len(tok) <= 512 and tok.eos_token_id == 0 and tok.pad_token_id == 1
    ids = tok(docs[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == docs[0]
    stream = encode_documents(tok, docs[:5])
    assert (stream == tok.eos_token_id).sum() == 5 and stream[-1] == tok.eos_token_id
    assert stream.tolist()[: len(ids)] == ids


def test_text_file_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc line\nsecond line\n\n\nsecond doc\n")
    assert read_text_file(path) == ["first doc line\nsecond line\n", "second doc\n"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ScalelensError, match="contains no text"):
        read_text_file(tmp_path / "empty.txt")


def test_bad_corpus_settings():
    with pytest.raises(ScalelensError):
        CorpusConfig(p_repeat=1.5)
    with pytest.raises(ScalelensError):
        CorpusConfig(mix=(0.0, 0.0, 0.0))
