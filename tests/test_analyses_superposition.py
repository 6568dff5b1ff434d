import json
import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from scalelens.analyses.superposition import (
    mean_sq_overlap,
    random_overlap_moments,
    sample_sq_overlaps,
    sq_overlaps_reference,
    superposition,
)
from scalelens.errors import ScalelensError


def _unit_rows(n: int, m: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, m))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _beta_raw_moments(m: int) -> list[float]:
    """E[X^k], k = 1..4, for X = squared overlap ~ Beta(1/2, (m-1)/2)."""
    a, s = 0.5, m / 2
    out, acc = [], 1.0
    for r in range(4):
        acc *= (a + r) / (s + r)
        out.append(acc)
    return out


def test_random_moments_match_beta_distribution():
    for m in (2, 16, 640):
        e1, e2, _, _ = _beta_raw_moments(m)
        mean, var = random_overlap_moments(m)
        assert mean == pytest.approx(e1, rel=1e-12)
        assert var == pytest.approx(e2 - e1**2, rel=1e-12)


def test_random_unit_vectors_mean_and_variance_within_sampling_error():
    # For independent uniform unit vectors, the squared overlaps of two pairs are
    # independent whether or not the pairs share a vector (given u_i, u_j.u_i has
    # the same law for every u_i). So over P pairs the sample mean has standard
    # error sqrt(var/P) and the sample variance sqrt((mu4 - var^2)/P) to leading order.
    n, m = 700, 32
    sq = sq_overlaps_reference(_unit_rows(n, m, seed=1))
    p = n * (n - 1) // 2
    assert sq.size == p
    e1, e2, e3, e4 = _beta_raw_moments(m)
    mean, var = random_overlap_moments(m)
    mu4 = e4 - 4 * e3 * e1 + 6 * e2 * e1**2 - 3 * e1**4
    se_mean = math.sqrt(var / p)
    se_var = math.sqrt((mu4 - var**2) / p)
    assert abs(sq.mean() - mean) < 5 * se_mean
    assert abs(sq.var() - var) < 5 * se_var
    # The tolerance is tight enough to reject a wrong width.
    assert abs(sq.mean() - 1 / (m + 1)) > 5 * se_mean


def test_orthonormal_rows_have_zero_overlap():
    q = ortho_group.rvs(24, random_state=3)[:20] * 3.0
    assert mean_sq_overlap(q) == pytest.approx(0.0, abs=1e-12)
    res = superposition(q, centered=False, n_pair_samples=1000)
    assert res.mean_sq_overlap == pytest.approx(0.0, abs=1e-12)
    assert res.phi_one == 1.0 and res.row_norm.min == pytest.approx(3.0)


def _planted(k: int, r: int, m: int, seed: int) -> np.ndarray:
    """k copies (with random positive scales) of each of r orthonormal vectors in R^m."""
    rng = np.random.default_rng(seed)
    basis = ortho_group.rvs(m, random_state=seed)[:r]
    rows = np.repeat(basis, k, axis=0) * rng.uniform(0.5, 2.0, size=(k * r, 1))
    return rows[rng.permutation(k * r)]


@pytest.mark.parametrize(("k", "r"), [(3, 4), (5, 2), (1, 6)])
def test_planted_copies_closed_form(k: int, r: int):
    w = _planted(k, r, m=10, seed=k + r)
    n = k * r
    # Same-group pairs have cos^2 = 1, cross pairs 0.
    raw = (k - 1) / (n - 1)
    # After removing the mean row, cross pairs have cos = -1/(r-1).
    centered = ((k - 1) + k / (r - 1)) / (n - 1)
    assert mean_sq_overlap(w) == pytest.approx(raw, rel=1e-12)
    assert sq_overlaps_reference(w).mean() == pytest.approx(raw, rel=1e-12)
    # The centered closed form assumes the mean row is the plain average of the
    # r unit vectors, so use unit-norm copies for it.
    unscaled = w / np.linalg.norm(w, axis=1, keepdims=True)
    assert mean_sq_overlap(unscaled, centered=True) == pytest.approx(centered, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference(seed: int):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(50, 400)), int(rng.integers(2, 40))
    w = rng.standard_normal((n, m)) * rng.uniform(0.1, 3.0, size=(n, 1)) + rng.normal(size=m)
    w[rng.integers(n, size=3)] = 0.0
    for centered in (False, True):
        ref = sq_overlaps_reference(w, centered=centered).mean()
        fast = mean_sq_overlap(w, centered=centered, block_rows=int(rng.integers(1, 64)))
        assert fast == pytest.approx(ref, rel=1e-10)


