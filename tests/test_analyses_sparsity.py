"""Activation sparsity: Hoyer values of planted vectors, per-layer means, and the live measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalelens.analyses.sparsity import activation_sparsity, hoyer_from_norms, hoyer_sparsity
from scalelens.errors import ScalelensError
from scalelens.hooks.arch import decoder_layers, layer_part
from scalelens.measure.massive import MassiveSettings
from scalelens.measure.sparsity import measure_sparsity
from scalelens.measure.text import probe_sequences
from scalelens.models.load import load_model
from scalelens.models.suite import read_manifest
from scalelens.probes.prompts import as_prompts, tokenize


def _norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.abs(x).sum(-1), np.sqrt((x * x).sum(-1))


def test_hoyer_of_planted_vectors():
    assert hoyer_sparsity([0.0, -7.0, 0.0, 0.0]) == 1.0  # one non-zero entry
    assert hoyer_sparsity([1.0, -1.0, 1.0, -1.0]) == 0.0  # equal magnitudes
    # [3, 4, 0, 0]: l1 = 7, l2 = 5, sqrt(4) = 2 -> (2 - 1.4) / (2 - 1)
    assert hoyer_sparsity([3.0, 4.0, 0.0, 0.0]) == pytest.approx(0.6, abs=1e-12)
    assert hoyer_sparsity([30.0, 40.0, 0.0, 0.0]) == pytest.approx(0.6, abs=1e-12)  # scale-free
    assert math.isnan(hoyer_sparsity(np.zeros(4)))
    rows = hoyer_sparsity(np.array([[1.0, 0, 0, 0], [1, 1, 1, 1]]), axis=1)
    np.testing.assert_array_equal(rows, [1.0, 0.0])
    assert hoyer_sparsity(np.array([[1.0, 1.0], [0.0, 0.0]]), axis=0)[0] == 1.0


def test_hoyer_of_gaussian_vectors_is_near_one_minus_sqrt_two_over_pi():
    x = np.random.default_rng(0).standard_normal((200, 4096))
    expected = (1 - math.sqrt(2 / math.pi)) * 64 / 63  # E||x||_1 / ||x||_2 ~ sqrt(2n/pi)
    assert hoyer_sparsity(x).mean() == pytest.approx(expected, abs=2e-3)


def test_hoyer_rejects_width_one_and_mismatched_shapes():
    with pytest.raises(ScalelensError, match="at least 2 entries"):
        hoyer_from_norms([1.0], [1.0], 1)
    with pytest.raises(ScalelensError, match="same shape"):
        hoyer_from_norms([1.0, 2.0], [1.0], 4)


def _planted() -> np.ndarray:
    """(prompt=2, layer=2, seq=4, d=4); prompt 1 has 2 real positions."""
    x = np.zeros((2, 2, 4, 4))
    x[:, 0, 0] = [1.0, 1.0, -1.0, 1.0]  # layer 0 first tokens: H = 0
    x[:, 0, 1:] = [0.0, 0.0, 5.0, 0.0]  # layer 0 later tokens: H = 1
    x[:, 1, 0] = [2.0, 0.0, 0.0, 0.0]  # layer 1 first tokens: H = 1
    x[:, 1, 1:] = [3.0, 4.0, 0.0, 0.0]  # layer 1 later tokens: H = 0.6 ...
    x[0, 1, 3] = 0.0  # ... except one zero vector, left out and counted
    x[1, :, 2:] = 99.0  # padding of prompt 1: ignored whatever it holds
    return x


def test_per_layer_means_of_a_planted_tensor():
    l1, l2 = _norms(_planted())
    res = activation_sparsity(l1, l2, np.array([4, 2]), 4, "resid_post", layers=[3, 5])
    assert [r.layer for r in res.per_layer] == [3, 5]
    first, second = res.per_layer
    assert (first.hoyer, first.hoyer_first, first.n_tokens) == (1.0, 0.0, 4)  # 3 + 1 later tokens
    assert second.hoyer == pytest.approx(0.6, abs=1e-12) and second.hoyer_first == 1.0
    assert second.n_tokens == 3 and res.n_zero_vectors == 1
    assert res.mean_hoyer == pytest.approx(0.8, abs=1e-12) and res.n_prompts == 2
    d = res.to_dict()
    assert d["point"] == "resid_post" and d["width"] == 4 and d["per_layer"][1]["hoyer"] == pytest.approx(0.6)


def test_sequences_of_one_token_give_no_mean_but_a_first_token_value():
    l1, l2 = _norms(_planted()[:1, :, :1])
    res = activation_sparsity(l1, l2, np.array([1]), 4, "mlp_out")
    assert math.isnan(res.per_layer[0].hoyer) and res.per_layer[0].hoyer_first == 0.0
    assert math.isnan(res.mean_hoyer) and res.to_dict()["mean_hoyer"] is None


def test_nonfinite_vectors_are_counted_as_faults_and_void_the_model_mean():
    """A diverged layer (NaN norms) is not 'zero vectors', and the per-model mean is not the
    mean of the other layers."""
    l1, l2 = _norms(_planted())
    l1[0, 1, 1], l2[0, 1, 1] = np.nan, np.nan  # one broken vector in layer 1
    res = activation_sparsity(l1, l2, np.array([4, 2]), 4, "resid_post")
    assert (res.n_zero_vectors, res.n_nonfinite_vectors) == (1, 1)
    assert res.per_layer[1].n_tokens == 2 and res.per_layer[1].hoyer == pytest.approx(0.6)
    assert res.mean_hoyer == pytest.approx(0.8)
    l1[:, 1], l2[:, 1] = np.nan, np.nan  # the whole layer
    res = activation_sparsity(l1, l2, np.array([4, 2]), 4, "resid_post")
    assert res.n_zero_vectors == 0 and res.n_nonfinite_vectors == 6
    assert math.isnan(res.per_layer[1].hoyer) and res.per_layer[0].hoyer == 1.0
    assert math.isnan(res.mean_hoyer) and res.to_dict()["mean_hoyer"] is None


@pytest.mark.parametrize(
    ("lengths", "message"),
    [(np.array([0, 2]), "lengths must lie in 1..4"), (np.array([5, 2]), "lengths must lie"),
     (np.array([4]), "lengths must have shape")],
)
def test_bad_lengths_raise(lengths, message):
    l1, l2 = _norms(_planted())
    with pytest.raises(ScalelensError, match=message):
        activation_sparsity(l1, l2, lengths, 4, "resid_post")


def test_bad_arrays_raise():
    l1, l2 = _norms(_planted())
    with pytest.raises(ScalelensError, match="l2 must have shape"):
        activation_sparsity(l1, l2[:, :1], np.array([4, 2]), 4, "resid_post")
    with pytest.raises(ScalelensError, match="3 dimensions"):
        activation_sparsity(l1[0], l2[0], np.array([4]), 4, "resid_post")
    with pytest.raises(ScalelensError, match="1 layer indices for a layer axis of 2"):
        activation_sparsity(l1, l2, np.array([4, 2]), 4, "resid_post", layers=[0])


@pytest.fixture(scope="module")
def trained(micro_suite):
    manifest = read_manifest(micro_suite)
    return load_model(micro_suite / manifest.sizes[-1], revision=f"step{manifest.steps[-1]}")


def _reference(trained, texts: list[str]) -> dict[str, np.ndarray]:
    """Per-layer mean Hoyer (after the first token) from hooks written here, one prompt at a time."""
    model, n_layers = trained.model, trained.info.n_layers
    seen: dict[str, list[list[np.ndarray]]] = {"resid_post": [[] for _ in range(n_layers)],
                                               "mlp_out": [[] for _ in range(n_layers)]}
    handles = []
    for i in range(n_layers):
        parts = (("resid_post", decoder_layers(model)[i]), ("mlp_out", layer_part(model, i, "mlp")))
        for name, module in parts:
            def hook(_m, _a, out, name=name, i=i):
                h = out[0] if isinstance(out, tuple) else out
                seen[name][i].append(hoyer_sparsity(h[0, 1:].double().numpy()))
            handles.append(module.register_forward_hook(hook))
    try:
        tok = tokenize(as_prompts(texts), trained.tokenizer, trained.info.max_position)
        for row, n in zip(tok.ids, tok.lengths, strict=True):
            with torch.no_grad():
                model(torch.tensor(row[:n], dtype=torch.long)[None])
    finally:
        for h in handles:
            h.remove()
    return {k: np.array([np.concatenate(v).mean() for v in per]) for k, per in seen.items()}


def test_live_sparsity_matches_hooks_on_single_prompts_and_leaves_no_hooks(trained):
    text = MassiveSettings(n_sequences=3, length=40, batch_size=2)  # a padded batch of 2
    res = measure_sparsity(trained, text)
    texts = probe_sequences(trained, None, 3, 40)
    ref = _reference(trained, texts)
    for point in ("resid_post", "mlp_out"):
        got = np.array([r.hoyer for r in res[point].per_layer])
        np.testing.assert_allclose(got, ref[point], rtol=1e-4)
        assert res[point].width == trained.info.d_model and res[point].n_prompts == 3
        assert res[point].mean_hoyer == pytest.approx(got.mean())
        assert all(0 < r.hoyer < 1 and 0 < r.hoyer_first < 1 for r in res[point].per_layer)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in trained.model.modules())


def test_zero_norms_in_padding_are_not_counted_as_zero_vectors():
    # Prompt 0 has 2 real positions of 3; its padded position carries zero norms (as a
    # zero-filled buffer would). Only the real zero vector of prompt 1 is counted.
    l1 = np.array([[[2.0, 2.0, 0.0]], [[2.0, 0.0, 2.0]]])
    l2 = np.array([[[2.0, 2.0, 0.0]], [[2.0, 0.0, 2.0]]])  # one-hot vectors: H = 1
    res = activation_sparsity(l1, l2, np.array([2, 3]), 4, "resid_post")
    assert res.n_zero_vectors == 1
    assert res.per_layer[0].hoyer == 1.0 and res.per_layer[0].n_tokens == 2
