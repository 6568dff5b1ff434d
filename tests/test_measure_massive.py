"""The zero-vs-mean intervention of measure/massive.py on a tiny model with a planted massive activation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import tiny_model, word_tokenizer

from scalelens.measure.massive import MassiveSettings, measure_massive
from scalelens.measure.run import MeasureSettings, measure
from scalelens.models.load import load_model

DIM, VALUE = 3, 3000.0  # the planted massive activation: dim 3 of every "w7" token's residual


def _planted(tmp_path_factory):
    """Tiny GPT-NeoX whose input embedding of "w7" holds VALUE in DIM (so every layer's output does)."""
    model = tiny_model()
    tok = word_tokenizer()
    with torch.no_grad():
        model.gpt_neox.embed_in.weight[tok.convert_tokens_to_ids("w7"), DIM] = VALUE
    d = tmp_path_factory.mktemp("planted") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    return _planted(tmp_path_factory)


def _text(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "probe.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_mean_intervention_leaves_sequences_without_the_massive_token_alone(planted_dir, tmp_path):
    """Only one of four probe sequences holds "w7": the mean of the massive entries (about 3000) must
    replace those entries only, not the largest ordinary entry of DIM in the other three sequences.
    Replacing massive entries by their own mean barely moves the loss."""
    lines = ["w7 w1 w2 w3 w4 w5", "w11 w12 w13 w14 w15 w16", "w21 w22 w23 w24 w25 w26",
             "w31 w32 w33 w34 w35 w36"]
    s = MassiveSettings(n_sequences=4, length=6, text=_text(tmp_path, lines))
    lm = load_model(planted_dir)
    result, effect = measure_massive(lm, s, tmp_path / "massive.h5", progress=False)
    assert result.dims == [DIM] and effect["layer"] == 0 and effect["dims"] == [DIM]
    assert effect["delta_mean"] == pytest.approx(0.0, abs=1e-4)


def test_mean_intervention_in_float16_does_not_overflow(planted_dir, tmp_path):
    """40 massive entries of 3000 sum to 120,000, past float16's 65,504: the mean must still be
    about 3000 (summed in float32), so the float16 loss with it is finite and near float32's."""
    lines = [f"w7 w{i} w{i + 1} w{i + 2}" for i in range(1, 41)]
    s = MassiveSettings(n_sequences=40, length=4, text=_text(tmp_path, lines), batch_size=8)
    effects = {}
    for dtype in ("float32", "float16"):
        lm = load_model(planted_dir, dtype=dtype)
        _, effects[dtype] = measure_massive(lm, s, tmp_path / f"massive_{dtype}.h5", progress=False)
    half, full = effects["float16"], effects["float32"]
    assert half["dims"] == full["dims"] == [DIM]
    assert math.isfinite(half["loss_mean"]) and math.isfinite(half["loss_zero"])
    assert half["loss_mean"] == pytest.approx(full["loss_mean"], abs=0.01)
    assert half["delta_mean"] == pytest.approx(0.0, abs=0.01)


def _overflowing_half(tmp_path_factory, tmp_path):
    """The planted model in float16 with an lm-head weight of 60,000 on the massive dim (its
    logits overflow: a NaN loss), and settings over two probe sequences."""
    model = load_model(_planted(tmp_path_factory)).model
    with torch.no_grad():
        model.get_output_embeddings().weight[0, DIM] = 60000.0
    lm = load_model(model, dtype="float16")
    s = MeasureSettings(massive=MassiveSettings(n_sequences=2, length=6,
                                                text=_text(tmp_path, ["w7 w1 w2 w3 w4 w5", "w7 w8 w9"])))
    return lm, s


def test_a_nan_intervention_loss_is_written_as_null(tmp_path_factory, tmp_path):
    """A float16 model whose logits overflow (lm-head weight 60,000 on the massive dim) has a NaN
    loss: measure still writes results.json, with the NaN losses as null like every other result."""
    lm, s = _overflowing_half(tmp_path_factory, tmp_path)
    data = measure(lm, "massive_activations", tmp_path / "out", s, progress=False)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    effect = on_disk["analyses"]["massive_activations"]["intervention"]
    assert effect["layer"] == 0 and effect["dims"] == [DIM]
    assert effect["loss"] is None and effect["loss_mean"] is None and effect["delta_mean"] is None
    assert data["analyses"]["massive_activations"]["intervention"] == effect


def test_a_nan_loss_stops_information_capacity_naming_the_dtype(tmp_path_factory, tmp_path):
    """The same overflowing float16 model: information capacity cannot use a NaN loss; the error
    says why and what to do, where it said only that the NLL must be finite."""
    from scalelens.errors import ScalelensError

    lm, s = _overflowing_half(tmp_path_factory, tmp_path)
    with pytest.raises(ScalelensError, match=r"mean loss on the probe text is nan \(its float16 logits "
                                             r"overflow\?\); measure in float32 or bfloat16"):
        measure(lm, "information_capacity", tmp_path / "out", s, progress=False)


def test_the_intervention_is_batched_and_its_losses_do_not_depend_on_the_batch_size(planted_dir, tmp_path):
    """It ran every probe sequence in one forward pass (100,000 allowed: the logits alone would
    not fit); now batch_size at a time, the bar and the mean still taken over all sequences."""
    from scalelens.measure.massive import intervention
    from scalelens.measure.text import probe_sequences

    lines = [f"w7 w{i} w{i + 1} w{i + 2} w{i + 3}" if i % 3 == 0 else f"w{i} w{i + 1} w{i + 2}"
             for i in range(1, 12)]  # ragged: padding in every batch
    s = MassiveSettings(n_sequences=11, length=5, text=_text(tmp_path, lines), batch_size=11)
    lm = load_model(planted_dir)
    result, whole = measure_massive(lm, s, tmp_path / "massive.h5", progress=False)
    texts = probe_sequences(lm, s.text, s.n_sequences, s.length)
    assert len({len(t.split()) for t in texts}) > 1
    for batch_size in (1, 4):
        effect = intervention(lm, result, texts, batch_size)
        for key in ("loss", "loss_zero", "loss_mean"):
            assert effect[key] == pytest.approx(whole[key], rel=1e-5), (batch_size, key)
