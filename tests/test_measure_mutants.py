"""Measurement-layer checks found missing by mutation testing: each pins a reported number.

Every expected value is computed here from the definition (DESIGN.md section 4), not by the
code under test: needle depth and haystack budget, prompt segments, the massive-activation
intervention, text-dominance dilution rows, results.json's settings and the ablation arms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import word_tokenizer

from scalelens.probes.haystack import Needle, build_tests
from scalelens.probes.prompts import tokenize

# Ten 3-token sentences (the word tokenizer: one token per word, line breaks cost nothing).
SENTENCES = [f"w{10 + i} w{20 + i} w{30 + i}" for i in range(10)]
NEEDLE = Needle("w40 w41 w7 w8", "w50 w51 w52", "w7 w8")


def _segment(tp, i: int, label: str) -> list[int]:
    n = int(tp.lengths[i])
    return tp.ids[i, :n][tp.segments[i, :n] == tp.labels.index(label)].tolist()


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_the_needle_goes_after_depth_times_the_haystack_sentences(depth):
    """Equal sentences: depth d puts the needle after exactly d x 10 of the 10 sentences."""
    tok = word_tokenizer()
    test = build_tests([NEEDLE], SENTENCES, tok, [30], (depth,), prompt_format="base")[0]
    lines = test.prompt.text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("w40"))
    assert at == round(depth * 10)
    assert lines[:at] == SENTENCES[:at] and lines[at + 1: at + 1 + 10 - at] == SENTENCES[at:]


@pytest.mark.parametrize("length", [30, 31, 32, 35])
def test_the_haystack_is_the_most_whole_sentences_within_the_budget(length):
    """A budget of ``length`` tokens holds floor(length / 3) of the 3-token sentences, cycled."""
    tok = word_tokenizer()
    many = SENTENCES[:4]  # cycled to fill the budget
    tp = tokenize([build_tests([NEEDLE], many, tok, [length], (0.5,), prompt_format="base")[0].prompt], tok)
    hay = _segment(tp, 0, "haystack")
    k = length // 3
    expected = [t for i in range(k) for t in tok(many[i % 4], add_special_tokens=False)["input_ids"]]
    assert sorted(hay) == sorted(expected) and len(hay) == 3 * k <= length


def test_needle_question_and_answer_segments_hold_exactly_their_tokens():
    """Teacher forcing needs: needle span = answer span = the answer's tokens; the question no more."""
    tok = word_tokenizer()
    words = {w: tok.convert_tokens_to_ids(w) for w in "w7 w8 w40 w41 w50 w51 w52".split()}
    tp = tokenize([build_tests([NEEDLE], SENTENCES, tok, [30], (0.5,), prompt_format="base")[0].prompt], tok)
    assert _segment(tp, 0, "needle_answer") == [words["w7"], words["w8"]]
    assert _segment(tp, 0, "needle") == [words["w40"], words["w41"]]
    assert _segment(tp, 0, "question") == [words["w50"], words["w51"], words["w52"]]
    assert _segment(tp, 0, "answer") == [words["w7"], words["w8"]]
    n = int(tp.lengths[0])
    assert tp.labels[tp.segments[0, n - 1]] == "answer"  # the prompt ends with the answer


# -- the massive-activation intervention, recomputed by hand ---------------------------------
DIM = 3


@pytest.fixture(scope="module")
def planted_two(tmp_path_factory):
    """Tiny GPT-NeoX with "w7" at 3000 and "w9" at 1000 in DIM: w9 is massive but under half of w7.

    w7's other dims are large too (about 30, under the absolute bar of 100), so the layer norms
    do not hide what DIM is set to: the loss tells 3000 from any other mean.
    """
    from tiny_models import tiny_model

    from scalelens.models.load import load_model

    model, tok = tiny_model(), word_tokenizer()
    with torch.no_grad():
        w7 = tok.convert_tokens_to_ids("w7")
        model.gpt_neox.embed_in.weight[w7] = 30 * torch.randn(model.config.hidden_size,
                                                              generator=torch.Generator().manual_seed(0))
        model.gpt_neox.embed_in.weight[w7, DIM] = 3000.0
        model.gpt_neox.embed_in.weight[tok.convert_tokens_to_ids("w9"), DIM] = 1000.0
    d = tmp_path_factory.mktemp("planted_two") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return load_model(d)