def test_zero_rows_are_skipped_and_counted():
    w = np.vstack([_planted(2, 3, m=5, seed=0), np.zeros((4, 5))])
    res = superposition(w, centered=False, n_pair_samples=0)
    assert res.n == 10 and res.n_zero_rows == 4
    assert res.mean_sq_overlap == pytest.approx(1 / 5)
    assert res.row_norm.min == 0.0
    assert res.phi_half == pytest.approx(np.mean(np.linalg.norm(w, axis=1) > 0.5))
    assert res.var_sq_overlap_sampled is None


def test_phi_shares_and_norm_stats():
    norms = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 3.0])
    w = np.zeros((6, 4))
    w[:, 0] = norms
    res = superposition(w, n_pair_samples=0)
    assert res.phi_half == pytest.approx(4 / 6)  # strictly > 1/2
    assert res.phi_one == pytest.approx(2 / 6)  # strictly > 1
    assert res.row_norm.median == pytest.approx(0.875)
    assert res.row_norm.std == pytest.approx(norms.std())
    assert res.mean_sq_overlap == pytest.approx(1.0)


def test_sampled_variance_and_float32_proxy_shape():
    # A modest proxy of the 262144 x 640 float32 case, exercising several blocks.
    m = 64
    w = np.random.default_rng(7).standard_normal((20_000, m)).astype(np.float32)
    res = superposition(w, block_rows=3000, n_pair_samples=50_000)
    mean, var = random_overlap_moments(m)
    p = res.n * (res.n - 1) // 2
    assert abs(res.mean_sq_overlap - mean) < 5 * math.sqrt(var / p)
    assert res.mean_sq_overlap_centered == pytest.approx(mean, rel=0.01)
    assert res.var_sq_overlap_sampled == pytest.approx(var, rel=0.05)
    assert res.n_pairs_sampled == 50_000 and res.inv_m == 1 / m
    json.dumps(res.to_dict(), allow_nan=False)


def test_sample_pairs_distinct_rows():
    w = np.eye(3)  # distinct rows are orthogonal, a self-pair would give 1
    assert np.all(sample_sq_overlaps(w, 500, seed=2) == 0.0)


def test_bad_inputs():
    with pytest.raises(ScalelensError):
        superposition(np.ones(5))
    with pytest.raises(ScalelensError):
        superposition(np.array([[1.0, np.nan]]))
    with pytest.raises(ScalelensError):
        superposition(np.ones((3, 3), dtype=int))
    assert math.isnan(mean_sq_overlap(np.array([[1.0, 0.0], [0.0, 0.0]])))


def test_superposition_reports_the_centered_overlap():
    # e1, e2, e3 in R^4: raw overlaps 0. Minus the mean row (1/3, 1/3, 1/3, 0) each pair has
    # cos = (-1/3 - 1/3 + 1/9) / (2/3) = -1/2, so the centered mean squared overlap is 1/4.
    w = np.eye(3, 4) * 2.0
    res = superposition(w, n_pair_samples=0)
    assert res.mean_sq_overlap == pytest.approx(0.0, abs=1e-15)
    assert res.mean_sq_overlap_centered == pytest.approx(0.25, rel=1e-12)
    assert res.n_zero_rows_centered == 0
    # Identical rows: overlap 1 raw; every row is zero after centering (no pair left).
    same = superposition(np.ones((3, 4)), n_pair_samples=0)
    assert same.mean_sq_overlap == pytest.approx(1.0, rel=1e-12)
    assert same.n_zero_rows_centered == 3 and math.isnan(same.mean_sq_overlap_centered)
    assert superposition(w, centered=False, n_pair_samples=0).mean_sq_overlap_centered is None
