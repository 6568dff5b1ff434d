"""measure on a trained micro-suite checkpoint: results.json contract, fast == reference, reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_run import file_size_limit, race

from scalelens.analyses.from_capture import needle_tests
from scalelens.cache.reader import CaptureFile
from scalelens.measure import retrieval as r
from scalelens.measure.dominance import DominanceSettings
from scalelens.measure.massive import MassiveSettings
from scalelens.measure.run import ANALYSES, MeasureSettings, measure, write_json
from scalelens.measure.text import probe_sequences
from scalelens.models.load import load_model
from scalelens.models.suite import read_manifest
from scalelens.probes.prompts import as_prompts, tokenize

RET = r.RetrievalSettings(context_lengths=(24,), depths=(0.1, 0.5, 0.9), n_needles=1, ablation_k=2,
                          gate=-1.0, batch_size=6)
SETTINGS = MeasureSettings(RET, MassiveSettings(n_sequences=4, length=48),
                           DominanceSettings(dilutions=(1, 3), n_prompts=2))


@pytest.fixture(scope="module")
def final_ckpt(micro_suite):
    manifest = read_manifest(micro_suite)
    return load_model(micro_suite / manifest.sizes[-1], revision=f"step{manifest.steps[-1]}")


@pytest.fixture(scope="module")
def measured(final_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("measure")
    return out, measure(final_ckpt, ANALYSES, out, SETTINGS, progress=False)


def test_results_json_contract(measured, final_ckpt):
    out, data = measured
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["model"]["n_params"] == final_ckpt.info.n_params
    for key in ("name", "revision", "step", "n_params_non_embedding", "d_model", "n_layers", "n_heads"):
        assert key in on_disk["model"]
    a = on_disk["analyses"]
    ret = a["retrieval_heads"]
    scores = np.array(ret["scores"], dtype=float)
    assert scores.shape == (final_ckpt.info.n_layers, final_ckpt.info.n_heads)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert ret["n_tests"] == 3 and ret["n_tests_passed"] == 3
    assert ret["fraction"] == pytest.approx(float((scores > 0.1).mean()))
    assert {"recall_unmasked", "recall_top_masked", "recall_random_masked"} <= set(ret["ablation"])
    mass = a["massive_activations"]
    assert len(mass["per_layer"]) == final_ckpt.info.n_layers
    for row in mass["per_layer"]:
        assert row["max_abs"] > row["median_abs"] > 0 and row["ratio_max"] >= row["ratio"] > 1
    assert {"dims", "first_layer", "massive"} <= set(mass)
    sup = a["superposition"]
    assert sup["inv_m"] == pytest.approx(1 / final_ckpt.info.d_model)
    assert sup["n"] == final_ckpt.info.vocab_size and 0 <= sup["phi_one"] <= sup["phi_half"] <= 1
    dom = a["text_dominance"]
    assert len(dom["per_layer"]) == final_ckpt.info.n_layers
    for layer in dom["per_layer"]:
        assert layer["mdi"] == pytest.approx(layer["aei_text"] / layer["aei_other"], rel=1e-9)
    assert [d["factor"] for d in dom["dilution"]] == [1, 3]
    thirds = {"early", "middle", "late"} if final_ckpt.info.n_layers >= 3 else set()
    assert set(dom["groups"]) == thirds | {"all"}


def test_extra_analyses_in_results_json(measured, final_ckpt):
    """`all` includes information capacity and activation sparsity; neither writes a capture."""
    out, _ = measured
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["settings"]["capacity"] == {"bias": -27.0}
    cap = on_disk["analyses"]["information_capacity"]
    gain = cap["text_bits_per_token"] - cap["nll_bits_per_token"]
    assert cap["compression_gain_bits"] == pytest.approx(gain)
    assert cap["information_capacity"] == pytest.approx((gain - 27.0) / cap["log2_flops_per_token"])
    assert cap["flops"]["total"] == cap["flops_per_token"] == pytest.approx(2 ** cap["log2_flops_per_token"])
    assert cap["text_bits_per_token"] == pytest.approx(8 * cap["n_bytes"] / cap["n_tokens"])
    assert 0 < cap["nll_bits_per_token"] < np.log2(final_ckpt.info.vocab_size)  # trained: beats uniform
    texts = probe_sequences(final_ckpt, None, SETTINGS.massive.n_sequences, SETTINGS.massive.length)
    lengths = tokenize(as_prompts(texts), final_ckpt.tokenizer).lengths
    assert cap["n_tokens"] == int(lengths.sum()) - len(texts)  # every token but each first
    sp = on_disk["analyses"]["activation_sparsity"]
    assert sp["measure"] == "hoyer" and set(sp["points"]) == {"resid_post", "mlp_out"}
    for res in sp["points"].values():
        hoyer = [row["hoyer"] for row in res["per_layer"]]
        assert [row["layer"] for row in res["per_layer"]] == list(range(final_ckpt.info.n_layers))
        assert all(0 < h < 1 for h in hoyer) and res["mean_hoyer"] == pytest.approx(np.mean(hoyer))
        assert res["width"] == final_ckpt.info.d_model and res["n_prompts"] == SETTINGS.massive.n_sequences
    assert not [p.name for p in out.glob("*.h5") if "capacity" in p.name or "sparsity" in p.name]


def test_rerun_reuses_captures(measured, final_ckpt):
    out, first = measured
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    again = measure(final_ckpt, ("retrieval_heads", "massive_activations"), out, SETTINGS, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == stamps
    assert again["analyses"]["retrieval_heads"]["scores"] == first["analyses"]["retrieval_heads"]["scores"]


def test_fast_equals_reference_while_greedy_follows_the_needle(measured, final_ckpt):
    out, _ = measured
    tests = r.haystack_tests(final_ckpt, RET, with_answer=True)
    tok = tokenize([t.prompt for t in tests], final_ckpt.tokenizer, final_ckpt.info.max_position)
    with CaptureFile(out / "retrieval.h5") as f:
        fast = needle_tests(f)
    answer_code = tok.labels.index("answer")
    compared_full = 0
    for i, test in enumerate(fast):
        n = int(tok.lengths[i])
        answer = tok.ids[i, :n][tok.segments[i, :n] == answer_code]
        start = n - len(answer)
        import torch

        ids = torch.tensor(tok.ids[i, :start], dtype=torch.long)[None]
        top1, produced = r._greedy_top1(final_ckpt, ids, len(answer))
        follow = 0
        while follow < len(answer) and produced[follow] == answer[follow]:
            follow += 1
        steps = min(follow + 1, len(answer))  # step s only sees answer[:s]
        np.testing.assert_array_equal(top1[:, :, :steps], np.asarray(test.top1_key)[:, :, :steps])
        np.testing.assert_array_equal(produced[:steps], np.asarray(test.answer)[:steps])
        compared_full += follow == len(answer)
    print(f"{compared_full}/{len(fast)} tests where the greedy answer equals the needle")


def test_masking_all_heads_changes_generation(final_ckpt):
    tests = r.haystack_tests(final_ckpt, RET, with_answer=True)[:2]
    info = final_ckpt.info
    every = [(a, b) for a in range(info.n_layers) for b in range(info.n_heads)]
    base = r.needle_recall(final_ckpt, [t.prompt for t in tests], [])
    with r.masked_heads(final_ckpt, every):
        import torch

        ids = torch.tensor([[1, 2, 3, 4]])
        masked_logits = final_ckpt.model(ids).logits
    plain_logits = final_ckpt.model(ids).logits
    assert not torch.allclose(masked_logits, plain_logits)
    assert 0.0 <= base <= 1.0
    assert final_ckpt.model.config._attn_implementation in ("sdpa", "eager")


def test_ablation_with_more_heads_asked_than_the_model_has(micro_suite, tmp_path):
    manifest = read_manifest(micro_suite)
    small = load_model(micro_suite / manifest.sizes[0], revision=f"step{manifest.steps[-1]}")
    heads = small.info.n_layers * small.info.n_heads
    tests = r.haystack_tests(small, RET, with_answer=True)
    result = r.fast_scores(small, RET, tmp_path / "abl.h5", progress=False)[0]
    out = r.ablation(small, result, tests, k=heads, seed=0, n_tests=2)
    assert out["k"] == heads // 2 and len(out["random_heads"]) == heads // 2
    assert not set(map(tuple, out["random_heads"])) & set(map(tuple, out["top_heads"]))
    assert out["n_tests"] == 2


def test_measure_takes_analysis_names_or_all_and_refuses_unknown_ones(tmp_path):
    from tiny_models import tiny_model, word_tokenizer

    from scalelens.errors import ScalelensError
    from scalelens.measure.run import ANALYSES, measure
    from scalelens.models.load import load_model

    lm = load_model(tiny_model(), tokenizer=word_tokenizer())
    assert list(measure(lm, "superposition", tmp_path / "a", progress=False)["analyses"]) == ["superposition"]
    for bad, needle in ((("superposition", "retrieval"), "unknown analysis retrieval"), ((), "(none)")):
        with pytest.raises(ScalelensError, match=needle) as e:
            measure(lm, bad, tmp_path / "b", progress=False)
        assert ", ".join(ANALYSES) in str(e.value)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("n_sentences", [14, 7, 5])
def test_probe_sequences_start_at_distinct_sentences(tiny_model_dir, tmp_path, n_sentences):
    """The built-in English text has 14 sentences: a stride of 7 gave 10 sequences that were
    only 2 distinct ones, repeated."""
    lm = load_model(tiny_model_dir)
    text = tmp_path / "t.txt"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()
    text.write_text(" ".join(f"{w} is here." for w in words[:n_sentences]))
    n = min(10, n_sentences)
    seqs = probe_sequences(lm, str(text), n, 8)
    assert len({s.split()[0] for s in seqs}) == n
    assert len(set(probe_sequences(lm, None, 10, 8))) == 10


def test_a_suite_with_empty_validation_text_is_refused_up_front(micro_suite, tmp_path):
    """A suite checkpoint's probe text is its validation text; an empty one made
    probe_sequences loop forever (no stride is coprime to 0 sentences). The preflight
    says so in one line instead."""
    import shutil

    from scalelens.errors import ScalelensError
    from scalelens.measure.text import check_probe_text

    suite = tmp_path / "suite"
    shutil.copytree(micro_suite, suite)
    manifest = read_manifest(suite)
    (suite / manifest.valid_text).write_text("\n  \n", encoding="utf-8")
    lm = load_model(manifest.checkpoint_dir(manifest.sizes[0], manifest.steps[-1]))
    with pytest.raises(ScalelensError, match="validation text .* has no text; give probe text with --text"):
        check_probe_text(lm, None, None)
    with pytest.raises(ScalelensError, match="has no text"):
        probe_sequences(lm, None, 2, 8)
    text = tmp_path / "t.txt"
    text.write_text("w1 w2 w3. w4 w5.")
    assert len(probe_sequences(lm, str(text), 2, 4)) == 2


def test_a_suites_validation_lines_end_at_lf_and_crlf_only(micro_suite, tmp_path):
    """A suite's validation text was split with str.splitlines(), which also ends a line at
    U+2028, form feed and NEL: a corpus line holding one became two probe sentences, where a
    --text file's line (split_sentences) stays one."""
    import shutil

    from scalelens.measure.text import probe_sentences

    suite = tmp_path / "suite"
    shutil.copytree(micro_suite, suite)
    manifest = read_manifest(suite)
    (suite / manifest.valid_text).write_text("a b\u2028c .\r\nd\x0ce .\n\ne\x85f .\n", encoding="utf-8",
                                             newline="")
    lm = load_model(manifest.checkpoint_dir(manifest.sizes[0], manifest.steps[-1]))
    assert probe_sentences(lm, None) == ["a b\u2028c .", "d\x0ce .", "e\x85f ."]


