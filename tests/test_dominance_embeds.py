"""Embedding blocks through inputs_embeds: exact equivalence, labels, the embeds dominance variant."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from tiny_models import ARCHS, tiny_model, word_tokenizer

from scalelens.analyses.from_capture import DOMINANCE_PROBE, dominance_from_capture
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError, ScalelensWarning
from scalelens.measure import dominance as dom
from scalelens.models.load import load_model
from scalelens.models.suite import read_manifest
from scalelens.probes.embeds import soft_token_count, soft_tokens, token_embeddings
from scalelens.probes.prompts import EmbedBlock, Prompt, placeholder_id, tokenize
from scalelens.probes.spec import ProbeSpec, preset

WORDS = ("w3 w9 w14 w1 w27", "w5 w6", "w40 w41 w42 w43 w44 w45 w46", "w8")


def _probes() -> list[ProbeSpec]:
    return [preset("resid", dtype="float32"), preset("resid_pre", dtype="float32"),
            preset("attn", dtype="float32")]


def _pair(lm) -> tuple[list[Prompt], list[Prompt]]:
    """The same prompts with the ``doc`` piece as text and as its own token embeddings.

    Lengths differ (padding inside batches), one block starts a prompt, one prompt
    has two blocks and one has none.
    """
    def block(text: str) -> EmbedBlock:
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        return EmbedBlock(token_embeddings(lm.model, ids))

    layouts = [
        (("text", WORDS[0]), ("doc", WORDS[2]), ("question", WORDS[1])),
        (("doc", WORDS[0]), ("question", WORDS[3])),
        (("text", WORDS[1]), ("question", WORDS[3])),
        (("text", WORDS[3]), ("doc", WORDS[1]), ("question", WORDS[0]), ("doc", WORDS[3])),
        (("text", WORDS[2]), ("doc", WORDS[3]), ("question", WORDS[1])),
    ]
    as_text = [Prompt(pieces) for pieces in layouts]
    as_embeds = [Prompt(tuple((lab, block(t) if lab == "doc" else t) for lab, t in pieces))
                 for pieces in layouts]
    return as_text, as_embeds


@pytest.mark.parametrize("arch", ARCHS)
def test_own_token_embeddings_give_bit_identical_capture(arch, tmp_path):
    lm = load_model(tiny_model(arch), tokenizer=word_tokenizer())
    as_text, as_embeds = _pair(lm)
    assert as_embeds[1].has_embeds and not as_embeds[2].has_embeds
    a = capture(lm, _probes(), as_text, tmp_path / "ids.h5", batch_size=2, progress=False)
    b = capture(lm, _probes(), as_embeds, tmp_path / "embeds.h5", batch_size=2, progress=False)
    with CaptureFile(a) as f, CaptureFile(b) as g:
        for probe in ("resid", "resid_pre", "attn"):
            x, y = f.read("values", probe).data, g.read("values", probe).data
            assert x.shape == y.shape and np.isfinite(x).all()
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(f.read("segments").data, g.read("segments").data)
        doc = g.segment_labels.index("doc")
        tokens, segments = g.read("tokens").data, g.read("segments").data
        assert (tokens[segments == doc] == placeholder_id(lm.tokenizer)).all()
        same = segments != doc
        np.testing.assert_array_equal(tokens[same], f.read("tokens").data[same])


def test_other_vectors_change_the_capture_only_from_the_block_on(tmp_path):
    lm = load_model(tiny_model("llama"), tokenizer=word_tokenizer())
    as_text, as_embeds = _pair(lm)
    shifted = [Prompt(tuple((lab, EmbedBlock(c.array + 0.5) if isinstance(c, EmbedBlock) else c)
                            for lab, c in p.pieces)) for p in as_embeds]
    a = capture(lm, _probes(), as_embeds[:1], tmp_path / "a.h5", progress=False)
    b = capture(lm, _probes(), shifted[:1], tmp_path / "b.h5", progress=False)
    with CaptureFile(a) as f, CaptureFile(b) as g:
        x, y = f.read("values", "resid").data[0], g.read("values", "resid").data[0]
    start = len(WORDS[0].split())  # the block begins after the 5 text tokens; causal before it
    np.testing.assert_array_equal(x[:, :start], y[:, :start])
    assert (x[:, start:] != y[:, start:]).any(axis=-1).all()


def test_fingerprint_tracks_block_values_and_keeps_text_only_sets_unchanged():
    tok = word_tokenizer()
    vectors = np.ones((3, 32), np.float32)
    one = tokenize([Prompt((("a", "w1"), ("o", EmbedBlock(vectors))))], tok)
    two = tokenize([Prompt((("a", "w1"), ("o", EmbedBlock(vectors * 2))))], tok)
    assert one.lengths.tolist() == [4] and one.embeds[0].start == 1
    assert one.fingerprint() != two.fingerprint()
    text = tokenize([Prompt.of("w1 w2")], tok)
    assert text.embeds == () and text.fingerprint() == tokenize([Prompt.of("w1 w2")], tok).fingerprint()
    assert EmbedBlock(vectors) == EmbedBlock(vectors.copy())
    assert EmbedBlock(vectors) != EmbedBlock(vectors * 2)


def test_bad_blocks_give_one_clear_error(tmp_path):
    lm = load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer())
    wide = [Prompt.of("w1 w2"), Prompt((("text", "w1"), ("doc", EmbedBlock(np.zeros((4, 16))))))]
    with pytest.raises(ScalelensError, match=r"prompt index 1: embedding block 'doc' is 16 wide .* 32 wide"):
        capture(lm, _probes(), wide, tmp_path / "bad.h5", progress=False)
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(ScalelensError, match="2-D"):
        EmbedBlock(np.zeros(32))
    with pytest.raises(ScalelensError, match="NaN or inf"):
        EmbedBlock(np.full((2, 32), np.nan))
    ok = [Prompt((("doc", EmbedBlock(np.zeros((2, 32)))),))]
    with pytest.raises(ScalelensError, match="transformer-lens backend cannot feed embedding blocks"):
        capture(lm, [preset("resid")], ok, tmp_path / "tl.h5", backend="transformer-lens",
                progress=False)


def test_soft_tokens_pool_chunks_at_token_norm_and_random_is_seeded():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((11, 8)).astype(np.float32)
    block = soft_tokens(emb, "pooled", pool=4)
    assert block.shape == (soft_token_count(11, 4), 8) == (4, 8)
    np.testing.assert_array_equal(block[0], emb[0])
    chunk = emb[1:5].astype(np.float64)
    want = chunk.mean(0) * np.linalg.norm(chunk, axis=1).mean() / np.linalg.norm(chunk.mean(0))
    np.testing.assert_allclose(block[1], want, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(block[3]), np.linalg.norm(emb[9:11], axis=1).mean(), rtol=1e-6)
    np.testing.assert_array_equal(soft_tokens(emb, "pooled", pool=1), emb)
    r1, r2 = soft_tokens(emb, "random", 4, seed=3), soft_tokens(emb, "random", 4, seed=3)
    np.testing.assert_array_equal(r1, r2)
    assert r1.shape == block.shape and not np.array_equal(r1, soft_tokens(emb, "random", 4, seed=4))
    np.testing.assert_allclose(np.linalg.norm(r1[1:], axis=1), np.linalg.norm(emb[1:], axis=1).mean(),
                               rtol=1e-5)
    with pytest.raises(ScalelensError, match="soft-token kind"):
        soft_tokens(emb, "mean")


@pytest.fixture(scope="module")
def final_ckpt(micro_suite):
    """The largest micro model, its context raised from 64 to 512 positions (rotary extends).

    The micro suite trains on 64-token sequences, where whole haystack sentences (about 11
    tokens) make x1 / x5 / x10 documents the same size; these tests check sizes, labels
    and identities, not what the model learned.
    """
    manifest = read_manifest(micro_suite)
    lm = load_model(micro_suite / manifest.sizes[-1], revision=f"step{manifest.steps[-1]}")
    return replace(lm, info=replace(lm.info, max_position=512))


SETTINGS = dom.DominanceSettings(dilutions=(1, 5, 10), n_prompts=2, modality="embeds", pool=3)


@pytest.fixture(scope="module")
def embeds_result(final_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("dominance_embeds")
    return out, dom.measure_dominance(final_ckpt, SETTINGS, out, progress=False)


def test_embeds_block_is_the_other_group_and_identity_holds(embeds_result, final_ckpt):
    out, res = embeds_result
    json.dumps(res, allow_nan=False)
    assert res["modality"] == "embeds" and res["other_labels"] == ["embeds"]
    assert res["embeds"] == {"source": "document token embeddings", "soft_tokens": "pooled", "pool": 3,
                             "seed": 0}
    assert len(res["per_layer"]) == final_ckpt.info.n_layers
    for layer in res["per_layer"]:
        assert 0 < layer["a_other"] < 1 and 0 < layer["a_text"] < 1
        assert layer["mdi"] == pytest.approx(layer["aei_text"] / layer["aei_other"], rel=1e-9)
    with CaptureFile(out / "dominance_embeds_x1.h5") as f:
        labels, segments, lengths = f.segment_labels, f.read("segments").data, f.read("lengths").data
        assert set(labels) == {"embeds", "question", "answer"}
        code = labels.index("embeds")
        n_question = int((segments[0] == labels.index("question")).sum())
        for i, n in enumerate(lengths):  # the block opens every prompt and is followed by text only
            block = np.flatnonzero(segments[i, :n] == code)
            np.testing.assert_array_equal(block, np.arange(block.size))
            assert set(segments[i, block.size:n]) == {labels.index("question"), labels.index("answer")}
        recomputed = dominance_from_capture(f, dom.TEXT, dom.OTHER)
    n_block = (segments == code).sum(axis=1).mean()
    assert res["n_other"] == pytest.approx(n_block - 1)  # the first block row is the sink
    assert res["n_text"] == pytest.approx(n_question)
    assert recomputed.per_layer[0]["mdi"] == pytest.approx(res["per_layer"][0]["mdi"], rel=1e-12)


def test_embeds_dilution_grows_the_block_by_the_factors(embeds_result, final_ckpt):
    out, res = embeds_result
    rows = res["dilution"]
    assert [d["factor"] for d in rows] == [1, 5, 10]
    base = rows[0]["other_tokens"]
    assert [d["other_tokens"] for d in rows] == [base, 5 * base, 10 * base]
    assert [d["document_tokens"] for d in rows] == [3 * base, 15 * base, 30 * base]
    for d in rows:  # soft tokens actually in O (sink excluded) match the nominal size
        assert d["n_other"] == pytest.approx(d["other_tokens"], rel=0.15)
    n_other = np.array([d["n_other"] for d in rows])
    ratio = n_other / n_other[0]
    assert ratio[1] == pytest.approx(5, rel=0.15) and ratio[2] == pytest.approx(10, rel=0.15)
    with CaptureFile(out / "dominance_embeds_x10.h5") as f:
        assert int(f.read("lengths").data.max()) <= final_ckpt.info.max_position


def test_pool_one_embeds_equals_the_text_capture(final_ckpt, tmp_path):
    text = dom.DominanceSettings(dilutions=(2,), n_prompts=2, modality="text")
    embeds = dom.DominanceSettings(dilutions=(2,), n_prompts=2, modality="embeds", pool=1)
    a = dom.measure_dominance(final_ckpt, text, tmp_path, progress=False)
    b = dom.measure_dominance(final_ckpt, embeds, tmp_path, progress=False)
    assert (a["modality"], b["modality"]) == ("text", "embeds")
    with CaptureFile(tmp_path / "dominance_x2.h5") as f:
        rows_text = f.read("values", DOMINANCE_PROBE).data
    with CaptureFile(tmp_path / "dominance_embeds_x2.h5") as g:
        rows_embeds, labels = g.read("values", DOMINANCE_PROBE).data, g.segment_labels
    assert "embeds" in labels and "haystack" not in labels
    np.testing.assert_array_equal(rows_text, rows_embeds)
    for x, y in zip(a["per_layer"], b["per_layer"], strict=True):
        assert x["mdi"] == y["mdi"] and x["a_text"] == y["a_text"]


def test_settings_refuse_unknown_modality_and_bad_pool():
    with pytest.raises(ScalelensError, match="unknown modality"):
        dom.DominanceSettings(modality="image")
    with pytest.raises(ScalelensError, match="pool"):
        dom.DominanceSettings(modality="embeds", pool=0)
    with pytest.raises(ScalelensError, match="soft tokens"):
        dom.DominanceSettings(modality="embeds", soft_tokens="zeros")
    assert dom.DominanceSettings().modality == "text"


def test_embeds_dilution_is_flagged_distinct(embeds_result):
    assert embeds_result[1]["dilution_distinct"] is True


def test_text_dilution_in_a_short_context_grows_and_collapsed_levels_warn(micro_suite, tmp_path):
    """In the micro suite's 64-token context x1 / x5 / x10 were one whole-sentence document (29
    tokens each); the haystack's sentences are now cut to each level's budget, so the document
    grows with the dilution. Levels that still come out equal are flagged, with a warning."""
    import warnings

    manifest = read_manifest(micro_suite)
    lm = load_model(micro_suite / manifest.sizes[0], revision=f"step{manifest.steps[-1]}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalelensWarning)
        res = dom.measure_dominance(lm, dom.DominanceSettings(n_prompts=2), tmp_path, progress=False)
    sizes = [d["n_other"] for d in res["dilution"]]
    assert res["dilution_distinct"] is True and sizes == sorted(set(sizes)), sizes
    collapsed = [{"factor": f, "n_other": 29.0} for f in (1, 5, 10)]
    with pytest.warns(ScalelensWarning, match=r"O does not grow with the dilution \(x1: 29, x5: 29, x10: 29 "
                                              r"tokens\); the model's 64-token context"):
        assert dom._distinct(collapsed, 64) is False