def _hand_losses(lm, texts: list[str], layer: int) -> dict[str, float]:
    """Loss unedited, with DIM's entries >= half its largest |value| (all sequences) zeroed, and set
    to their mean; each sequence run alone, the mean over every predicted token."""
    model, blocks = lm.model, lm.model.gpt_neox.layers
    ids = [torch.tensor([lm.tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in texts]
    seen: list[torch.Tensor] = []

    def run(edit) -> float:
        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            edit(h)
            return out

        handle = blocks[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                nll = [torch.nn.functional.cross_entropy(model(x).logits[0, :-1].float(), x[0, 1:],
                                                         reduction="sum") for x in ids]
        finally:
            handle.remove()
        return float(sum(nll)) / sum(x.shape[1] - 1 for x in ids)

    base = run(lambda h: seen.append(h[0, :, DIM].clone()))
    entries = torch.cat(seen)
    bar = 0.5 * entries.abs().max()
    mean = entries[entries.abs() >= bar].mean()

    def setter(value):
        def edit(h):
            col = h[0, :, DIM]
            h[0, :, DIM] = torch.where(col.abs() >= bar, value, col)
        return edit

    return {"loss": base, "loss_zero": run(setter(torch.tensor(0.0))), "loss_mean": run(setter(mean))}


@pytest.mark.parametrize("layer", [0, 1])
def test_the_intervention_losses_equal_a_hand_recomputation(planted_two, tmp_path, layer):
    """Zero vs mean at the massive dims' entries of at least half the largest |value| (w7's, not
    w9's at a third), at the given layer, over ragged sequences: losses recomputed here."""
    from dataclasses import replace

    from scalelens.measure.massive import MassiveSettings, intervention, measure_massive

    lines = ["w7 w1 w2 w9 w4 w5", "w11 w9 w13", "w21 w7 w23 w24 w9", "w31 w32 w33 w34"]
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(lines) + "\n")
    s = MassiveSettings(n_sequences=4, length=6, text=str(path), intervene=False, batch_size=3)
    result, _ = measure_massive(planted_two, s, tmp_path / "m.h5", progress=False)
    assert result.dims == [DIM]
    texts = [line for line in lines]
    effect = intervention(planted_two, replace(result, first_layer=layer), texts, batch_size=3)
    hand = _hand_losses(planted_two, texts, layer)
    assert effect["layer"] == layer and effect["dims"] == [DIM]
    for key in ("loss", "loss_zero", "loss_mean"):
        assert effect[key] == pytest.approx(hand[key], rel=1e-4), key
    assert effect["delta_zero"] == pytest.approx(hand["loss_zero"] - hand["loss"], rel=1e-3, abs=1e-5)
    assert effect["delta_mean"] == pytest.approx(hand["loss_mean"] - hand["loss"], rel=1e-3, abs=1e-5)


# -- haystack sizing helpers ------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 19, 20, 25])
def test_clip_keeps_the_first_length_words(length):
    """Word tokens: the longest prefix of at most ``length`` tokens is the first ``length`` words."""
    from scalelens.probes.haystack import clip_to_tokens

    words = [f"w{i}" for i in range(20)]
    assert clip_to_tokens(word_tokenizer(), " ".join(words), length) == " ".join(words[:length])


@pytest.mark.parametrize(("bar", "limit"), [(10, 10), (7, 10), (1, 10), (0, 10), (12, 10), (1, 1)])
def test_largest_fitting_is_the_largest_n_up_to_the_limit(bar, limit):
    from scalelens.probes.haystack import largest_fitting

    assert largest_fitting(lambda n: n <= bar, limit) == min(bar, limit)


@pytest.mark.parametrize(("context", "reserve", "n"), [(256, 64, 3), (2048, 100, 3), (100, 20, 4)])
def test_default_context_lengths_are_evenly_spaced_up_to_the_context_minus_reserve(context, reserve, n):
    from scalelens.probes.haystack import MIN_DEFAULT_LENGTH, default_context_lengths

    top = context - reserve
    expected = sorted({max(MIN_DEFAULT_LENGTH, top * i // n) for i in range(1, n + 1)})
    assert default_context_lengths(context, reserve, n) == expected
    assert max(expected) == top


def test_depths_outside_zero_to_one_are_refused():
    from scalelens.errors import ScalelensError

    for bad in (-0.1, 1.01, 1.5):
        with pytest.raises(ScalelensError, match=r"depths must lie in \[0, 1\]"):
            build_tests([NEEDLE], SENTENCES, word_tokenizer(), [30], (0.5, bad), prompt_format="base")


def test_prose_splits_into_sentences_each_ending_with_its_period():
    from scalelens.probes.haystack import split_sentences

    assert split_sentences("The dog runs. A cat sits. The sun is warm") == [
        "The dog runs.", "A cat sits.", "The sun is warm."]


@pytest.mark.parametrize("length", [9, 20, 40])
def test_a_long_first_sentence_is_cut_so_the_haystack_with_its_line_break_fits(micro_suite, length):
    """Depth 0: the needle comes first and the haystack follows on a new line; one sentence longer
    than the budget is cut so that the haystack, its line break included, is within ``length``."""
    from transformers import AutoTokenizer

    bpe = AutoTokenizer.from_pretrained(micro_suite / "tokenizer")
    needle = Needle("the code is 4821 .", "what is the code ?", "4821 .")
    line = " ".join(["the dog runs home and a cat sits on the mat ."] * 8)
    tp = tokenize([build_tests([needle], [line], bpe, [length], (0.0,), prompt_format="base")[0].prompt], bpe)
    hay = _segment(tp, 0, "haystack")
    assert length - 6 <= len(hay) <= length  # cut between words
    assert bpe.decode(hay).startswith("\n")


def test_the_fitting_haystack_size_is_the_largest_that_fits(tiny_model_dir):
    """The size an error names is the largest at which every test fits the context: one more does not."""
    from scalelens.measure.haystack_fit import fitting_length
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    s = RetrievalSettings(depths=(0.0, 0.5, 1.0))
    words = [f"w{10 + i}" for i in range(30)]  # one token a sentence: every size is another length

    def longest(length: int) -> int:
        tests = build_tests([NEEDLE], words, lm.tokenizer, [length], s.depths, prompt_format="base")
        return int(tokenize([t.prompt for t in tests], lm.tokenizer).lengths.max())

    fit = fitting_length(lm, s, [NEEDLE], words, "base")
    assert fit > 0 and longest(fit) == lm.info.max_position < longest(fit + 1)


def test_the_hint_keeps_as_many_built_in_needles_as_leave_room(tiny_model_dir):
    """Needles 1 and 2 leave room, needle 3 none: the hint names --n-needles 2 (not 1) and the
    haystack size that fits beside both."""
    from scalelens.measure.haystack_fit import context_hint, fitting_length
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    s = RetrievalSettings(needles="synthetic", depths=(0.5,))
    huge = Needle(" ".join(["w40"] * 130) + " w7", "w50", "w7")
    other = Needle("w42 w43 w44 w45 w46 w7 w8 w9", "w50 w51", "w7 w8 w9")
    needles = [NEEDLE, other, huge]
    size = min(fitting_length(lm, s, [n], SENTENCES, "base") for n in needles[:2])
    hint = context_hint(lm, s, needles, SENTENCES, "base")
    assert f"--n-needles 2 with --context-lengths {size} or less" in hint


# -- the masking ablation ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_retrieval(micro_suite, tmp_path_factory):
    """The largest micro-suite model, its needle tests and fast retrieval scores."""
    from scalelens.measure import retrieval as r
    from scalelens.models.load import load_model
    from scalelens.models.suite import read_manifest

    manifest = read_manifest(micro_suite)
    lm = load_model(micro_suite / manifest.sizes[-1], revision=f"step{manifest.steps[-1]}")
    s = r.RetrievalSettings(context_lengths=(24,), depths=tuple(i / 10 for i in range(10)), n_needles=1,
                            gate=-1.0)
    tests = r.haystack_tests(lm, s, with_answer=True)
    result = r.fast_scores(lm, s, tmp_path_factory.mktemp("abl") / "r.h5", progress=False)[0]
    return lm, tests, result


def test_ablation_masks_the_top_k_and_k_seeded_random_other_heads(small_retrieval):
    """Top arm: the k best-scoring heads; random arm: random.Random(seed).sample of the others;
    each arm's recall is needle recall over every (len(tests) // n_tests)-th test."""
    import random

    from scalelens.measure import retrieval as r

    lm, tests, result = small_retrieval
    k, seed, n_tests = 3, 11, 3
    out = r.ablation(lm, result, tests, k, seed, n_tests)
    scores = np.nan_to_num(result.scores, nan=-np.inf)
    top = [tuple(h) for h in out["top_heads"]]
    every = [(a, b) for a in range(lm.info.n_layers) for b in range(lm.info.n_heads)]
    rest = [h for h in every if h not in top]
    assert len(top) == k and min(scores[h] for h in top) >= max(scores[h] for h in rest)
    assert [tuple(h) for h in out["random_heads"]] == random.Random(seed).sample(rest, k)
    prompts = [t.prompt for t in tests[:: len(tests) // n_tests][:n_tests]]
    assert out["n_tests"] == n_tests and out["k"] == k and out["seed"] == seed
    assert out["recall_unmasked"] == r.needle_recall(lm, prompts, [])
    assert out["recall_top_masked"] == r.needle_recall(lm, prompts, top)
    assert out["recall_random_masked"] == r.needle_recall(lm, prompts, [tuple(h) for h in rest if
                                                                        list(h) in out["random_heads"]])


@pytest.fixture(scope="module")
def always_w5(tmp_path_factory):
    """Tiny GPT-NeoX whose greedy next token is always "w5" (final norm constant, one lm-head row)."""
    from tiny_models import tiny_model

    from scalelens.models.load import load_model

    model, tok = tiny_model(), word_tokenizer()
    with torch.no_grad():
        v = torch.ones(model.config.hidden_size)
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.copy_(v)
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[tok.convert_tokens_to_ids("w5")] = v
    d = tmp_path_factory.mktemp("always_w5") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return load_model(d)


def test_needle_recall_decodes_as_many_tokens_as_the_answer_and_ablation_spreads_its_tests(always_w5):
    """The model answers "w5 w5 ...": recall 1 on the needle "w5 w5", 0 on "w6 w6" (words, ROUGE-1),
    1/2 if it stopped a token short. Ablation takes every (len(tests) // n_tests)-th test."""
    from scalelens.analyses.retrieval import NeedleTest, retrieval_scores
    from scalelens.measure import retrieval as r

    lm, tok = always_w5, always_w5.tokenizer
    hit, miss = Needle("w40 w5 w5", "w50", "w5 w5"), Needle("w40 w6 w6", "w50", "w6 w6")
    one = [build_tests([n], SENTENCES, tok, [12], (0.5,), prompt_format="base")[0] for n in (hit, miss)]
    assert r.needle_recall(lm, [one[0].prompt], []) == 1.0
    assert r.needle_recall(lm, [one[1].prompt], []) == 0.0
    tests = [one[i % 2] for i in range(6)]  # hit, miss, hit, ...: every 2nd test is a hit
    info = lm.info
    top1 = np.zeros((info.n_layers, info.n_heads, 2), dtype=np.int64)
    result = retrieval_scores([NeedleTest(top1, np.arange(8), (0, 2), np.arange(2))], threshold=0.1,
                              gate=-1.0)
    out = r.ablation(lm, result, tests, k=1, seed=0, n_tests=3)
    assert out["n_tests"] == 3 and out["recall_unmasked"] == 1.0


def test_a_masked_head_attends_uniformly_and_only_it(tiny_model_dir):
    """Masking head (1, 2): its attention rows become uniform over the causal keys (zeroed
    pre-softmax logits); the other heads of layers 0 and 1 (before its output) stay as they were."""
    from scalelens.measure import retrieval as r
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir, attn_implementation="eager")
    ids = torch.tensor([[3, 9, 4, 12, 7, 1]])
    with torch.no_grad():
        plain = lm.model(ids, output_attentions=True).attentions
        with r.masked_heads(lm, [(1, 2)]):
            masked = lm.model(ids, output_attentions=True).attentions
    n = ids.shape[1]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    torch.testing.assert_close(masked[1][0, 2], uniform)
    for layer in (0, 1):
        for head in range(lm.info.n_heads):
            if (layer, head) != (1, 2):
                torch.testing.assert_close(masked[layer][0, head], plain[layer][0, head])


# -- text dominance and results.json ----------------------------------------------------------
@pytest.mark.parametrize("sink", [False, True])
def test_dominance_counts_the_whole_document_as_o_and_reports_each_dilution(tiny_model_dir, tmp_path, sink):
    """|O| is every haystack, needle and needle-answer token (less the first token when it is the
    sink); each dilution row names base x factor tokens and the middle layers' MDI."""
    from scalelens.measure import dominance as dm
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    s = dm.DominanceSettings(base_tokens=8, dilutions=(1, 2), n_prompts=2, first_token_sink=sink)
    out = dm.measure_dominance(lm, s, tmp_path, progress=False)
    for row in out["dilution"]:
        factor = row["factor"]
        rs = dm.RetrievalSettings(context_lengths=(8 * factor,), depths=dm._depths(s), n_needles=1)
        tp = tokenize([t.prompt for t in dm.haystack_tests(lm, rs, with_answer=True)], lm.tokenizer)
        other = [sum(tp.labels[c] in ("haystack", "needle", "needle_answer") for c in tp.segments[i, :n])
                 - int(sink) for i, n in enumerate(tp.lengths)]
        assert row["other_tokens"] == 8 * factor
        assert row["n_other"] == pytest.approx(np.mean(other))
    assert out["dilution"][0]["mdi_middle"] == pytest.approx(out["groups"]["middle"]["mdi"])
    assert out["n_other"] == out["dilution"][0]["n_other"]


def test_results_json_records_and_uses_the_given_settings(tiny_model_dir, tmp_path):
    """A capacity bias and an ablation seed other than the defaults: results.json records them,
    and the numbers use them (capacity = (gain + b) / log2 FLOPs; random heads drawn with the seed)."""
    import random

    from scalelens.measure.capacity import CapacitySettings
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import MeasureSettings, measure
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    ret = RetrievalSettings(context_lengths=(16,), depths=(0.2, 0.5, 0.8), n_needles=1, gate=-1.0,
                            ablation_k=2, seed=5, ablation_tests=1)
    s = MeasureSettings(retrieval=ret, massive=MassiveSettings(n_sequences=2, length=16),
                        capacity=CapacitySettings(bias=-10.0))
    data = measure(lm, "retrieval_heads,information_capacity", tmp_path, s, progress=False)
    assert data["settings"]["capacity"]["bias"] == -10.0 and data["settings"]["retrieval"]["seed"] == 5
    cap = data["analyses"]["information_capacity"]
    assert cap["information_capacity"] == pytest.approx((cap["compression_gain_bits"] - 10.0)
                                                        / cap["log2_flops_per_token"])
    abl = data["analyses"]["retrieval_heads"]["ablation"]
    top = [tuple(h) for h in abl["top_heads"]]
    rest = [(a, b) for a in range(lm.info.n_layers) for b in range(lm.info.n_heads) if (a, b) not in top]
    assert [tuple(h) for h in abl["random_heads"]] == random.Random(5).sample(rest, 2)
    assert abl["seed"] == 5 and abl["n_tests"] == 1


def test_probe_sequence_i_starts_at_sentence_i_times_a_coprime_stride(tiny_model_dir, tmp_path):
    """20 sentences: the stride is 7 (the first from 7 coprime to 20), so sequence i starts at
    sentence 7i mod 20, not at sentence i (neighbouring sequences would nearly repeat each other)."""
    from scalelens.measure.text import probe_sequences
    from scalelens.models.load import load_model

    lines = [f"w{i} w{20 + i}" for i in range(20)]
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(lines) + "\n")
    seqs = probe_sequences(load_model(tiny_model_dir), str(path), 5, 4)
    expected = [[lines[(7 * i) % 20], lines[(7 * i + 1) % 20]] for i in range(5)]
    assert [seq.split("\n") for seq in seqs] == expected


def test_delimiters_hold_the_period_space_period_newline_bos_and_eos_tokens(micro_suite):
    """The massive-activation positions Sun et al. name: first token (BOS) and delimiters."""
    from transformers import AutoTokenizer

    from scalelens.measure.massive import delimiter_ids

    bpe = AutoTokenizer.from_pretrained(micro_suite / "tokenizer")
    ids = set(delimiter_ids(bpe))
    for text in (".", " .", "\n"):
        assert set(bpe(text, add_special_tokens=False)["input_ids"]) <= ids, text
    assert {i for i in (bpe.bos_token_id, bpe.eos_token_id) if i is not None} <= ids


def test_results_json_names_the_retrieval_mode_it_ran(tiny_model_dir, tmp_path):
    """A reference-mode run (greedy decoding) says so: its scores are not the fast mode's."""
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import MeasureSettings, measure
    from scalelens.models.load import load_model

    ret = RetrievalSettings(mode="reference", context_lengths=(16,), depths=(0.5,), n_needles=1,
                            ablation_k=0)
    data = measure(load_model(tiny_model_dir), "retrieval_heads", tmp_path, MeasureSettings(retrieval=ret),
                   progress=False)
    assert data["analyses"]["retrieval_heads"]["mode"] == "reference"
    assert data["settings"]["retrieval"]["mode"] == "reference"
    assert not (tmp_path / "retrieval.h5").exists()  # reference mode captures nothing


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_dominance_depths_are_the_midpoints_of_n_equal_parts(n):
    """Prompt i's needle sits at (i + 1/2) / n: inside (0, 1), never at the haystack's very start."""
    from scalelens.measure.dominance import DominanceSettings, _depths

    assert _depths(DominanceSettings(n_prompts=n)) == pytest.approx([(2 * i + 1) / (2 * n) for i in range(n)])


def test_random_soft_tokens_of_prompt_i_use_seed_plus_i(tiny_model_dir):
    """Random soft tokens: prompt i's block is drawn with seed + i, so prompts get their own vectors."""
    from dataclasses import replace

    from scalelens.measure import dominance as dm
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    s = dm.DominanceSettings(modality="embeds", soft_tokens="random", pool=2, seed=3)
    prompt = build_tests([NEEDLE], SENTENCES, lm.tokenizer, [12], (0.5,), prompt_format="base")[0].prompt
    blocks = [dm.embeds_prompt(lm, prompt, s, i).pieces[0][1] for i in range(2)]
    assert blocks[0] != blocks[1]
    assert blocks[1] == dm.embeds_prompt(lm, prompt, replace(s, seed=4), 0).pieces[0][1]


def test_superposition_reports_the_lm_head_and_the_input_embedding_separately(tiny_model_dir):
    """Untied GPT-NeoX: the top level is the unembedding's (W = lm head rows), ``embedding`` the input's."""
    from scalelens.analyses.superposition import superposition
    from scalelens.measure.superposition import measure_superposition
    from scalelens.models.load import load_model

    lm = load_model(tiny_model_dir)
    out = measure_superposition(lm)
    head, emb = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert out["tied"] is False
    assert out["embedding"] == superposition(emb).to_dict()
    assert {k: v for k, v in out.items() if k not in ("embedding", "tied")} == superposition(head).to_dict()
    assert out["embedding"]["mean_sq_overlap"] != out["mean_sq_overlap"]