def test_every_allowed_dominance_prompt_count_has_distinct_depths():
    """Depths are rounded to 3 decimals: the documented bound must keep them distinct
    (1000 prompts gave 28 repeated depths, so 28 prompts measured twice)."""
    from scalelens.errors import ScalelensError
    from scalelens.measure.dominance import MAX_PROMPTS, _depths

    for n in range(1, MAX_PROMPTS + 1):
        assert len(set(_depths(DominanceSettings(n_prompts=n)))) == n, n
    with pytest.raises(ScalelensError, match="--dominance-prompts must be 1 to"):
        DominanceSettings(n_prompts=MAX_PROMPTS + 1)


@pytest.mark.parametrize("modality", ["text", "embeds"])
def test_a_given_base_tokens_too_large_is_refused_before_any_capture(tmp_path, modality):
    """DominanceSettings(base_tokens=...) past the context was found only when the dominance
    capture began (after the other analyses' captures), as '--context-lengths ... exceed', a
    flag the caller never gave. Now the preflight names base_tokens and what would fit."""
    from tiny_models import tiny_model, word_tokenizer

    from scalelens.errors import ScalelensError

    lm = load_model(tiny_model(), tokenizer=word_tokenizer())
    s = MeasureSettings(dominance=DominanceSettings(base_tokens=500, dilutions=(1, 2), n_prompts=2,
                                                    modality=modality, pool=1))
    with pytest.raises(ScalelensError, match=r"^base_tokens 500 at a x2 dilution, plus \d+ tokens .* "
                                             r"context of 128 tokens; use --base-tokens of at most \d+") as e:
        measure(lm, "massive_activations,text_dominance", tmp_path / "out", s, progress=False)
    assert "--context-lengths" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_json_write_that_runs_out_of_room_leaves_the_old_file_and_no_temporary(tmp_path):
    """results.json, run.json, fits.json: a full disk (here a file-size limit, EFBIG) leaves the
    previous file as it was and no half-written ``.tmp`` beside it."""
    path = tmp_path / "run.json"
    write_json(path, {"tasks": []})
    with file_size_limit(4096), pytest.raises(OSError):
        write_json(path, {"tasks": ["x" * 100] * 100})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads(path.read_text()) == {"tasks": []}


