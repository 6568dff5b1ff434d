import json

import numpy as np
import pytest

from scalelens.analyses._common import layer_thirds
from scalelens.analyses.text_dominance import dominance_indices, text_dominance
from scalelens.errors import ScalelensError

TEXT, OTHER, PAD = 1, 2, -1
KINDS = {TEXT: "text", OTHER: "other", PAD: "ignore"}


def _row(groups, shares):
    """A row spreading each kind's share evenly over its keys; shares keyed by label."""
    row = np.zeros(len(groups))
    for label, share in shares.items():
        idx = np.flatnonzero(groups == label)
        row[idx] = share / idx.size
    return row


def _planted():
    """2 prompts, 6 layers, 2 heads, 3 query rows (the last padded in prompt 1).

    Keys: position 0 (sink, labelled text) + 6 text + 3 other in prompt 0;
    prompt 1 has 4 text, 2 other, then 2 padding keys.
    Head 0 puts (0.3 sink, 0.5 text, 0.2 other), head 1 (0.1, 0.3, 0.6) in layers
    0-2; layers 3-5 swap text and other shares.
    """
    g0 = np.array([TEXT] * 7 + [OTHER] * 3)
    g1 = np.array([TEXT] * 5 + [OTHER] * 2 + [PAD] * 3)
    groups = np.stack([g0, g1])
    attn = np.zeros((2, 6, 2, 3, 10))
    heads = [(0.3, 0.5, 0.2), (0.1, 0.3, 0.6)]
    for p, g in enumerate(groups):
        for layer in range(6):
            for h, (s, t, o) in enumerate(heads):
                if layer >= 3:
                    t, o = o, t
                row = _row(np.where(np.arange(10) == 0, 99, g), {99: s, TEXT: t, OTHER: o})
                attn[p, layer, h, :] = row
    valid = np.array([[True, True, True], [True, True, False]])
    attn[1, :, :, 2] = 0.0
    attn[1, :, :, 2, 8] = 1.0  # garbage in the padded row must not count
    return attn, valid, groups


def test_planted_shares_give_exact_indices():
    attn, valid, groups = _planted()
    res = text_dominance(attn, valid, groups, KINDS)
    # |T| and |O| weighted by valid rows: prompt 0 has 3 rows (6 T, 3 O), prompt 1 has 2 (4 T, 2 O).
    n_t, n_o = (3 * 6 + 2 * 4) / 5, (3 * 3 + 2 * 2) / 5
    assert (res.n_text, res.n_other, res.n_rows, res.n_prompts) == (n_t, n_o, 5, 2)
    early = res.per_layer[0]
    assert early["a_text"] == pytest.approx(0.4)
    assert early["a_other"] == pytest.approx(0.4)
    assert early["a_sink"] == pytest.approx(0.2)
    assert early["mdi"] == pytest.approx((0.4 / n_t) / (0.4 / n_o))
    assert early["aei_text"] == pytest.approx(0.5 / (n_t / (n_t + n_o)))
    assert early["aei_other"] == pytest.approx(0.5 / (n_o / (n_t + n_o)))
    late = res.groups["late"]
    assert late["layers"] == [4, 5]
    assert late["a_text"] == pytest.approx(0.4) and late["a_other"] == pytest.approx(0.4)
    assert res.groups["middle"]["layers"] == [2, 3]
    assert res.groups["all"]["a_sink"] == pytest.approx(0.2)
    json.dumps(res.to_dict(), allow_nan=False)


def test_asymmetric_shares_and_sink_kept_in_text_when_asked():
    attn, valid, groups = _planted()
    attn[:, :, 1] = attn[:, :, 0]  # both heads (0.3 sink, 0.5 text, 0.2 other) in layers 0-2
    res = text_dominance(attn, valid, groups, KINDS)
    row = res.per_layer[1]
    assert (row["a_text"], row["a_other"]) == pytest.approx((0.5, 0.2))
    n_t, n_o = res.n_text, res.n_other
    assert row["mdi"] == pytest.approx((0.5 / n_t) / (0.2 / n_o))
    assert row["aei_text"] == pytest.approx((0.5 / 0.7) / (n_t / (n_t + n_o)))
    assert res.per_layer[4]["mdi"] == pytest.approx((0.2 / n_t) / (0.5 / n_o))
    # Without the sink rule position 0 is an ordinary text key.
    raw = text_dominance(attn, valid, groups, KINDS, first_token_sink=False)
    assert raw.n_text == pytest.approx(n_t + 1)
    assert raw.per_layer[1]["a_text"] == pytest.approx(0.8)
    assert raw.per_layer[1]["a_sink"] == 0.0


def test_sink_is_the_first_key_after_left_padding_and_explicit_sink_label():
    groups = np.array([[PAD, PAD, TEXT, TEXT, 5, OTHER]])
    attn = np.zeros((1, 1, 1, 1, 6))
    attn[..., :] = [0, 0, 0.5, 0.1, 0.2, 0.2]
    res = text_dominance(attn, np.ones((1, 1), bool), groups, {**KINDS, 5: "sink"})
    assert res.per_layer[0]["a_sink"] == pytest.approx(0.7)
    assert (res.n_text, res.n_other) == (1.0, 1.0)
    assert res.per_layer[0]["mdi"] == pytest.approx(0.5)
    assert "early" not in res.groups and res.groups["all"]["layers"] == [0]


