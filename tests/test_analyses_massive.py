import json

import numpy as np
import pytest
import torch

from scalelens.analyses.massive import (
    ResidualSummary,
    massive_activations,
    massive_from_activations,
    summarise_activations,
)
from scalelens.errors import ScalelensError

DELIM = 13


def _planted(seed: int = 0):
    """4 prompts, 5 layers, noise of scale 0.1; massive values from layer 2 on.

    Dim 7 at position 0 holds +-500 (ratio ~ 500 / 0.067 ~ 7400) and dim 3 at the
    delimiter position holds 300, both in every prompt from layer 2.
    """
    rng = np.random.default_rng(seed)
    n_p, n_l, seq, d = 4, 5, 12, 16
    h = rng.normal(scale=0.1, size=(n_p, n_l, seq, d)).astype(np.float32)
    lengths = np.array([12, 9, 10, 7])
    tokens = rng.integers(20, 100, size=(n_p, seq))
    delim_pos = np.array([5, 3, 8, 2])
    tokens[np.arange(n_p), delim_pos] = DELIM
    for p in range(n_p):
        h[p, 2:, 0, 7] = 500.0 * (-1) ** p
        h[p, 2:, delim_pos[p], 3] = 300.0
        h[p, :, lengths[p] :, :] = 1e6  # padding must be ignored
    return h, lengths, tokens, delim_pos


def test_planted_massive_found_at_layer_dim_position():
    h, lengths, tokens, delim_pos = _planted()
    res = massive_from_activations(h, lengths, tokens, topk=8, delimiter_ids=[DELIM])
    assert res.first_layer == 2
    assert res.dims == [3, 7]
    assert res.tokens == sorted({DELIM, *tokens[:, 0].tolist()})
    assert set(res.positions) == {0, *delim_pos.tolist()}
    assert len(res.massive) == 4 * 3 * 2
    assert res.share_first_token == pytest.approx(0.5)
    assert res.share_delimiter == pytest.approx(0.5)
    assert not res.massive_truncated
    for row in res.per_layer:
        if row["layer"] >= 2:
            assert (row["max_abs"], row["dim"], row["position"]) == (500.0, 7, 0)
            assert row["token"] == tokens[row["prompt"], 0]
            assert row["ratio_flag"] and row["ratio"] > 1000
        else:
            assert row["max_abs"] < 1.0 and not row["ratio_flag"]
    assert res.ratio_layers == [2, 3, 4] and res.ratio_first_layer == 2
    assert res.ratio_dims == [7] and res.ratio_positions == [0]


def test_absolute_bar_separates_sun_rule_from_ratio_rule():
    h, lengths, tokens, _ = _planted()
    small = h / 10.0  # massive entries drop to 50 and 30: ratio kept, |a| < 100
    res = massive_from_activations(small, lengths, tokens, delimiter_ids=[DELIM])
    assert res.massive == [] and res.dims == [] and res.first_layer is None
    assert res.share_first_token is None and res.share_delimiter is None
    assert res.ratio_layers == [2, 3, 4]


def test_ratios_exact_on_known_tensor():
    # Every prompt/layer is all ones except one entry c[p, l]; median 1, ratio c.
    c = np.array([[2.0, 40.0, 150.0], [4.0, 80.0, 250.0]])
    n_p, n_l, seq, d = 2, 3, 3, 4
    h = np.ones((n_p, n_l, seq, d))
    for p in range(n_p):
        for layer in range(n_l):
            h[p, layer, 1 + p, layer] = -c[p, layer]
    tokens = np.arange(n_p * seq).reshape(n_p, seq)
    res = massive_from_activations(h, [seq, seq], tokens, topk=2, ratio_threshold=100)
    ratios = [row["ratio"] for row in res.per_layer]
    assert ratios == [3.0, 60.0, 200.0]
    assert [row["ratio_max"] for row in res.per_layer] == [4.0, 80.0, 250.0]
    assert [row["max_abs"] for row in res.per_layer] == [4.0, 80.0, 250.0]
    assert [row["median_abs"] for row in res.per_layer] == [1.0, 1.0, 1.0]
    assert [row["median_abs_pooled"] for row in res.per_layer] == [1.0, 1.0, 1.0]
    assert [(row["prompt"], row["position"], row["dim"]) for row in res.per_layer] == [
        (1, 2, 0),
        (1, 2, 1),
        (1, 2, 2),
    ]
    assert [row["token"] for row in res.per_layer] == [5, 5, 5]
    assert res.ratio_layers == [2]
    # 150 and 250 exceed 100 but 150/1 < 1000: no Sun entries.
    assert res.massive == []


