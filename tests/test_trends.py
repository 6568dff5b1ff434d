"""Each metric's trend over training: the regression on log step, the rank correlation, and
their way from metrics.csv through fits.json into the report."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from scalelens.analyses.trends import MIN_TREND_POINTS, StepTrend, fit_step_trend
from scalelens.sweeps.fits import step_trends, write_fits
from scalelens.sweeps.metrics import COLUMNS

STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000], dtype=float)


def test_a_known_slope_per_decade_is_recovered_within_its_interval():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        values = 2.0 + 0.5 * np.log10(STEPS + 1) + rng.normal(0, 0.1, STEPS.size)
        t = fit_step_trend(STEPS, values, "m", "s")
        hits += t.slope_ci[0] <= 0.5 <= t.slope_ci[1]
    assert 0.90 <= hits / 200 <= 0.99  # a 95% interval covers the true slope about 95% of the time
    assert abs(t.slope_per_decade - 0.5) < 0.1 and t.r2 > 0.8
    assert (t.n_points, t.first_step, t.last_step) == (15, 0, 8000)


def test_the_rank_correlation_sees_any_monotone_change_and_a_constant_has_none():
    down = fit_step_trend(STEPS, 1 / (STEPS + 1) ** 3, "m", "s")
    assert down.spearman_rho == pytest.approx(-1.0) and down.spearman_p < 1e-6
    assert down.slope_per_decade < 0
    flat = fit_step_trend(STEPS, np.full(STEPS.size, 3.0), "m", "s")
    assert flat.slope_per_decade == 0 and math.isnan(flat.spearman_rho) and math.isnan(flat.r2)
    assert flat.to_dict()["spearman_rho"] is None and StepTrend.from_dict(flat.to_dict()).slope_ci == (0, 0)


def test_few_checkpoints_get_the_exact_rank_correlation_p_value_not_zero():
    # scipy's t approximation says p = 0 for any perfectly monotone series; with 4 checkpoints
    # (the fewest) 2 of the 24 orderings are as extreme, so p is 1/12, not significant at 0.05
    four = fit_step_trend(STEPS[:4], np.array([1.0, 2.0, 3.0, 4.0]), "m", "s")
    assert four.spearman_rho == pytest.approx(1.0) and four.spearman_p == pytest.approx(1 / 12)
    demo = np.array([0, 1, 4, 16, 40, 60, 160], dtype=float)  # the demo's checkpoints
    assert fit_step_trend(demo, -demo, "m", "s").spearman_p == pytest.approx(2 / 5040)
    tied = np.array([0.0, 0.0, 0.01, 0.01, 0.08, 0.01, 0.0137])  # ties, as phi_one in the demo
    t = fit_step_trend(demo, tied, "m", "s")
    ref = stats.permutation_test((tied,), lambda y: stats.spearmanr(demo, y).statistic,
                                 permutation_type="pairings", n_resamples=np.inf)
    assert t.spearman_rho == pytest.approx(stats.spearmanr(demo, tied).statistic)
    assert t.spearman_p == pytest.approx(ref.pvalue)


def test_too_few_finite_checkpoints_give_no_trend():
    values = np.array([1.0, 2.0, np.nan, 3.0, np.inf])
    assert fit_step_trend(STEPS[:5], values, "m", "s") is None  # 3 finite, under MIN_TREND_POINTS
    t = fit_step_trend(STEPS[:6], np.append(values, 4.0), "m", "s")
    assert t is not None and t.n_points == MIN_TREND_POINTS and t.last_value == 4.0
    ref = stats.linregress(np.log10(STEPS[[0, 1, 3, 5]] + 1), [1.0, 2.0, 3.0, 4.0])
    assert t.slope_per_decade == pytest.approx(ref.slope)


def _row(size, step, metric, value, layer=""):
    return {"model": "m", "size": size, "revision": f"step{step}", "step": str(step), "n_params": "1000",
            "n_params_non_embedding": "500", "analysis": "superposition", "metric": metric,
            "layer": str(layer), "head": "", "value": str(value)}


def test_the_sweep_writes_a_trend_per_scalar_metric_and_size(tmp_path):
    rows = [_row(size, int(t), "mean_sq_overlap", k * math.log10(t + 1)) for size, k in (("a", 1), ("b", 2))
            for t in STEPS[:6]]
    rows += [_row("a", int(t), "m", 64) for t in STEPS[:6]]  # bookkeeping: never fitted
    rows += [_row("a", int(t), "per_layer", 1.0, layer=0) for t in STEPS[:6]]  # not a scalar
    rows += [_row("c", 0, "mean_sq_overlap", 1.0)]  # one checkpoint: no trend
    assert [(t.metric, t.size) for t in step_trends(rows)] == [("superposition.mean_sq_overlap", "a"),
                                                              ("superposition.mean_sq_overlap", "b")]
    with (tmp_path / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    data = write_fits(tmp_path)
    slopes = [t["slope_per_decade"] for t in json.loads((tmp_path / "fits.json").read_text())["step_trends"]]
    assert slopes == [pytest.approx(1.0), pytest.approx(2.0)] and len(data["step_trends"]) == 2


PYTHIA_STEPS = np.array([0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000)), dtype=float)


@pytest.mark.parametrize("steps", [PYTHIA_STEPS, PYTHIA_STEPS[:6], PYTHIA_STEPS[[0, 11, 60, 153]]])
def test_the_slope_interval_and_r2_are_statsmodels_ols_on_log10_step_plus_one(steps):
    """Step 0 sits at log10(1) = 0; the interval is the t interval statsmodels gives, n - 2 dof."""
    values = 3.0 - 0.2 * np.log10(steps + 1) + np.random.default_rng(steps.size).normal(0, 0.05, steps.size)
    t = fit_step_trend(steps, values, "m", "s")
    ols = sm.OLS(values, sm.add_constant(np.log10(steps + 1))).fit()
    assert t.slope_per_decade == pytest.approx(ols.params[1], rel=1e-10)
    assert t.slope_ci == pytest.approx(tuple(ols.conf_int(alpha=0.05)[1]), rel=1e-10)
    assert t.r2 == pytest.approx(ols.rsquared, rel=1e-10)
    assert (t.first_step, t.n_points) == (0, steps.size)


def test_the_exact_p_with_tied_values_counts_every_ordering():
    """Against an enumeration of all 720 orderings: |rho| at least the observed one, ties averaged."""
    steps, values = PYTHIA_STEPS[:6], np.array([1.0, 1.0, 2.0, 2.0, 3.0, 1.0])
    t = fit_step_trend(steps, values, "m", "s")
    rhos = np.array([stats.spearmanr(steps, p).statistic for p in itertools.permutations(values)])
    assert t.spearman_rho == pytest.approx(stats.spearmanr(steps, values).statistic)
    assert t.spearman_p == pytest.approx(np.mean(np.abs(rhos) >= abs(t.spearman_rho) - 1e-12))
    assert t.spearman_p == pytest.approx(0.4666666666666667)  # 336 of 720


def test_eight_checkpoints_still_get_the_exact_p_value():
    # EXACT_MAX_POINTS = 8 is inclusive: a monotone series of 8 has exact p = 2 / 8!.
    t = fit_step_trend(STEPS[:8], np.arange(8.0), "m", "s")
    assert t.spearman_p == pytest.approx(2 / math.factorial(8))


def test_checkpoints_given_out_of_order_are_sorted_by_step():
    order = np.random.default_rng(1).permutation(STEPS.size)
    values = 1.0 + np.log10(STEPS + 1)
    t = fit_step_trend(STEPS[order], values[order], "m", "s")
    assert (t.first_step, t.last_step) == (0, 8000)
    assert (t.first_value, t.last_value) == (1.0, values[-1])
    assert t.slope_per_decade == pytest.approx(1.0) and t.spearman_rho == pytest.approx(1.0)
