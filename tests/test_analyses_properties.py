"""Property tests (hypothesis) for invariants of the analyses."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelens.analyses.retrieval import NeedleTest, head_scores, retrieval_scores
from scalelens.analyses.scaling import fit_power_law
from scalelens.analyses.superposition import mean_sq_overlap, sq_overlaps_reference
from scalelens.analyses.text_dominance import dominance_indices, text_dominance

FAST = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**32 - 1)


@FAST
@given(seed=seeds, n_layers=st.integers(1, 3), n_heads=st.integers(1, 4), steps=st.integers(1, 12))
def test_retrieval_scores_in_unit_interval(seed, n_layers, n_heads, steps):
    rng = np.random.default_rng(seed)
    ctx_len = int(rng.integers(4, 30))
    context = rng.integers(0, 5, size=ctx_len)  # small vocabulary: many coincidences
    start = int(rng.integers(0, ctx_len - 1))
    end = int(rng.integers(start + 1, ctx_len + 1))
    answer = rng.integers(-1, 5, size=steps)
    top1 = rng.integers(-1, ctx_len, size=(n_layers, n_heads, steps))
    test = NeedleTest(top1, context, (start, end), answer, recall=1.0)
    scores = head_scores(test)
    assert scores.shape == (n_layers, n_heads)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(scores <= head_scores(test, "steps") + 1e-12)
    res = retrieval_scores([test, test])
    assert np.all((res.scores >= 0) & (res.scores <= 1))
    assert 0 <= res.fraction <= 1 and 0 <= res.fraction_zero <= 1


@FAST
@given(seed=seeds, n_layers=st.integers(1, 4), n_keys=st.integers(3, 12))
def test_mdi_equals_aei_ratio(seed, n_layers, n_keys):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, size=(2, n_keys))
    groups[:, :3] = [0, 0, 1]  # a text and an other key remain after the sink rule
    attn = rng.dirichlet(np.full(n_keys, 0.5), size=(2, n_layers, 3, 4))
    valid = rng.random((2, 4)) < 0.7
    valid[0, 0] = True
    kinds = {0: "text", 1: "other", 2: "sink", 3: "ignore"}
    res = text_dominance(attn, valid, groups, kinds, first_token_sink=bool(seed % 2))
    for row in [*res.per_layer, *res.groups.values()]:
        if row["a_other"] > 0 and row["a_text"] > 0:
            assert row["mdi"] == pytest.approx(row["aei_text"] / row["aei_other"], rel=1e-9)
        total = row["a_text"] + row["a_other"] + row["a_sink"]
        assert 0 <= total <= 1 + 1e-9


@FAST
@given(
    a_t=st.floats(1e-6, 1.0), a_o=st.floats(1e-6, 1.0),
    n_t=st.integers(1, 10_000), n_o=st.integers(1, 10_000),
)  # fmt: skip
def test_dominance_identity_closed_form(a_t, a_o, n_t, n_o):
    d = dominance_indices(a_t, a_o, n_t, n_o)
    assert d["mdi"] == pytest.approx(d["aei_text"] / d["aei_other"], rel=1e-9)


@FAST
@given(seed=seeds, m=st.integers(1, 40), data=st.data())
def test_orthonormal_rows_zero_overlap(seed, m, data):
    n = data.draw(st.integers(1, m))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    rows = q[:n] * rng.uniform(0.01, 100.0, size=(n, 1))
    value = mean_sq_overlap(rows, block_rows=int(rng.integers(1, n + 1)))
    if n < 2:
        assert np.isnan(value)
    else:
        assert value == pytest.approx(0.0, abs=1e-12)


@FAST
@given(seed=seeds, n=st.integers(2, 60), m=st.integers(1, 20), centered=st.booleans())
def test_fast_overlap_equals_reference(seed, n, m, centered):
    w = np.random.default_rng(seed).standard_normal((n, m))
    ref = sq_overlaps_reference(w, centered=centered)
    fast = mean_sq_overlap(w, centered=centered, block_rows=7)
    if ref.size == 0:
        assert np.isnan(fast)
    else:
        assert fast == pytest.approx(ref.mean(), rel=1e-9, abs=1e-12)


@FAST
@given(
    log_a=st.floats(-5, 5), b=st.floats(-2, 2), n=st.integers(3, 10),
    seed=seeds,
)  # fmt: skip
def test_power_law_recovers_exact_data(log_a, b, n, seed):
    x = np.sort(np.random.default_rng(seed).uniform(6, 11, size=n))
    x = 10 ** (x + np.arange(n) * 1e-3)  # distinct, 1e6 .. 1e11
    fit = fit_power_law(x, np.exp(log_a) * x**b)
    assert fit.params["b"] == pytest.approx(b, abs=1e-9)
    assert fit.params["a"] == pytest.approx(np.exp(log_a), rel=1e-7)
    assert fit.ci["b"] == pytest.approx([b, b], abs=1e-6)  # exact data: the OLS t interval is a point
    if n >= 4:
        assert fit.loo_rel_error == pytest.approx(0.0, abs=1e-8)
