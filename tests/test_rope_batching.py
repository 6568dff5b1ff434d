"""A prompt's values do not depend on the prompts batched with it, under rotary scalings
whose frequencies transformers picks per forward pass (longrope's short/long factors,
dynamic NTK past the context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from tiny_models import VOCAB, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.hooks.rope import batch_ranges, length_classes
from scalelens.measure import sparsity
from scalelens.measure.capacity import mean_nll
from scalelens.measure.massive import MassiveSettings, intervention, measure_massive
from scalelens.models.load import load_model
from scalelens.probes.prompts import as_prompts, tokenize
from scalelens.probes.spec import ProbeSpec, preset

SWITCH = 16  # original_max_position_embeddings: longer prompts take the long factors
# initializer_range 0.3: sharp enough logits that the wrong factors move every value visibly
_G = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 64, "initializer_range": 0.3}
_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.0, 2.0, 4.0, 8.0],
             "original_max_position_embeddings": SWITCH, "rope_theta": 10000.0}
CONFIGS = {
    "phi3-longrope": lambda: T.Phi3Config(pad_token_id=0, original_max_position_embeddings=SWITCH,
                                          rope_parameters=dict(_LONGROPE), **_G),
    "llama-longrope": lambda: T.LlamaConfig(rope_parameters=dict(_LONGROPE), **_G),
    "llama-dynamic": lambda: T.LlamaConfig(
        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}, **_G),
    "llama": lambda: T.LlamaConfig(**_G),
}
LENGTHS = [5, 12, 40, 20, 16, 17, 64]  # both sides of SWITCH, and the whole context (64)


def build(name: str):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation="sdpa").eval()
    return load_model(model, tokenizer=word_tokenizer())


def words(n: int, seed: int) -> str:
    return " ".join(f"w{(seed * 7 + j * 3) % 60}" for j in range(n))


TEXTS = [words(n, i) for i, n in enumerate(LENGTHS)]
PROBES = [preset("resid", dtype="float32"), preset("attn"), ProbeSpec("lg", "logits", dtype="float32")]


def test_classes_split_batches_where_the_rotary_frequencies_would_differ():
    """longrope: one class per side of each switch length (a prompt of exactly SWITCH tokens is
    short); dynamic: each length past the context is its own class; plain rope: all class 0,
    so batches are the usual fixed-size runs."""
    lengths = np.array(LENGTHS)
    classes = length_classes(build("llama-longrope").model, lengths)
    assert classes.tolist() == [0, 0, 1, 1, 0, 1, 1]
    assert batch_ranges(classes, 0, 8) == [(0, 2), (2, 4), (4, 5), (5, 7)]
    assert batch_ranges(classes, 3, 1) == [(3, 4), (4, 5), (5, 6), (6, 7)]
    assert batch_ranges(classes, 5, 8) == [(5, 7)]
    assert length_classes(build("llama").model, lengths).tolist() == [0] * 7
    assert batch_ranges(np.zeros(7), 1, 3) == [(1, 4), (4, 7)]
    dynamic = length_classes(build("llama-dynamic").model, np.array([5, 64, 65, 65, 70]))
    assert dynamic[0] == dynamic[1] and dynamic[2] == dynamic[3] and len(set(dynamic.tolist())) == 3


def _max_diff(a, i: int, b, j: int = 0) -> float:
    """Largest |difference| of prompt ``i`` of file ``a`` and prompt ``j`` of ``b``, every probe."""
    worst = 0.0
    with CaptureFile(a) as fa, CaptureFile(b) as fb:
        for p in ("resid", "attn", "lg"):
            x, y = fa.read("values", p, prompts=[i]).data[0], fb.read("values", p, prompts=[j]).data[0]
            common = tuple(slice(0, min(a, b)) for a, b in zip(x.shape, y.shape, strict=True))
            worst = max(worst, float(np.abs(x[common].astype(np.float64) - y[common]).max()))
    return worst


@pytest.mark.parametrize("name", ["phi3-longrope", "llama-longrope", "llama-dynamic"])
def test_a_prompt_is_captured_as_alone_whatever_it_is_batched_with(name, tmp_path):
    """Every prompt of a batch of 8 with short (<= 16) and long (up to the whole context)
    prompts equals the same prompt captured alone (float noise only; the long factors applied
    to a short prompt moved its values by ~1, the review's 4.4e-4 at init scale 0.02)."""
    lm = build(name)
    batched = capture(lm, PROBES, TEXTS, tmp_path / "batched.h5", batch_size=8, progress=False)
    for i, text in enumerate(TEXTS):
        alone = capture(lm, PROBES, [text], tmp_path / f"alone{i}.h5", batch_size=1, progress=False)
        assert _max_diff(batched, i, alone) < 1e-4, (name, LENGTHS[i])


def test_resume_after_an_interrupt_keeps_the_batches_apart(tmp_path):
    """Interrupted in its second forward pass, a longrope capture has written the first batch
    (the two short prompts); resumed with batch size 3 it still never mixes the sides and
    holds the uninterrupted capture's values, in prompt order."""
    lm = build("llama-longrope")
    ref = capture(lm, PROBES, TEXTS, tmp_path / "ref.h5", batch_size=8, progress=False)
    calls = {"n": 0}

    def crash(*_):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "int.h5"
    handle = lm.model.base_model.register_forward_pre_hook(crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            capture(lm, PROBES, TEXTS, out, batch_size=8, progress=False)
    finally:
        handle.remove()
    with CaptureFile(out) as f:
        assert f.n_done == 2 and not f.complete
    capture(lm, PROBES, TEXTS, out, batch_size=3, progress=False)
    with CaptureFile(out) as f, CaptureFile(ref) as r:
        assert f.complete and f.batch_sizes.tolist() == [8, 8] + [3] * 5
        np.testing.assert_array_equal(f.read("tokens").data, r.read("tokens").data)
    for i in range(len(TEXTS)):
        assert _max_diff(out, i, ref, i) < 1e-4, LENGTHS[i]


def _nll_alone(lm, texts: list[str]) -> float:
    parts = [mean_nll(lm, tokenize(as_prompts([t]), lm.tokenizer, 64), 1) for t in texts]
    return sum(v * n for v, n in parts) / sum(n for _, n in parts)


def test_capacity_loss_counts_each_sequence_as_alone():
    """information_capacity's NLL over mixed lengths equals the token-weighted NLL of each
    sequence alone (all were padded to the longest sequence of the set, so short ones took the
    long factors: 4.7e-3 nats off)."""
    lm = build("llama-longrope")
    nll, count = mean_nll(lm, tokenize(as_prompts(TEXTS), lm.tokenizer, 64), batch_size=4)
    assert count == sum(n - 1 for n in LENGTHS)
    assert nll == pytest.approx(_nll_alone(lm, TEXTS), abs=1e-6)


def test_sparsity_norms_are_each_sequences_own():
    """The per-token norms behind activation sparsity equal each sequence's own forward pass."""
    lm = build("llama-longrope")

    def norms(texts: list[str], batch_size: int) -> np.ndarray:
        tok = tokenize(as_prompts(texts), lm.tokenizer, 64)
        sink = sparsity._NormSink()
        sparsity._run(lm, tok, batch_size, sink)
        return sink.array(sink.l2, sparsity.POINTS[0], 2, tok.seq_len)

    batched = norms(TEXTS, 8)
    for i, (text, n) in enumerate(zip(TEXTS, LENGTHS, strict=True)):
        np.testing.assert_allclose(batched[i, :, :n], norms([text], 1)[0], rtol=1e-5, atol=1e-5)


def test_intervention_base_loss_counts_each_sequence_as_alone(tmp_path):
    """The massive intervention's baseline loss (batched, padded) equals the token-weighted
    loss of each sequence run alone (8.6e-3 nats off before); a planted massive entry (dim 3
    of "w7") gives it a site."""
    lm = build("llama-longrope")
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[lm.tokenizer.convert_tokens_to_ids("w7"), 3] = 3000.0
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    s = MassiveSettings(n_sequences=2, length=8, text=str(path), intervene=False)
    result, _ = measure_massive(lm, s, tmp_path / "massive.h5", progress=False)
    effect = intervention(lm, result, TEXTS, batch_size=4)
    assert effect["layer"] is not None
    assert effect["loss"] == pytest.approx(_nll_alone(lm, TEXTS), abs=1e-6)
