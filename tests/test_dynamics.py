import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from scalelens.analyses.dynamics import (
    PARAM_NAMES,
    dynamics_curve,
    fit_dynamics,
    fit_dynamics_layers,
    stationary_x,
)
from scalelens.errors import ScalelensError

# Pythia's checkpoints: step0, log-spaced 1..512, then every 1000 up to 143000.
STEPS = np.array([0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000)), dtype=float)
TRUE = {"A": 500.0, "lam": 0.3, "gamma": 1e-4, "t0": 1.5, "K": 100.0}


def _true_peak(p):
    return (stationary_x(p["lam"]) - p["t0"]) / p["gamma"]


def test_stationary_point_is_the_curve_maximum():
    for lam in (0.01, 0.3, 2.0, 50.0):
        x_star = stationary_x(lam)
        assert x_star * np.log(x_star) == pytest.approx(1 / lam, rel=1e-10)
        res = minimize_scalar(
            lambda x, lam=lam: -np.exp(-lam * x) * np.log(x),
            bounds=(1.0, 10 * x_star + 10),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert res.x == pytest.approx(x_star, rel=1e-5)


def test_exact_curve_recovers_parameters():
    fit = fit_dynamics(STEPS, dynamics_curve(STEPS, TRUE))
    for name in PARAM_NAMES:
        assert fit.params[name] == pytest.approx(TRUE[name], rel=1e-4)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.peak_step == pytest.approx(_true_peak(TRUE), rel=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_curve_recovers_parameters_within_standard_errors(seed):
    # Gaussian noise of 1% of the curve's range. Tolerance: 4 asymptotic standard
    # errors from the fit's own Jacobian (a 4-sigma band; over 40 seeds at 2% noise
    # the worst |error| / stderr was ~3.3). The stderr must also be small enough
    # for the check to mean something: the relative bounds below. A, lam and gamma
    # trade off against each other (the peak's place and height are what the data
    # pin down), so their standard errors are ~10x that of K.
    y0 = dynamics_curve(STEPS, TRUE)
    sigma = 0.01 * np.ptp(y0)
    y = y0 + np.random.default_rng(seed).normal(scale=sigma, size=y0.size)
    fit = fit_dynamics(STEPS, y, layer=3, size="70m")
    assert fit.r2 > 0.95
    for name in PARAM_NAMES:
        assert abs(fit.params[name] - TRUE[name]) < 4 * fit.stderr[name], name
    rel_se = {k: fit.stderr[k] / abs(TRUE[k]) for k in ("A", "lam", "gamma", "K")}
    assert rel_se["A"] < 0.2 and rel_se["lam"] < 0.2 and rel_se["gamma"] < 0.15
    assert rel_se["K"] < 0.01
    assert fit.peak_step == pytest.approx(_true_peak(TRUE), rel=0.03)
    fitted = dynamics_curve(STEPS, fit.params)
    assert np.sqrt(np.mean((fitted - y0) ** 2)) < 0.5 * sigma  # better than the noise
    assert (fit.layer, fit.size, fit.n_points) == (3, "70m", STEPS.size)


def test_early_peak_and_negative_amplitude_still_fit_the_curve():
    # Parameters are poorly determined when the feature lies before step 1000,
    # but the fitted curve must still describe the data.
    for true in (
        {"A": -30.0, "lam": 1.0, "gamma": 2e-3, "t0": 1.5, "K": 80.0},
        {"A": 80.0, "lam": 2.0, "gamma": 5e-3, "t0": 1.2, "K": 10.0},
    ):
        y0 = dynamics_curve(STEPS, true)
        y = y0 + np.random.default_rng(0).normal(scale=0.02 * np.ptp(y0), size=y0.size)
        fit = fit_dynamics(STEPS, y)
        assert fit.r2 > 0.95
        grid = np.linspace(0, STEPS.max(), 200_001)
        curve = dynamics_curve(grid, fit.params)
        assert dynamics_curve(fit.peak_step, fit.params) >= curve.max() - 1e-9 * abs(curve.max())
    assert fit.peak_step == pytest.approx(_true_peak(true), rel=0.15)


def test_negative_amplitude_peak_is_an_end_point():
    true = {"A": -30.0, "lam": 1.0, "gamma": 2e-3, "t0": 1.5, "K": 80.0}
    fit = fit_dynamics(STEPS, dynamics_curve(STEPS, true))
    assert fit.params["A"] < 0
    assert fit.peak_step == STEPS.max()  # the curve dips, then recovers towards K
    assert fit.stationary_step == pytest.approx(_true_peak(true), rel=1e-3)


def test_layers_nan_points_and_json():
    y = np.stack([dynamics_curve(STEPS, TRUE), dynamics_curve(STEPS, {**TRUE, "A": 900.0})], 1)
    y[5, 1] = np.nan
    fits = fit_dynamics_layers(STEPS, y, size="160m")
    assert [f.layer for f in fits] == [0, 1]
    assert fits[1].n_points == STEPS.size - 1
    assert fits[1].params["A"] == pytest.approx(900.0, rel=1e-3)
    json.dumps([f.to_dict() for f in fits], allow_nan=False)


def test_bad_inputs():
    with pytest.raises(ScalelensError):
        fit_dynamics(STEPS[:5], STEPS[:5])
    with pytest.raises(ScalelensError):
        fit_dynamics(STEPS, STEPS[:-1])
    with pytest.raises(ScalelensError):
        fit_dynamics(-STEPS, STEPS)
    with pytest.raises(ScalelensError):
        stationary_x(0.0)


def _ratio_rows(size, steps, values, layer):
    return [{"size": size, "step": str(int(t)), "analysis": "massive_activations", "metric": "ratio",
             "layer": str(layer), "head": "", "value": str(v)} for t, v in zip(steps, values, strict=True)]


def test_sweep_fits_each_layer_on_the_checkpoints_that_have_its_ratio():
    """A ratio missing at one checkpoint (non-finite, so not in metrics.csv) drops that point of
    that layer, not the size's every fit; a layer left with under 6 points has no fit."""
    from scalelens.sweeps.fits import dynamics_fits

    steps = np.array([0, 1, 8, 64, 512, 4000, 32000, 143000], dtype=float)
    y0, y1 = dynamics_curve(steps, TRUE), dynamics_curve(steps, {**TRUE, "A": 900.0})
    gap = np.arange(steps.size) != 3
    rows = _ratio_rows("1b", steps, y0, 0) + _ratio_rows("1b", steps[gap], y1[gap], 1)
    rows += _ratio_rows("1b", steps[:5], y0[:5], 2)  # 5 checkpoints: too few
    fits = dynamics_fits(rows)
    assert [(f.size, f.layer, f.n_points) for f in fits] == [("1b", 0, 8), ("1b", 1, 7)]
    assert fits[1].params == pytest.approx(fit_dynamics(steps[gap], y1[gap]).params)
    assert fits[1].r2 > 0.999


def _curve_by_hand(t, p):
    x = p["gamma"] * t + p["t0"]
    return p["A"] * np.exp(-p["lam"] * x) * np.log(x) + p["K"]


def test_cost_and_standard_errors_follow_their_definitions_on_few_points():
    # 12 checkpoints: the residual degrees of freedom are n - 5 = 7, so a variance taken
    # over n instead would shrink every standard error by sqrt(7 / 12).
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000], dtype=float)
    true = {"A": 50.0, "lam": 0.5, "gamma": 0.01, "t0": 1.5, "K": 10.0}
    y = _curve_by_hand(steps, true) + np.random.default_rng(2).normal(scale=0.3, size=steps.size)
    fit = fit_dynamics(steps, y)
    resid = _curve_by_hand(steps, fit.params) - y
    assert fit.cost == pytest.approx(0.5 * float(resid @ resid), rel=1e-9)
    # Asymptotic covariance s^2 (J^T J)^-1 with s^2 = RSS / (n - 5), J by central differences.
    cols = []
    for name in PARAM_NAMES:
        h = 1e-6 * max(abs(fit.params[name]), 1e-8)
        up, down = dict(fit.params), dict(fit.params)
        up[name] += h
        down[name] -= h
        cols.append((_curve_by_hand(steps, up) - _curve_by_hand(steps, down)) / (2 * h))
    jac = np.stack(cols, axis=1)
    cov = float(resid @ resid) / (steps.size - 5) * np.linalg.inv(jac.T @ jac)
    for i, name in enumerate(PARAM_NAMES):
        assert fit.stderr[name] == pytest.approx(np.sqrt(cov[i, i]), rel=1e-3), name