def test_median_averaged_over_prompts_vs_pooled():
    h = np.zeros((2, 1, 2, 2))
    h[0, 0] = [[1.0, 1.0], [1.0, 9.0]]  # median 1
    h[1, 0] = [[3.0, 3.0], [3.0, 30.0]]  # median 3
    res = massive_from_activations(h, [2, 2], np.zeros((2, 2), dtype=int))
    row = res.per_layer[0]
    assert row["median_abs"] == 2.0
    assert row["median_abs_pooled"] == 3.0  # sorted 1,1,1,3,3,3,9,30 -> (3 + 3) / 2
    assert row["ratio"] == pytest.approx((9.0 + 10.0) / 2)
    assert row["max_abs"] == 30.0


def _device_like_summary(h, lengths, tokens, topk):
    """An independent reduction written the way a torch probe would do it."""
    t = torch.from_numpy(np.asarray(h, dtype=np.float64))
    n_p, n_l, _, d = t.shape
    vals = torch.full((n_p, n_l, topk), float("nan"), dtype=torch.float64)
    pos = torch.full((n_p, n_l, topk), -1, dtype=torch.int64)
    dim = torch.full_like(pos, -1)
    tok = torch.full_like(pos, -1)
    med = torch.empty(n_p, n_l, dtype=torch.float64)
    for p in range(n_p):
        for layer in range(n_l):
            a = t[p, layer, : lengths[p]].abs().flatten()
            v, i = torch.topk(a, min(topk, a.numel()))
            k = v.numel()
            vals[p, layer, :k], pos[p, layer, :k], dim[p, layer, :k] = v, i // d, i % d
            tok[p, layer, :k] = torch.from_numpy(tokens[p])[i // d]
            med[p, layer] = torch.quantile(a, 0.5)
    return ResidualSummary(vals.numpy(), pos.numpy(), dim.numpy(), tok.numpy(), med.numpy())


def test_summary_path_equals_full_path():
    h, lengths, tokens, _ = _planted(seed=3)
    full = massive_from_activations(h, lengths, tokens, topk=8, delimiter_ids=[DELIM])
    summary = _device_like_summary(h, lengths, tokens, topk=8)
    ref = summarise_activations(h, lengths, tokens, topk=8)
    for name in ("top_pos", "top_dim", "top_token"):
        assert np.array_equal(getattr(summary, name), getattr(ref, name))
    np.testing.assert_allclose(summary.top_values, ref.top_values, rtol=1e-12)
    np.testing.assert_allclose(summary.median_abs, ref.median_abs, rtol=1e-12)
    streamed = massive_activations(summary, delimiter_ids=[DELIM])
    a, b = full.to_dict(), streamed.to_dict()
    for row_a, row_b in zip(a.pop("per_layer"), b.pop("per_layer"), strict=True):
        assert row_b.pop("median_abs_pooled") is None
        assert row_a.pop("median_abs_pooled") is not None
        assert row_a == pytest.approx(row_b, rel=1e-12)
    assert a == b


def test_tied_entries_are_kept_lowest_flat_index_first():
    """|h| on a coarse grid (as a bfloat16 model's, 8 mantissa bits): of the entries tied with
    the k-th largest the summary keeps the lowest flat indices (pos * d_model + dim), as the
    capture's summary does, not whichever an argpartition happened to leave in front."""
    rng = np.random.default_rng(0)
    h = rng.integers(-3, 4, size=(3, 2, 10, 8)).astype(np.float32)
    lengths, tokens = np.array([10, 7, 4]), rng.integers(0, 50, size=(3, 10))
    summary = summarise_activations(h, lengths, tokens, topk=9)
    for p, n in enumerate(lengths):
        for layer in range(2):
            x = np.abs(h[p, layer, :n]).ravel()
            want = np.lexsort((np.arange(x.size), -x))[:9]
            got = summary.top_pos[p, layer] * 8 + summary.top_dim[p, layer]
            np.testing.assert_array_equal(got, want, err_msg=f"prompt {p} layer {layer}")
            np.testing.assert_array_equal(summary.top_values[p, layer], x[want])


def test_truncation_flag_and_padding_entries():
    h, lengths, tokens, _ = _planted()
    res = massive_from_activations(h, lengths, tokens, topk=2)
    assert res.massive_truncated  # both kept entries are massive: there may be more
    # A prompt shorter than topk entries pads with pos -1 / NaN and is not truncated.
    tiny = np.full((1, 1, 1, 3), 0.001)
    tiny[0, 0, 0, 1] = 500.0
    summ = summarise_activations(tiny, [1], [[4]], topk=5)
    assert summ.top_pos[0, 0].tolist() == [0, 0, 0, -1, -1]
    assert summ.top_dim[0, 0, :3].tolist() == [1, 0, 2]  # ties broken by index
    assert np.isnan(summ.top_values[0, 0, 3:]).all()
    res2 = massive_activations(summ)
    assert not res2.massive_truncated
    assert [e["dim"] for e in res2.massive] == [1]
    json.dumps(res2.to_dict(), allow_nan=False)


def test_bad_inputs():
    h, lengths, tokens, _ = _planted()
    with pytest.raises(ScalelensError):
        massive_from_activations(h[0], lengths, tokens)
    with pytest.raises(ScalelensError):
        massive_from_activations(h, [0, 1, 2, 3], tokens)
    with pytest.raises(ScalelensError):
        massive_from_activations(h, lengths, tokens[:, :3])
    s = summarise_activations(h, lengths, tokens, topk=3)
    with pytest.raises(ScalelensError):
        ResidualSummary(s.top_values, s.top_pos[:, :2], s.top_dim, s.top_token, s.median_abs)


def test_nonfinite_activations_are_faults_not_massive():
    """An inf in one prompt's layer is left out of that layer's ratio and of the Sun rule."""
    h, lengths, tokens, _ = _planted()
    clean = massive_from_activations(h, lengths, tokens, topk=8, delimiter_ids=[DELIM])
    h = h.copy()
    h[1, 0, 2, 5] = np.inf  # layer 0 has no massive values; prompt 1 overflows there
    h[2, 3, 1, 1] = np.nan  # layer 3 has them; prompt 2's row is lost
    res = massive_from_activations(h, lengths, tokens, topk=8, delimiter_ids=[DELIM])
    row0, row3 = res.per_layer[0], res.per_layer[3]
    assert row0["n_nonfinite"] == 1 and not row0["ratio_flag"] and np.isfinite(row0["max_abs"])
    assert res.first_layer == clean.first_layer == 2
    assert all(e["layer"] != 0 for e in res.massive)
    assert all(np.isfinite(e["value"]) for e in res.massive)
    assert row3["n_nonfinite"] == 1 and row3["ratio_flag"]
    assert {e["prompt"] for e in res.massive if e["layer"] == 3} == {0, 1, 3}
    json.dumps(res.to_dict(), allow_nan=False)


def test_a_layer_with_only_nonfinite_rows_reports_no_ratio():
    h, lengths, tokens, _ = _planted()
    h = h.copy()
    h[:, 4, 0, 0] = np.inf
    row = massive_from_activations(h, lengths, tokens, topk=8).per_layer[4]
    assert row["ratio"] is None and row["n_nonfinite"] == 4 and not row["ratio_flag"]


def test_sun_rule_bars_are_strict_on_the_value_and_inclusive_on_the_ratio():
    """|a| > 100 and |a| / median >= 1000, checked on values exactly at either bar."""
    h = np.zeros((1, 2, 8, 16))
    h[0, 0] = 0.125  # layer 0: median 0.125
    h[0, 0, 1, 3] = 125.0  # ratio exactly 1000: massive
    h[0, 0, 2, 4] = 124.875  # ratio 999: not
    h[0, 1] = 0.0625  # layer 1: median 0.0625
    h[0, 1, 3, 5] = 100.0  # |a| exactly 100 (ratio 1600): not
    h[0, 1, 4, 6] = -100.5  # |a| > 100, ratio 1608: massive
    h[0, 1, 0, 0] = 300.0  # first token: massive
    tokens = np.arange(50, 58)[None, :]
    res = massive_from_activations(h, [8], tokens, topk=4, ratio_threshold=1000.0)
    got = sorted((e["layer"], e["position"], e["dim"], e["value"], e["ratio"]) for e in res.massive)
    assert got == [(0, 1, 3, 125.0, 1000.0), (1, 0, 0, 300.0, 4800.0), (1, 4, 6, 100.5, 1608.0)]
    assert res.share_first_token == pytest.approx(1 / 3)  # position 0 only, not position 1
    assert res.tokens == [50, 51, 54]
    # The ratio rule is inclusive too: layer 0's ratio is exactly the 1000 bar.
    assert [row["ratio"] for row in res.per_layer] == [1000.0, 4800.0]
    assert res.ratio_layers == [0, 1]


def test_per_layer_ratio_and_median_are_means_over_prompts():
    # One layer, three prompts of four entries [m, m, m, top]: medians 1, 2, 6 and ratios
    # 10, 20, 60. The layer reports their means (3 and 30), not their medians (2 and 20).
    h = np.zeros((3, 1, 2, 2))
    for p, (med, top) in enumerate([(1.0, 10.0), (2.0, 40.0), (6.0, 360.0)]):
        h[p, 0] = med
        h[p, 0, 1, 1] = top
    row = massive_from_activations(h, [2, 2, 2], np.zeros((3, 2), dtype=int)).per_layer[0]
    assert row["median_abs"] == pytest.approx(3.0)
    assert row["ratio"] == pytest.approx(30.0)
    assert row["ratio_max"] == 60.0 and row["max_abs"] == 360.0 and row["prompt"] == 2


def test_pooled_median_leaves_out_padding():
    # Prompt 0 has one valid position [2, 2] and padding [9, 9]; prompt 1 is [[1, 1], [1, 1]].
    # Valid entries pooled: 1, 1, 1, 1, 2, 2 -> median 1 (with the padding it would be 1.5).
    h = np.array([[[[2.0, 2.0], [9.0, 9.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    row = massive_from_activations(h, [1, 2], np.zeros((2, 2), dtype=int)).per_layer[0]
    assert row["median_abs_pooled"] == 1.0
    assert row["median_abs"] == 1.5  # mean of the per-prompt medians 2 and 1


def test_top_entries_with_fewer_numbers_than_k_keep_the_nans_last():
    """With fewer numbers than k, the k-th largest is NaN: every entry is a candidate, NaN ranked
    last (a ``>= NaN`` filter kept none)."""
    from scalelens.analyses.massive import _top_entries

    idx, vals = _top_entries(np.array([np.nan, 2.0, np.nan, 1.0]), 3)
    assert idx.tolist() == [1, 3, 0]
    np.testing.assert_array_equal(vals, [2.0, 1.0, np.nan])