WRITE_RESULTS = """
from scalelens.measure.run import write_json
path, me = Path(sys.argv[2]), int(sys.argv[3])
for i in range(300):
    write_json(path, {"writer": me, "i": i, "pad": "x" * 4000 * (me + 1)})
"""


def test_two_processes_writing_one_results_json_never_collide(tmp_path):
    """Two measure runs into one directory both write results.json; with one shared
    temporary name one renamed the other's file away (FileNotFoundError) or wrote into it."""
    path, go = tmp_path / "results.json", tmp_path / "go"
    race(WRITE_RESULTS, go, [[str(path), str(k)] for k in range(2)])
    assert json.loads(path.read_text())["i"] == 299
    assert sorted(f.name for f in tmp_path.iterdir()) == ["go", "results.json"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """kill -9 during a write leaves its own hidden temporary (each write has its own name); the
    next write of the same file on this host removes the dead writer's, not a live one's."""
    import os
    import subprocess
    import sys

    from scalelens.textfiles import temp_beside

    path = tmp_path / "results.json"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead, live = temp_beside(path), temp_beside(path)
    dead = dead.with_name(dead.name.replace(f"-{os.getpid()}.", f"-{gone.stdout.strip()}."))
    dead.write_text("{half")
    live.write_text("{being written")
    other = tmp_path / ".other.json.x-1.tmp"
    other.write_text("")
    write_json(path, {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, other.name])


def test_a_sentence_longer_than_the_sequence_is_cut_to_it(final_ckpt, tmp_path):
    """A probe sequence that starts at a sentence longer than --seq-length was that whole sentence:
    on the micro suite (64-token context) --n-sequences 72 reached one of 73 tokens and the
    capture refused it; a text file with no full stop was one prompt of the whole file."""
    lm = final_ckpt
    limit = lm.info.max_position
    texts = probe_sequences(lm, None, 80, limit)
    lengths = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(lengths) <= limit and max(lengths) >= limit - 8
    run_on = tmp_path / "run_on.txt"
    run_on.write_text(" ".join(f"w{i % 50} and" for i in range(400)) + "\n")
    texts = probe_sequences(lm, str(run_on), 3, 20)
    assert [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 20 for t in texts] == [True] * 3
    s = MeasureSettings(massive=MassiveSettings(n_sequences=80, intervene=False))
    data = measure(lm, "massive_activations", tmp_path / "out", s, progress=False)
    assert data["analyses"]["massive_activations"]["n_prompts"] == 80


@pytest.mark.parametrize("given", [("--context-lengths", "24,24"), ("--depths", "0.5,0.5,0.9")])
def test_a_repeated_context_length_or_depth_counts_once(tiny_model_dir, tmp_path, capsys, given):
    """``--context-lengths 24,24`` built every needle test twice (40 prompts, not 20), and so did a
    repeated depth: each counts once, as a repeated --dilutions factor does."""
    from cli_run import run_cli

    base = {"--context-lengths": "24", "--depths": "0.5,0.9"}
    counts = []
    for options in (base, {**base, given[0]: given[1]}):
        out = tmp_path / f"m{len(counts)}"
        argv = ["measure", "--model", str(tiny_model_dir), "--analyses", "retrieval_heads",
                "--ablation-k", "0", "--n-needles", "1", *[x for kv in options.items() for x in kv],
                "--out", str(out)]
        rc, _, err = run_cli(capsys, argv)
        assert rc == 0, err
        with CaptureFile(out / "retrieval.h5") as f:
            counts.append(f.n_prompts)
        recorded = json.loads((out / "results.json").read_text())["settings"]["retrieval"]
        assert recorded["context_lengths"] == [24] and recorded["depths"] == [0.5, 0.9]
    assert counts[0] == counts[1] == 2