def test_peak_after_the_curve_has_peaked_is_the_first_observed_step():
    # The curve peaks near step 85; observed from step 200 on it only falls, so the
    # maximum of the fitted curve over the observed range is at the first step.
    true = {"A": 50.0, "lam": 0.5, "gamma": 0.01, "t0": 1.5, "K": 10.0}
    steps = np.linspace(200.0, 2000.0, 12)
    fit = fit_dynamics(steps, _curve_by_hand(steps, true))
    grid = np.linspace(steps[0], steps[-1], 10_001)
    assert grid[np.argmax(_curve_by_hand(grid, fit.params))] == steps[0]
    assert fit.peak_step == steps[0]


def test_a_dip_is_found_when_the_largest_deviation_is_the_first_step():
    # A layer's massive-activation ratio in a micro-suite sweep (size 50k, layer 0): high
    # at step 0, a dip to 4.5 by step 8, back up to ~4.9. The largest deviation from the
    # final value is step 0's, above it; every start used to be a peak there (A > 0), so
    # the fit ended in a spike at step 0.05 with R² 0.7285, while the dip (A < 0, t0 on
    # its bound) has R² 0.7859 (an independent 300-start least-squares search agrees).
    steps = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0])
    ratio = np.array([5.37568178, 5.05892284, 4.60390113, 4.53160079, 4.5011868, 5.0027252, 4.76763489])
    fit = fit_dynamics(steps, ratio)
    assert fit.r2 == pytest.approx(0.78585, abs=1e-4)
    assert fit.params["A"] < 0
    resid = dynamics_curve(steps, fit.params) - ratio
    assert 0.5 * float(resid @ resid) == pytest.approx(fit.cost, rel=1e-12)
