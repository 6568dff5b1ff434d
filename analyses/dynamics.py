"""Training dynamics of a per-layer metric (massive-activation dynamics paper, 2025).

Model, for training step ``t`` (one curve per layer)::

    f(t) = A * exp(-lam * x) * log(x) + K,   x = gamma * t + t0

with amplitude ``A`` (free sign), decay ``lam > 0``, time scale ``gamma > 0``,
offset ``t0 >= 1`` and asymptote ``K``. Requiring ``t0 >= 1`` keeps ``x >= 1``
for every ``t >= 0``, so ``log(x) >= 0`` and the curve starts at or above ``K``
when ``A > 0`` instead of crossing a log singularity.

Fit: bounded least squares (``scipy.optimize.least_squares``, trust-region
reflective) on steps rescaled to ``[0, 1]`` and values standardised, started
from several data-driven guesses; the lowest-cost fit wins. Each start picks a
decay ``lam`` from a grid, puts the curve's stationary point on the step where
the data lie furthest above their final value (a peak, ``A > 0``) or on the one
where they lie furthest below it (a dip, ``A < 0``), and sets ``A`` so the
curve reaches that deviation there.

Stationary point: ``d/dx [exp(-lam x) log x] = exp(-lam x) (1/x - lam log x)``
vanishes where ``x log x = 1/lam``, i.e. ``x* = exp(W(1/lam))`` with ``W`` the
principal Lambert W; it is the maximum of ``f`` when ``A > 0`` (a minimum when
``A < 0``). ``peak_step`` is the argmax of the fitted curve over the observed
step range: ``(x* - t0) / gamma`` when ``A > 0`` and that lies in range,
otherwise the better end point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.special import lambertw

from scalelens.analyses._common import as_array, jsonable
from scalelens.errors import ScalelensError

PARAM_NAMES = ("A", "lam", "gamma", "t0", "K")
_LAM_GRID = (0.05, 0.2, 1.0, 5.0)
# Relative cost change at which a start stops. scipy's 1e-8 let starts crawl along the flat
# valley of this curve for thousands of steps while the cost moved in its 4th digit: 1e-6
# gives the same R² (within 3e-7) and peak steps on a full synthetic Pythia sweep, 18x faster
# (benchmarks/RESULTS.md, "post-sweep pipeline").
FTOL = 1e-6
_MIN_POINTS = 6


@dataclass(frozen=True)
class DynamicsFit:
    """One layer's fit of ``f(t) = A exp(-lam x) log x + K``, ``x = gamma t + t0``.

    Attributes:
        params: ``{"A", "lam", "gamma", "t0", "K"}`` in the original step units.
        stderr: Asymptotic standard errors of ``params`` from the Jacobian at
            the solution, ``sqrt(diag(s^2 (J^T J)^+))`` with
            ``s^2 = RSS / (n - 5)``; large values mean a parameter is poorly
            determined (e.g. a peak before the first informative checkpoint).
        r2: Coefficient of determination of the fit on the data.
        peak_step: Step of the fitted curve's maximum within the observed range.
        stationary_step: Step of the analytic stationary point ``x*`` (may lie
            outside the observed range or below 0).
        cost: Half the sum of squared residuals, original units.
        n_points: Number of (step, value) points fitted.
        layer: Layer index, when the caller gives one.
        size: Model size label (e.g. ``"410m"``), when the caller gives one.
    """

    params: dict[str, float]
    stderr: dict[str, float]
    r2: float
    peak_step: float
    stationary_step: float
    cost: float
    n_points: int
    layer: int | None = None
    size: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as JSON-serialisable data."""
        out: dict[str, Any] = jsonable(self)
        return out


def dynamics_curve(t: Any, params: dict[str, float]) -> np.ndarray:
    """Evaluate ``A exp(-lam x) log(x) + K`` with ``x = gamma t + t0``.

    Args:
        t: Training steps, any shape.
        params: Mapping with keys ``A, lam, gamma, t0, K``.

    Returns:
        Float64 array of the same shape as ``t``.
    """
    x = params["gamma"] * np.asarray(t, dtype=np.float64) + params["t0"]
    return np.asarray(params["A"] * np.exp(-params["lam"] * x) * np.log(x) + params["K"])


def stationary_x(lam: float) -> float:
    """The ``x > 1`` solving ``x log x = 1/lam``: ``exp(W(1/lam))``.

    Args:
        lam: Decay rate, > 0.

    Returns:
        The stationary point of ``exp(-lam x) log x``.
    """
    if lam <= 0:
        raise ScalelensError(f"decay lam must be > 0, got {lam}")
    return float(np.exp(lambertw(1.0 / lam).real))