def test_sink_is_the_first_real_key_even_when_its_segment_is_ignored():
    """Chat format: BOS sits in the (ignored) template piece. It is the sink; the first
    document key stays an other key (it stood in for the sink and left O before)."""
    template = 7
    groups = np.array([[template, OTHER, OTHER, TEXT, TEXT, PAD]])
    attn = np.zeros((1, 1, 1, 1, 6))
    attn[..., :] = [0.5, 0.1, 0.1, 0.2, 0.1, 0]
    res = text_dominance(attn, np.ones((1, 1), bool), groups, {**KINDS, template: "ignore"})
    row = res.per_layer[0]
    assert row["a_sink"] == pytest.approx(0.5)
    assert (res.n_text, res.n_other) == (2.0, 2.0)
    assert (row["a_text"], row["a_other"]) == pytest.approx((0.3, 0.2))
    assert row["mdi"] == pytest.approx((0.3 / 2) / (0.2 / 2))


def test_identity_and_zero_mass():
    d = dominance_indices(0.3, 0.1, 10, 40)
    assert d["mdi"] == pytest.approx(d["aei_text"] / d["aei_other"])
    assert d["mdi"] == pytest.approx(12.0)
    zero = dominance_indices(0.3, 0.0, 10, 40)
    assert zero["mdi"] == float("inf") and zero["aei_other"] == 0.0


def test_layer_thirds_split():
    assert layer_thirds(6) == {"early": [0, 1], "middle": [2, 3], "late": [4, 5]}
    assert [len(v) for v in layer_thirds(16).values()] == [6, 5, 5]
    assert [len(v) for v in layer_thirds(32).values()] == [11, 11, 10]
    with pytest.raises(ScalelensError):
        layer_thirds(2)


def test_bad_inputs():
    attn, valid, groups = _planted()
    with pytest.raises(ScalelensError, match="no kind"):
        text_dominance(attn, valid, groups, {TEXT: "text", OTHER: "other"})
    with pytest.raises(ScalelensError, match="one of"):
        text_dominance(attn, valid, groups, {**KINDS, TEXT: "words"})
    with pytest.raises(ScalelensError, match="need text and other"):
        text_dominance(attn, valid, groups, {**KINDS, OTHER: "ignore"})
    with pytest.raises(ScalelensError):
        text_dominance(attn, valid[:, :2], groups, KINDS)
    with pytest.raises(ScalelensError):
        text_dominance(attn, np.zeros_like(valid), groups, KINDS)


def test_read_in_prompt_ranges_gives_the_same_bytes(tmp_path):
    """Attention rows read lazily (an HDF5 dataset) range by range, down to one prompt at a time,
    give exactly the result of the whole array in memory (a large capture need not fit)."""
    import h5py

    rng = np.random.default_rng(3)
    attn = rng.random((7, 4, 3, 2, 10)).astype(np.float32)
    attn /= attn.sum(axis=-1, keepdims=True)
    groups = rng.choice([TEXT, OTHER, PAD], size=(7, 10))
    groups[:, 1], groups[:, 2] = TEXT, OTHER
    valid = rng.random((7, 2)) < 0.8
    valid[0] = True
    whole = json.dumps(text_dominance(attn, valid, groups, KINDS).to_dict())
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["attn"] = attn
        for chunk_bytes in (1, 3 * 10 * 2 * (4 * 4 + 8) * 3, 10**9):
            lazy = text_dominance(f["attn"], valid, groups, KINDS, chunk_bytes=chunk_bytes)
            assert json.dumps(lazy.to_dict()) == whole
        assert json.dumps(text_dominance(attn, valid, groups, KINDS, chunk_bytes=1).to_dict()) == whole


def test_a_prompt_without_valid_rows_counts_nowhere():
    # Prompt 1 has no valid query row: it adds no rows, no keys to |T| / |O| and no prompt.
    attn, valid, groups = _planted()
    valid[1] = False
    res = text_dominance(attn, valid, groups, KINDS)
    assert (res.n_rows, res.n_prompts) == (3, 1)
    assert (res.n_text, res.n_other) == (6.0, 3.0)
    assert res.per_layer[0]["mdi"] == pytest.approx((0.4 / 6) / (0.4 / 3))


def test_json_form_turns_every_non_finite_number_into_none():
    from scalelens.analyses._common import jsonable

    got = jsonable({"a": float("inf"), "b": np.float64(-np.inf), "c": np.array([1.0, np.nan]), "d": (2, 0.5)})
    assert got == {"a": None, "b": None, "c": [1.0, None], "d": [2, 0.5]}
    # No attention on the other group: MDI and AEI_T are infinite, null in JSON.
    attn, valid, groups = _planted()
    attn = np.where((groups == OTHER)[:, None, None, None, :], 0.0, attn)
    res = text_dominance(attn, valid, groups, KINDS)
    assert res.per_layer[0]["mdi"] == np.inf
    d = res.to_dict()
    assert d["per_layer"][0]["mdi"] is None
    json.dumps(d, allow_nan=False)
