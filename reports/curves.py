"""Evaluate fitted curves and their confidence bands on a grid, for plotting."""

from __future__ import annotations

import numpy as np

from .runfiles import ScalingFit

# The parameter whose CI gives the band, per fit form.
EXPONENT = {"power_law": "b", "saturating": "alpha"}


def power_law(n: np.ndarray, a: float, b: float) -> np.ndarray:
    """Return y = a * N^b."""
    return a * np.power(n, b)


def saturating(n: np.ndarray, C: float, alpha: float, y_inf: float) -> np.ndarray:  # noqa: N803
    """Return y = C * N^-alpha + y_inf."""
    return C * np.power(n, -alpha) + y_inf


def dynamics(
    t: np.ndarray,
    A: float,
    lambda_: float,
    gamma: float,
    t0: float,
    K: float,  # noqa: N803
) -> np.ndarray:
    """Return f(t) = A exp(-lambda x) log(x) + K with x = gamma t + t0 (NaN where x <= 0)."""
    x = gamma * np.asarray(t, dtype=float) + t0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = A * np.exp(-lambda_ * x) * np.log(x) + K
    return np.where(x > 0, out, np.nan)


def dynamics_from_params(t: np.ndarray, params: dict[str, float]) -> np.ndarray | None:
    """Evaluate a dynamics fit from its fits.json ``params``; None if a parameter is missing.

    The decay may be named ``lambda`` or ``lam`` (the name `scalelens.analyses.dynamics` uses).
    """
    lam = params.get("lambda", params.get("lam"))
    if lam is None or not {"A", "gamma", "t0", "K"} <= params.keys():
        return None
    return dynamics(t, params["A"], lam, params["gamma"], params["t0"], params["K"])


def evaluate(fit: ScalingFit, n: np.ndarray) -> np.ndarray | None:
    """Evaluate a scaling fit at parameter counts ``n``.

    Args:
        fit: The fit.
        n: Parameter counts.

    Returns:
        The fitted values, or None for an unknown form or missing parameters.
    """
    p = fit.params
    try:
        if fit.form == "power_law":
            return power_law(n, p["a"], p["b"])
        if fit.form == "saturating":
            return saturating(n, p["C"], p["alpha"], p["y_inf"])
    except KeyError:
        return None
    return None


def _pivot(fit: ScalingFit, n: np.ndarray) -> float:
    """Return the geometric centre of the fitted data, where the band is narrowest."""
    xs = np.array([v for v in fit.x if v > 0]) if fit.x else n
    return float(np.exp(np.mean(np.log(xs))))


def exponent_band(fit: ScalingFit, n: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Band swept out by the exponent's CI, pivoting at the data's geometric centre.

    The fitted curve is held fixed at the pivot N_c and only the exponent moves
    within its CI (y_inf held fixed for the saturating form), so the band shows how
    far the extrapolation is constrained by the exponent alone. An open end of a
    saturating exponent's CI (alpha up to inf) makes the band infinite below the
    pivot on the curve's side; the plot lets it run off the axes.

    Args:
        fit: The fit; needs a CI for ``b`` (power law) or ``alpha`` (saturating).
        n: Parameter counts to evaluate at.

    Returns:
        ``(lower, upper)`` arrays, or None when the fit has no usable exponent CI.
    """
    name = EXPONENT.get(fit.form)
    centre = evaluate(fit, n)
    if name is None or name not in fit.ci or centre is None:
        return None
    n_c = _pivot(fit, n)
    p = fit.params
    if fit.form == "power_law":
        y_c = p["a"] * n_c ** p["b"]
        curves = [y_c * (n / n_c) ** e for e in fit.ci[name]]
    else:
        amp = p["C"] * n_c ** -p["alpha"]  # 0 for a flat fit: no 0 * inf where alpha's CI is open
        curves = [(amp * (n / n_c) ** -e if amp else 0.0 * n) + p["y_inf"] for e in fit.ci[name]]
    stack = np.vstack(curves + [centre])
    return stack.min(axis=0), stack.max(axis=0)