def _jacobian(t: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """Derivatives of ``f`` with respect to ``A, lam, gamma, t0, K``, shape ``(n, 5)``."""
    x = p["gamma"] * t + p["t0"]
    decay = np.exp(-p["lam"] * x)
    slope = p["A"] * decay * (1.0 / x - p["lam"] * np.log(x))
    cols = [decay * np.log(x), -p["A"] * x * decay * np.log(x), slope * t, slope, np.ones_like(t)]
    return np.stack(cols, axis=1)


def _stderr(t: np.ndarray, resid: np.ndarray, p: dict[str, float]) -> dict[str, float]:
    jac = _jacobian(t, p)
    scale = np.linalg.norm(jac, axis=0)
    scale[scale == 0] = 1.0
    jac_s = jac / scale  # equilibrate columns before the pseudo-inverse
    dof = max(t.size - len(PARAM_NAMES), 1)
    cov_s = float(resid @ resid) / dof * np.linalg.pinv(jac_s.T @ jac_s, rcond=1e-12)
    se = np.sqrt(np.clip(np.diag(cov_s), 0.0, None)) / scale
    return {name: float(v) for name, v in zip(PARAM_NAMES, se, strict=True)}


def _residuals(theta: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    a, lam, gamma, t0, k = theta
    x = gamma * s + t0
    return np.asarray(a * np.exp(-lam * x) * np.log(x) + k - z)


def _residual_jacobian(theta: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Analytic Jacobian of :func:`_residuals` (finite differences cost 5 more evaluations each)."""
    return _jacobian(s, dict(zip(("A", "lam", "gamma", "t0", "K"), theta, strict=True)))


def _starts(s: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """Initial guesses in scaled units: per extreme of the data, one per decay on the grid.

    The extremes are the steps where the data lie furthest above and furthest below their
    final value: a curve may peak (``A > 0``) or dip (``A < 0``), and the larger deviation
    need not be the feature (a high step-0 value beside a dip), so each sign gets its starts.
    """
    k0 = float(np.median(z[-max(2, z.size // 10) :]))
    dev = z - k0
    extremes = dict.fromkeys(int(i) for i in (np.argmax(dev), np.argmin(dev)) if dev[i] != 0)
    out = []
    for i in extremes or (int(np.argmax(np.abs(dev))),):
        out += _starts_at(float(s[i]), float(dev[i]) or 1.0, k0)
    return out


def _starts_at(s_i: float, dev: float, k0: float) -> list[np.ndarray]:
    """Starts whose stationary point lies at step ``s_i`` with deviation ``dev`` from ``k0``."""
    s_peak = max(s_i, 1e-3)
    out = []
    for lam in _LAM_GRID:
        t0 = 1.0
        x_star = max(stationary_x(lam), t0 * (1 + 1e-6))
        gamma = (x_star - t0) / s_peak
        amp = dev / (np.exp(-lam * x_star) * np.log(x_star))
        out.append(np.array([amp, lam, gamma, t0, k0]))
    return out


def _fit_scaled(s: np.ndarray, z: np.ndarray) -> np.ndarray:
    lower = np.array([-np.inf, 1e-9, 1e-9, 1.0, -np.inf])
    upper = np.full(5, np.inf)
    best = None
    for theta0 in _starts(s, z):
        theta0 = np.clip(theta0, lower + 1e-12, upper)
        res = least_squares(
            _residuals, theta0, jac=_residual_jacobian, bounds=(lower, upper), args=(s, z), x_scale="jac",
            ftol=FTOL, max_nfev=4000
        )
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return np.asarray(best.x)


def _peak(params: dict[str, float], t_min: float, t_max: float) -> tuple[float, float]:
    t_star = (stationary_x(params["lam"]) - params["t0"]) / params["gamma"]
    cands = [t_min, t_max]
    if params["A"] > 0 and t_min <= t_star <= t_max:
        cands.append(t_star)
    values = dynamics_curve(np.array(cands), params)
    return float(cands[int(np.argmax(values))]), float(t_star)


def _check_curve(steps: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    t = as_array("steps", steps, 1, "fiu").astype(np.float64)
    y = as_array("values", values, 1, "fiu").astype(np.float64)
    if t.shape != y.shape:
        raise ScalelensError(f"steps {t.shape} and values {y.shape} must have the same length")
    keep = np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < _MIN_POINTS:
        raise ScalelensError(f"need at least {_MIN_POINTS} finite points to fit 5 parameters")
    if np.any(t < 0) or np.unique(t).size != t.size:
        raise ScalelensError("steps must be distinct and >= 0")
    order = np.argsort(t)
    return t[order], y[order]


def fit_dynamics(
    steps: Any, values: Any, *, layer: int | None = None, size: str | None = None
) -> DynamicsFit:
    """Fit ``f(t) = A exp(-lam (gamma t + t0)) log(gamma t + t0) + K`` to one curve.

    Args:
        steps: ``(checkpoint,)`` training steps, distinct, >= 0.
        values: ``(checkpoint,)`` metric at each step (e.g. a layer's
            massive-activation ratio); NaN points are dropped.
        layer: Layer index recorded in the result.
        size: Model size label recorded in the result.

    Returns:
        A :class:`DynamicsFit` with parameters in step units.

    Raises:
        ScalelensError: With fewer than 6 finite points or invalid steps.
    """
    t, y = _check_curve(steps, values)
    t_scale = float(t.max()) or 1.0
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    a, lam, gamma, t0, k = _fit_scaled(t / t_scale, (y - y_mean) / y_std)
    params = {
        "A": float(a * y_std),
        "lam": float(lam),
        "gamma": float(gamma / t_scale),
        "t0": float(t0),
        "K": float(k * y_std + y_mean),
    }
    resid = dynamics_curve(t, params) - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    peak, stationary = _peak(params, float(t.min()), float(t.max()))
    return DynamicsFit(
        params=params,
        stderr=_stderr(t, resid, params),
        r2=r2,
        peak_step=peak,
        stationary_step=stationary,
        cost=0.5 * float(resid @ resid),
        n_points=int(t.size),
        layer=layer,
        size=size,
    )


def fit_dynamics_layers(steps: Any, values: Any, *, size: str | None = None) -> list[DynamicsFit]:
    """Fit every layer's curve.

    Args:
        steps: ``(checkpoint,)`` training steps.
        values: ``(checkpoint, layer)`` metric per step and layer.
        size: Model size label recorded in each result.

    Returns:
        One :class:`DynamicsFit` per layer, in layer order.
    """
    y = as_array("values", values, 2, "fiu")
    return [fit_dynamics(steps, y[:, i], layer=i, size=size) for i in range(y.shape[1])]
