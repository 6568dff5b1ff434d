import json

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.optimize import minimize_scalar

from scalelens.analyses.dynamics import dynamics_curve, fit_dynamics
from scalelens.analyses.scaling import (
    FitResult,
    fit_power_law,
    fit_saturating,
    fit_saturating_reference,
    fit_scaling,
    fits_to_json,
    profile_threshold,
)
from scalelens.errors import ScalelensError

# Pythia total parameter counts, 70m .. 12b.
N = np.array(
    [70_426_624, 162_322_944, 405_334_016, 1_011_781_632, 1_414_647_808, 2_775_208_960,
     6_857_302_016, 11_846_072_320],
    dtype=float,
)  # fmt: skip
WIDTH = 2.0 ** np.arange(4, 13)


def test_power_law_exact_data_exact_exponent():
    fit = fit_power_law(N, 3.2 * N**-0.076, metric="loss")
    assert fit.params["b"] == pytest.approx(-0.076, rel=1e-12)
    assert fit.params["a"] == pytest.approx(3.2, rel=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.loo_rel_error == pytest.approx(0.0, abs=1e-12)
    assert fit.ci["b"] == pytest.approx([-0.076, -0.076], rel=1e-10)
    assert (fit.form, fit.metric, fit.x_name, fit.n_points, fit.note) == (
        "power_law", "loss", "n_params", 8, "",
    )  # fmt: skip
    np.testing.assert_allclose(fit.predict(N), 3.2 * N**-0.076, rtol=1e-12)


def test_power_law_matches_statsmodels_and_loo_error_is_an_extrapolation():
    rng = np.random.default_rng(0)
    y = 0.5 * N**0.3 * np.exp(rng.normal(scale=0.1, size=N.size))
    fit = fit_power_law(N, y)
    ols = sm.OLS(np.log(y), sm.add_constant(np.log(N))).fit()
    assert fit.params["b"] == pytest.approx(ols.params[1], rel=1e-12)
    assert fit.r2 == pytest.approx(ols.rsquared, rel=1e-12)
    rest = sm.OLS(np.log(y[:-1]), sm.add_constant(np.log(N[:-1]))).fit()
    pred = np.exp(rest.params[0]) * N[-1] ** rest.params[1]
    assert fit.loo_rel_error == pytest.approx(abs(pred - y[-1]) / y[-1], rel=1e-10)
    assert fit.loo_rel_error > 0.01


@pytest.mark.parametrize(("n", "level"), [(3, 0.95), (4, 0.95), (8, 0.95), (8, 0.9)])
def test_power_law_interval_and_standard_errors_are_statsmodels_ols(n, level):
    rng = np.random.default_rng(n)
    y = 2.0 * N[:n] ** -0.2 * np.exp(rng.normal(scale=0.05, size=n))
    fit = fit_power_law(N[:n], y, ci_level=level)
    ols = sm.OLS(np.log(y), sm.add_constant(np.log(N[:n]))).fit()
    (lo_a, hi_a), (lo_b, hi_b) = ols.conf_int(alpha=1 - level)
    assert fit.ci["b"] == pytest.approx([lo_b, hi_b], rel=1e-10)
    assert fit.ci["a"] == pytest.approx([np.exp(lo_a), np.exp(hi_a)], rel=1e-10)
    assert fit.se == pytest.approx({"b": ols.bse[1], "ln_a": ols.bse[0]}, rel=1e-10)
    half = stats.t.ppf(0.5 + level / 2, n - 2) * ols.bse[1]  # the t interval, by hand
    assert fit.ci["b"] == pytest.approx([ols.params[1] - half, ols.params[1] + half], rel=1e-10)
    assert (fit.ci_method, fit.note) == ("ols_t", "")


def test_power_law_interval_covers_the_true_exponent_at_its_level_with_four_sizes():
    # A pairs bootstrap, the interval used before, held the true exponent in 54% of these
    # 4-size fits at a nominal 95% (resamples of 4 points with >= 3 distinct are nearly the data).
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = 3.2 * N[:4] ** -0.076 * np.exp(rng.normal(scale=0.05, size=4))
        lo, hi = fit_power_law(N[:4], y).ci["b"]
        covered += lo <= -0.076 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_saturating_exact_recovers_alpha_and_asymptote():
    loss = 5.0 * WIDTH**-0.91 + 2.0
    fit = fit_saturating(WIDTH, loss, metric="loss", x_name="width")
    assert fit.params["alpha"] == pytest.approx(0.91, rel=1e-7)
    assert fit.params["y_inf"] == pytest.approx(2.0, rel=1e-8)
    assert fit.params["C"] == pytest.approx(5.0, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.loo_rel_error == pytest.approx(0.0, abs=1e-8)


def test_saturating_noisy_recovers_alpha_091_within_ci():
    loss0 = 5.0 * WIDTH**-0.91 + 2.0
    covered_alpha = covered_inf = 0
    for seed in range(20):
        loss = loss0 + np.random.default_rng(seed).normal(scale=0.002, size=WIDTH.size)
        fit = fit_saturating(WIDTH, loss)
        assert fit.params["alpha"] == pytest.approx(0.91, abs=0.08)
        assert fit.params["y_inf"] == pytest.approx(2.0, abs=0.01)
        covered_alpha += fit.ci["alpha"][0] <= 0.91 <= fit.ci["alpha"][1]
        covered_inf += fit.ci["y_inf"][0] <= 2.0 <= fit.ci["y_inf"][1]
        assert fit.r2 > 0.999
    assert covered_alpha >= 16 and covered_inf >= 16


@pytest.mark.parametrize("seed", range(5))
def test_saturating_fast_fit_agrees_with_reference(seed):
    rng = np.random.default_rng(seed)
    alpha, c, y_inf = rng.uniform(0.2, 2.0), rng.uniform(1, 10), rng.uniform(-1, 3)
    sign = rng.choice([-1.0, 1.0])  # rising and decaying curves
    y = sign * c * WIDTH**-alpha + y_inf
    y = y + rng.normal(scale=0.01 * np.ptp(y), size=y.size)
    fast = fit_saturating(WIDTH, y).params
    ref = fit_saturating_reference(WIDTH, y)
    for name in ("C", "alpha", "y_inf"):
        assert fast[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-6)
    assert fast["alpha"] == pytest.approx(alpha, rel=0.3)


def test_non_positive_values_skip_the_log_fit_with_a_reason():
    y = np.linspace(-1.0, 1.0, N.size)
    fit = fit_power_law(N, y, metric="mdi_delta")
    assert fit.skipped and fit.params == {} and fit.r2 is None
    assert "y > 0" in fit.note
    with pytest.raises(ScalelensError, match="skipped"):
        fit.predict(N)
    ok = fit_saturating(N, y)  # the saturating form accepts any sign of y
    assert not ok.skipped
    assert "distinct" in fit_power_law(N[:2], N[:2]).note
    assert "distinct" in fit_saturating(N[:3], N[:3]).note
    assert "x > 0" in fit_power_law(np.r_[0.0, N], np.r_[1.0, N]).note
    json.dumps(fit.to_dict(), allow_nan=False)


def test_saturating_exponent_on_bound_is_flagged():
    y = 1.0 + 1e-3 * np.log(WIDTH)  # no power-law curvature: alpha runs to its lower bound
    fit = fit_saturating(WIDTH, y)
    assert fit.params["alpha"] == pytest.approx(1e-4)
    assert "bound" in fit.note
    assert fit_saturating(WIDTH, 5.0 * WIDTH**-0.91 + 2.0).note == ""


def test_loo_none_when_too_few_points_and_repeated_largest_x():
    assert fit_power_law(N[:3], N[:3] ** 0.5).loo_rel_error is None
    x = np.r_[N[:4], N[3]]
    y = 2.0 * x**0.5
    y[-2:] *= [1.1, 0.9]  # two seeds at the largest size; their mean is on the curve
    assert fit_power_law(x, y).loo_rel_error == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs():
    with pytest.raises(ScalelensError):
        fit_power_law(N, N[:-1])
    with pytest.raises(ScalelensError):
        fit_power_law(N, np.r_[N[:-1], np.nan])
    with pytest.raises(ScalelensError):
        fit_scaling(N, N, form="exponential")  # type: ignore[arg-type]
    with pytest.raises(ScalelensError):
        fit_power_law(N, N, ci_level=95)


def test_fits_to_json_shape():
    steps = np.array([0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000)), float)
    true = {"A": 500.0, "lam": 0.3, "gamma": 1e-4, "t0": 1.5, "K": 100.0}
    dyn = fit_dynamics(steps, dynamics_curve(steps, true), layer=2, size="410m")
    fits = [
        fit_power_law(N, 3.2 * N**-0.076, metric="loss"),
        fit_power_law(N, -N, metric="neg"),
    ]
    doc = fits_to_json(fits, [dyn, {"size": "1b", "layer": 0, "params": {}, "r2": None,
                                    "peak_step": None}])  # fmt: skip
    text = json.dumps(doc, allow_nan=False)
    back = json.loads(text)
    assert back["version"] == 1
    assert [f["metric"] for f in back["fits"]] == ["loss", "neg"]
    assert set(back["fits"][0]) == set(FitResult.__dataclass_fields__)
    assert back["fits"][0]["ci"]["b"][0] == pytest.approx(-0.076)
    d0 = back["dynamics"][0]
    assert set(d0) == {"size", "layer", "params", "r2", "peak_step", "n_points"}
    assert (d0["size"], d0["layer"]) == ("410m", 2)
    assert d0["params"]["lam"] == pytest.approx(0.3, rel=1e-3)
    with pytest.raises(ScalelensError):
        fits_to_json([], [{"size": "1b"}])


@pytest.mark.parametrize("form", ["power_law", "saturating"])
def test_a_fit_does_not_depend_on_the_order_of_its_points(form):
    """Sizes listed in another order (a sweep's --model flags) give the same fit: the
    bootstrap drew resamples by index, and its intervals once moved with the order."""
    y = 5.0 * WIDTH**-0.91 + 2.0 + np.random.default_rng(1).normal(scale=0.01, size=WIDTH.size)
    ref = fit_scaling(WIDTH, y, form=form)
    order = np.random.default_rng(2).permutation(WIDTH.size)
    shuffled = fit_scaling(WIDTH[order], y[order], form=form)
    assert ref.ci and shuffled.ci == ref.ci
    assert (shuffled.params, shuffled.r2, shuffled.loo_rel_error) == (ref.params, ref.r2, ref.loo_rel_error)
    assert shuffled.x == sorted(WIDTH.tolist()) and shuffled.y == y.tolist()


def test_saturating_r2_is_one_minus_rss_over_the_centred_total():
    rng = np.random.default_rng(7)
    y = 3.0 * WIDTH**-0.7 + 2.0 + rng.normal(scale=0.05, size=WIDTH.size)
    fit = fit_saturating(WIDTH, y)
    rss = float(np.sum((fit.predict(WIDTH) - y) ** 2))
    assert 0.5 < fit.r2 < 0.99  # noisy enough for the total sum of squares to matter
    assert fit.r2 == pytest.approx(1.0 - rss / float(np.sum((y - y.mean()) ** 2)), rel=1e-9)


@pytest.mark.parametrize(("n", "level"), [(4, 0.95), (5, 0.95), (8, 0.95), (8, 0.9)])
def test_profile_threshold_is_rss_min_times_one_plus_t_squared_over_dof(n, level):
    t = stats.t.ppf(0.5 + level / 2, n - 3)  # the profile-t rule; F(1, d) = t(d)^2
    assert profile_threshold(2.0, n, level) == pytest.approx(2.0 * (1 + t**2 / (n - 3)), rel=1e-12)
    assert profile_threshold(1.0, 8, 0.95) == pytest.approx(1 + 6.607891 / 5, rel=1e-6)  # F table


def _rss_given_alpha(x, y, alpha):
    """Least squares of y on [x^-alpha, 1]: the RSS with C and y_inf free (numpy lstsq)."""
    design = np.column_stack([x**-alpha, np.ones_like(x)])
    return float(np.sum((design @ np.linalg.lstsq(design, y, rcond=None)[0] - y) ** 2))


def _rss_given_y_inf(x, y, y_inf):
    """min over alpha in [1e-4, 10] and C of the RSS with y_inf held (dense grid, then Brent)."""
    def rss(alpha):
        z = x**-alpha
        c = z @ (y - y_inf) / (z @ z)
        return float(np.sum((c * z + y_inf - y) ** 2))

    grid = np.geomspace(1e-4, 10, 20001)
    best = int(np.argmin([rss(a) for a in grid]))
    res = minimize_scalar(rss, bounds=(grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]),
                          method="bounded", options={"xatol": 1e-12})
    return min(float(res.fun), rss(grid[best]))


def test_saturating_interval_ends_are_where_the_profile_rss_meets_the_threshold():
    rng = np.random.default_rng(11)
    y = 406.4 * N**-0.34 + 1.69 + rng.normal(scale=0.02, size=N.size)
    fit = fit_saturating(N, y)
    rss_min = _rss_given_alpha(N, y, fit.params["alpha"])
    limit = rss_min * (1 + stats.t.ppf(0.975, N.size - 3) ** 2 / (N.size - 3))
    (a_lo, a_hi), (i_lo, i_hi) = fit.ci["alpha"], fit.ci["y_inf"]
    assert (fit.ci_method, fit.note) == ("profile_likelihood", "")
    assert 0.1 < a_lo < fit.params["alpha"] < a_hi < 1.0 and i_lo < fit.params["y_inf"] < i_hi
    for end in (a_lo, a_hi):
        assert _rss_given_alpha(N, y, end) == pytest.approx(limit, rel=1e-6)
    step = 1e-3 * (a_hi - a_lo)
    assert _rss_given_alpha(N, y, a_lo + step) < limit < _rss_given_alpha(N, y, a_lo - step)
    assert _rss_given_alpha(N, y, a_hi - step) < limit < _rss_given_alpha(N, y, a_hi + step)
    for end in (i_lo, i_hi):
        assert _rss_given_y_inf(N, y, end) == pytest.approx(limit, rel=1e-4)
    step = 1e-2 * (i_hi - i_lo)
    assert _rss_given_y_inf(N, y, i_lo - step) > limit > _rss_given_y_inf(N, y, i_lo + step)
    assert _rss_given_y_inf(N, y, i_hi + step) > limit > _rss_given_y_inf(N, y, i_hi - step)
    c = fit.ci["C"]
    assert c[0] < fit.params["C"] < c[1] and np.isfinite(c).all()


def test_a_narrower_level_gives_a_narrower_profile_interval():
    rng = np.random.default_rng(11)
    y = 406.4 * N**-0.34 + 1.69 + rng.normal(scale=0.02, size=N.size)
    wide, narrow = fit_saturating(N, y, ci_level=0.95), fit_saturating(N, y, ci_level=0.5)
    assert wide.ci_method == narrow.ci_method == "profile_likelihood"
    for name in ("C", "alpha", "y_inf"):
        assert wide.ci[name][0] < narrow.ci[name][0] < narrow.ci[name][1] < wide.ci[name][1]


def test_four_sizes_get_an_interval_whose_open_ends_are_said_and_written_as_null():
    """One degree of freedom: F(1, 1) = 161 lets alpha run to 0 and y_inf to -inf."""
    x = N[:4]
    y = 406.4 * x**-0.34 + 1.69 + np.array([0.004, -0.006, 0.003, 0.001])
    fit = fit_saturating(x, y)
    limit = profile_threshold(_rss_given_alpha(x, y, fit.params["alpha"]), 4, 0.95)
    assert _rss_given_alpha(x, y, 1e-4) < limit  # the set reaches the form's edge: alpha -> 0
    lo, hi = fit.ci["alpha"]
    assert lo == 0.0 and fit.params["alpha"] < hi < 10
    assert _rss_given_alpha(x, y, hi) == pytest.approx(limit, rel=1e-6)
    assert fit.ci["y_inf"][0] == -np.inf and fit.ci["C"][1] == np.inf
    assert _rss_given_y_inf(x, y, -1e3) < limit  # y_inf far below is still inside
    assert fit.ci["y_inf"][1] == pytest.approx(_upper_end(x, y, limit), rel=1e-4)
    assert "do not bound the 95% interval of C above, alpha below, y_inf below" in fit.note
    assert fit.ci_method == "profile_likelihood"
    back = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert back["ci"]["y_inf"][0] is None and back["ci"]["alpha"][0] == 0.0


def _upper_end(x, y, limit):
    """The largest y_inf whose profile RSS is within the limit (bisection on the hand profile)."""
    lo, hi = float(y.min()) - 1.0, float(y.max())
    assert _rss_given_y_inf(x, y, lo) <= limit < _rss_given_y_inf(x, y, hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _rss_given_y_inf(x, y, mid) <= limit else (lo, mid)
    return lo


def test_alpha_interval_open_above_is_inf_and_y_inf_stays_bounded():
    x = WIDTH[:5]
    y = 100.0 * x**-3.0 + 1.0 + np.array([0.0, 1e-3, -1e-3, 2e-3, -1e-3])
    fit = fit_saturating(x, y)
    limit = profile_threshold(_rss_given_alpha(x, y, fit.params["alpha"]), 5, 0.95)
    assert _rss_given_alpha(x, y, 10.0) < limit  # a step at the smallest width fits too
    lo, hi = fit.ci["alpha"]
    assert hi == np.inf and 0.5 < lo < fit.params["alpha"]
    assert _rss_given_alpha(x, y, lo) == pytest.approx(limit, rel=1e-6)
    assert np.isfinite(fit.ci["y_inf"]).all() and fit.ci["C"][1] == np.inf  # C ~ x_min**alpha
    for end in fit.ci["y_inf"]:
        assert _rss_given_y_inf(x, y, end) == pytest.approx(limit, rel=1e-3)
    assert "the 95% interval of C above, alpha above (" in fit.note


def test_an_exponent_on_the_top_of_its_range_is_that_bound_not_brents_last_try():
    """Bounded Brent never evaluates its bracket's ends: alpha came out 9.99999975 where the
    grid's 10 fits better, and the interval was built around 10 instead."""
    fit = fit_saturating(N[:6], np.array([5.0, 1, 1, 1, 1, 1]))
    assert fit.params["alpha"] == 10.0
    assert "alpha at its bound 10" in fit.note


@pytest.mark.parametrize("c", [3.0, -3.0])
def test_every_estimate_of_an_exact_curve_lies_in_its_interval(c):
    """An exact curve whose alpha (0.1) is a grid point: the estimates were Brent's
    0.10000000004, outside the interval [0.1, 0.1] built around the grid point."""
    fit = fit_saturating(N, c * N**-0.1 + 1.0)
    for name, (lo, hi) in fit.ci.items():
        assert lo <= fit.params[name] <= hi, name
    assert fit.params["alpha"] == pytest.approx(0.1, rel=1e-9)


def test_precise_data_get_the_whole_y_inf_interval_where_alpha_is_narrower_than_the_grid():
    """Deviations of 3e-6: alpha's interval (0.29994..0.30008) lies between two points of the
    profile grid (0.29% apart), so y_inf's was the union of its slices at alpha's two ends
    alone, where they are points: 2.7% narrower than the set the hand profile gives."""
    y = (50.0 * N**-0.3 + 1.5) * (1 + 3e-6 * np.array([1, -1, 0, 1, -1, 0, 1, -1]))
    fit = fit_saturating(N, y)
    a_lo, a_hi = fit.ci["alpha"]
    assert 0 < a_hi / a_lo - 1 < 1e-3
    limit = profile_threshold(_rss_given_alpha(N, y, fit.params["alpha"]), N.size, 0.95)
    lo, hi = fit.ci["y_inf"]
    for end in (lo, hi):
        assert _rss_given_y_inf(N, y, end) == pytest.approx(limit, rel=1e-3)
    step = 0.02 * (hi - lo)
    assert _rss_given_y_inf(N, y, lo + step) < limit and _rss_given_y_inf(N, y, hi - step) < limit
    assert _rss_given_y_inf(N, y, lo - step) > limit and _rss_given_y_inf(N, y, hi + step) > limit
