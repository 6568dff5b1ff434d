"""Scaling fits of a metric against parameter count (or training step).

Array contract: ``x`` and ``y`` are 1-D, same length, one point per model
(size or checkpoint); several points may share an ``x`` (e.g. seeds).

Forms:
    * ``power_law``: ``y = a * x**b``, fitted by OLS of ``log y`` on ``log x``
      (statsmodels). ``r2`` is the OLS R^2 in log space. Needs ``x > 0``,
      ``y > 0`` and at least 3 distinct ``x``; otherwise the fit is skipped:
      ``params`` and ``ci`` are empty and ``note`` says why (a report can show
      the reason instead of failing the whole sweep).
    * ``saturating``: ``y = C * x**(-alpha) + y_inf``, least squares with
      ``1e-4 <= alpha <= 10`` and ``C``, ``y_inf`` free (so both decaying and
      rising curves fit). Given ``alpha`` the model is linear in ``C, y_inf``,
      so the fit minimises the profile residual sum of squares over ``alpha``
      alone (variable projection: a log grid, then bounded Brent search), on
      ``x`` rescaled by its geometric mean. ``r2`` is in linear space. Needs
      ``x > 0`` and at least 4 distinct ``x``.

Confidence intervals (``ci_method`` says which):
    * ``power_law``: the OLS t interval of the log-log regression at level
      ``ci_level`` (statsmodels ``conf_int``; ``a``'s is ``exp`` of the
      intercept's), with the standard errors in ``se`` (``b`` and ``ln_a``).
      A pairs bootstrap undercovers badly with the few sizes a model family
      has: over 150 seeded draws of 4 Pythia sizes with lognormal noise its
      nominal 95% interval for ``b`` held the true exponent 54% of the time
      (the t interval 95%); 87% with 5 sizes, 89% with all 8.
    * ``saturating``: profile-likelihood intervals (``profile_likelihood``;
      Bates & Watts 1988, ch. 6): a value of one parameter is inside when
      the residual sum of squares minimised over the other two with it held
      fixed is at most ``RSS_min * (1 + F / (n - 3))``, ``F`` the
      ``ci_level`` quantile of ``F(1, n - 3)`` (:func:`profile_threshold`).
      ``alpha``'s profile is the variable-projection one the fit minimises;
      given ``alpha`` the RSS is quadratic in ``C`` and in ``y_inf``, so
      their intervals are unions of closed-form slices over ``alpha``.
      Few sizes often leave an interval open on a side: ``alpha``'s lower
      end is then 0 (the set reaches the form's edge, where the curve is
      linear in ``log x``), its upper end ``inf``; ``C`` and ``y_inf`` get
      ``-inf``/``inf``; ``note`` names the open ends (JSON writes them as
      null). In simulation (``benchmarks/fit_coverage.py``, 500 draws per
      cell, 4, 5 and 8 Pythia sizes) their 95% intervals held the true
      ``alpha`` and ``y_inf`` 94.8-96.2% of the time with Gaussian noise,
      92.4-96.0% with heavy-tailed noise; the pairs bootstrap used before
      held them 69-71% of the time at 5 sizes and gave none at 4.

Leave-one-out extrapolation: refit without the points at the largest ``x``
and report ``|prediction - observed| / |observed|`` there (the mean observed
value when several points share the largest ``x``); None when too few points
remain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import statsmodels.api as sm
from scipy import stats
from scipy.optimize import brentq, least_squares, minimize_scalar

from scalelens.analyses._common import as_array, jsonable
from scalelens.analyses.dynamics import DynamicsFit
from scalelens.errors import ScalelensError

Form = Literal["power_law", "saturating"]
_MIN_DISTINCT = {"power_law": 3, "saturating": 4}
_ALPHA_MAX = 10.0
_ALPHA_GRID = np.geomspace(1e-4, _ALPHA_MAX, 241)


@dataclass(frozen=True)
class FitResult:
    """One scaling fit of a metric against ``x``.

    Attributes:
        metric: Name of the fitted metric.
        x_name: Name of the regressor (``n_params``, ``step``, ``width``, ...).
        form: ``"power_law"`` (params ``a, b``) or ``"saturating"`` (params
            ``C, alpha, y_inf``).
        params: Fitted parameters; empty when the fit was skipped.
        ci: Parameter name -> ``[lo, hi]`` confidence interval at the fit's
            level (see ``ci_method``); a saturating fit's ends may be
            ``-inf``/``inf`` (``alpha``'s lower end 0) where the data do not
            bound them, which ``note`` then says.
        r2: R^2 (log space for power_law, linear for saturating), None if skipped.
        loo_rel_error: Relative error predicting the largest ``x`` from the
            rest, or None.
        n_points: Number of points.
        x: The ``x`` values, ascending.
        y: The ``y`` values, in the order of ``x``.
        note: Why the fit was skipped, or a warning (a saturating exponent on
            a bound of its range, open-ended intervals); "" otherwise.
        se: Standard errors of the OLS coefficients (``b``, ``ln_a``) of a
            power law; empty for a saturating fit or a skipped one.
        ci_method: ``"ols_t"`` (power law), ``"profile_likelihood"``
            (saturating), or ``""`` when there is no interval.
    """

    metric: str
    x_name: str
    form: Form
    params: dict[str, float]
    ci: dict[str, list[float]]
    r2: float | None
    loo_rel_error: float | None
    n_points: int
    x: list[float]
    y: list[float]
    note: str
    se: dict[str, float] = field(default_factory=dict)
    ci_method: str = ""

    @property
    def skipped(self) -> bool:
        """True when no fit was made (see ``note``)."""
        return not self.params

    def predict(self, x: Any) -> np.ndarray:
        """Evaluate the fitted curve at ``x``."""
        if self.skipped:
            raise ScalelensError(f"fit of {self.metric!r} was skipped: {self.note}")
        return _curve(self.form)(np.asarray(x, dtype=np.float64), self.params)

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as JSON-serialisable data (NaN becomes None)."""
        out: dict[str, Any] = jsonable(self)
        return out


def power_law(x: np.ndarray, p: Mapping[str, float]) -> np.ndarray:
    """``a * x**b``."""
    return np.asarray(p["a"] * np.power(x, p["b"]))


def saturating(x: np.ndarray, p: Mapping[str, float]) -> np.ndarray:
    """``C * x**(-alpha) + y_inf``."""
    return np.asarray(p["C"] * np.power(x, -p["alpha"]) + p["y_inf"])


def _curve(form: Form) -> Callable[[np.ndarray, Mapping[str, float]], np.ndarray]:
    return power_law if form == "power_law" else saturating


def _points(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float64 points, validated and sorted by x (then y).

    Sorted, so that a fit does not depend on the order the points come in (sizes listed
    in another order), down to the last bit of its sums.
    """
    xa = as_array("x", x, 1, "fiu").astype(np.float64)
    ya = as_array("y", y, 1, "fiu").astype(np.float64)
    if xa.shape != ya.shape:
        raise ScalelensError(f"x {xa.shape} and y {ya.shape} must have the same length")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ScalelensError("x and y must be finite; drop missing points before fitting")
    order = np.lexsort((ya, xa))
    return xa[order], ya[order]


def _power_ols(x: np.ndarray, y: np.ndarray) -> Any:
    """The statsmodels OLS of ``log y`` on ``[1, log x]``."""
    return sm.OLS(np.log(y), sm.add_constant(np.log(x))).fit()


def _fit_power(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float]:
    res = _power_ols(x, y)
    intercept, slope = (float(v) for v in res.params)
    tss = float(res.centered_tss)
    r2 = 1.0 - float(res.ssr) / tss if tss > 0 else float("nan")  # NaN for constant y
    return {"a": float(np.exp(intercept)), "b": slope}, r2


def _power_ci(x: np.ndarray, y: np.ndarray, level: float) -> tuple[dict[str, list[float]], dict[str, float]]:
    """OLS t intervals of ``a`` (exp of the intercept's) and ``b``, and the standard errors."""
    res = _power_ols(x, y)
    (lo_a, hi_a), (lo_b, hi_b) = np.asarray(res.conf_int(alpha=1.0 - level))
    se_ln_a, se_b = (float(v) for v in res.bse)
    ci = {"a": [float(np.exp(lo_a)), float(np.exp(hi_a))], "b": [float(lo_b), float(hi_b)]}
    return ci, {"b": se_b, "ln_a": se_ln_a}


def _linear_given_alpha(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``C, y_inf`` of ``y ~ C z + y_inf`` along the last axis."""
    zc = z - z.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    var = np.einsum("...i,...i->...", zc, zc)
    c = np.einsum("...i,...i->...", zc, yc) / np.where(var > 0, var, np.inf)
    return c, y.mean(axis=-1) - c * z.mean(axis=-1)


def _profile_rss(alpha: np.ndarray, logu: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residual sum of squares minimised over ``C, y_inf`` for each ``alpha``."""
    z = np.exp(-np.multiply.outer(alpha, logu))
    c, y_inf = _linear_given_alpha(z, y)
    resid = c[..., None] * z + y_inf[..., None] - y
    return np.asarray(np.einsum("...i,...i->...", resid, resid))


def _fit_saturating(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float]:
    """Variable projection: ``C, y_inf`` are linear given ``alpha``; search ``alpha``.

    The profile RSS is scanned on a log grid of ``alpha`` in ``[1e-4, 10]`` and
    refined by bounded Brent search between the best grid point's neighbours.
    """
    x_ref = float(np.exp(np.mean(np.log(x))))
    logu = np.log(x / x_ref)
    grid_rss = _profile_rss(_ALPHA_GRID, logu, y)
    best = int(np.argmin(grid_rss))
    lo, hi = _ALPHA_GRID[max(best - 1, 0)], _ALPHA_GRID[min(best + 1, _ALPHA_GRID.size - 1)]
    res = minimize_scalar(
        lambda a: float(_profile_rss(np.array(a), logu, y)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-10 * hi},
    )
    # bounded Brent never tries the ends of its bracket: keep the grid point when it is as good
    # (an exponent on a bound of its range is that bound, as its profile interval is built around)
    alpha = float(res.x) if float(res.fun) < float(grid_rss[best]) else float(_ALPHA_GRID[best])
    c, y_inf = (float(v) for v in _linear_given_alpha(np.exp(-alpha * logu), y))
    params = {"C": c * x_ref**alpha, "alpha": alpha, "y_inf": y_inf}
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    rss = float(_profile_rss(np.array(alpha), logu, y))
    r2 = 1.0 - rss / ss_tot if ss_tot > 0 else float("nan")
    return params, r2


def fit_saturating_reference(x: Any, y: Any) -> dict[str, float]:
    """Reference saturating fit: all three parameters by bounded least squares.

    Slower than the variable-projection fit used by :func:`fit_scaling` and
    kept to cross-check it: ``scipy.optimize.least_squares`` over
    ``(C, alpha, y_inf)`` with the same bounds on ``alpha``, started from
    log-log fits of ``|y - y_inf|`` for several asymptote guesses.

    Args:
        x: ``(point,)`` positive regressor.
        y: ``(point,)`` metric.

    Returns:
        ``{"C", "alpha", "y_inf"}``.
    """
    xa, ya = _points(x, y)
    x_ref = float(np.exp(np.mean(np.log(xa))))
    u = xa / x_ref
    lower, upper = [-np.inf, _ALPHA_GRID[0], -np.inf], [np.inf, _ALPHA_MAX, np.inf]
    best = None
    for theta0 in _sat_starts(u, ya):
        res = least_squares(_sat_residuals, theta0, bounds=(lower, upper), args=(u, ya))
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    c, alpha, y_inf = (float(v) for v in best.x)
    return {"C": c * x_ref**alpha, "alpha": alpha, "y_inf": y_inf}


def _sat_residuals(theta: np.ndarray, u: np.ndarray, y: np.ndarray) -> np.ndarray:
    c, alpha, y_inf = theta
    return np.asarray(c * np.power(u, -alpha) + y_inf - y)


def _sat_starts(u: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Starts from log-log OLS of ``|y - y_inf|`` for several asymptote guesses."""
    span = float(np.ptp(y)) or max(abs(float(y.mean())), 1.0)
    rising = bool(np.ptp(y) > 0 and np.corrcoef(np.log(u), y)[0, 1] > 0)
    sign = -1.0 if rising else 1.0
    edge = float(y.max() if rising else y.min())
    starts = []
    for k in (0.01, 0.1, 0.5, 2.0, 10.0):
        y_inf = edge - sign * k * span
        slope, intercept = np.polyfit(np.log(u), np.log(sign * (y - y_inf)), 1)
        alpha = float(np.clip(-slope, 1e-3, _ALPHA_MAX))
        starts.append(np.array([sign * float(np.exp(intercept)), alpha, y_inf]))
    return starts


def _fitter(form: Form) -> Callable[[np.ndarray, np.ndarray], tuple[dict[str, float], float]]:
    return _fit_power if form == "power_law" else _fit_saturating


_PROFILE_GRID = np.geomspace(_ALPHA_GRID[0], _ALPHA_MAX, 4001)
_N_SAT_PARAMS = 3


def profile_threshold(rss_min: float, n: int, level: float, n_params: int = _N_SAT_PARAMS) -> float:
    """The profile-likelihood cut-off of nonlinear least squares (Bates & Watts 1988, 6.1).

    A parameter value lies in the ``level`` interval when the residual sum of
    squares minimised over the other parameters with it held fixed is at most
    ``rss_min * (1 + F / (n - n_params))``, ``F`` the ``level`` quantile of
    ``F(1, n - n_params)`` (the square of the two-sided ``t(n - n_params)``
    quantile, so the interval is the profile-t one).

    Args:
        rss_min: Residual sum of squares of the best fit.
        n: Number of points.
        level: Confidence level, in (0, 1).
        n_params: Parameters of the model (3 for the saturating form).

    Returns:
        The largest profile RSS inside the interval.
    """
    dof = n - n_params
    return float(rss_min * (1.0 + stats.f.ppf(level, 1, dof) / dof))


def _edge(f: Callable[[float], float], outside: float, inside: float) -> float:
    """The root of ``f`` between a point where it is > 0 and one where it is <= 0."""
    return float(brentq(f, outside, inside, xtol=1e-12 * max(outside, inside), rtol=1e-12))


def _alpha_interval(logu: np.ndarray, y: np.ndarray, alpha_hat: float, threshold: float
                    ) -> tuple[float, float]:
    """``{alpha: profile RSS <= threshold}`` (its hull); 0 or inf where it runs off the range."""
    rss = _profile_rss(_ALPHA_GRID, logu, y)
    inside = _ALPHA_GRID[rss <= threshold]
    lo, hi = min(inside.min(initial=alpha_hat), alpha_hat), max(inside.max(initial=alpha_hat), alpha_hat)

    def excess(a: float) -> float:
        return float(_profile_rss(np.array(a), logu, y)) - threshold

    if lo <= _ALPHA_GRID[0]:
        lo = 0.0
    else:
        lo = _edge(excess, float(_ALPHA_GRID[_ALPHA_GRID < lo].max()), lo)
    if hi >= _ALPHA_MAX:
        hi = float("inf")
    else:
        hi = _edge(excess, float(_ALPHA_GRID[_ALPHA_GRID > hi].min()), hi)
    return lo, hi


def _slices(z: np.ndarray, y: np.ndarray, threshold: float, which: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per ``alpha`` (rows of ``z``): the interval of ``c`` or ``y_inf`` with RSS <= threshold.

    Given ``alpha`` the RSS is a quadratic in ``c`` (``y_inf`` minimised out) or in
    ``y_inf`` (``c`` minimised out); its sublevel set is ``centre +- half``.
    """
    ones = np.ones_like(z)
    if which == "y_inf":  # project 1 and y off z
        zz = np.einsum("ai,ai->a", z, z)[:, None]
        a = ones - z * (np.einsum("ai,ai->a", z, ones)[:, None] / zz)
        b = y - z * (np.einsum("ai,i->a", z, y)[:, None] / zz)
    else:  # project z and y off 1
        a = z - z.mean(axis=1, keepdims=True)
        b = np.broadcast_to(y - y.mean(), z.shape)
    aa = np.einsum("ai,ai->a", a, a)
    ab = np.einsum("ai,ai->a", a, b)
    centre = ab / aa
    rss = np.einsum("ai,ai->a", b, b) - ab * centre
    half = np.sqrt(np.maximum(threshold - rss, 0.0) / aa)
    return centre - half, centre + half


def _scaled_slices(logu: np.ndarray, y: np.ndarray, alphas: np.ndarray, threshold: float,
                   which: str, x_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_slices` at ``alphas``, in reported units (``C = c * x_ref**alpha``)."""
    lo, hi = _slices(np.exp(-np.multiply.outer(alphas, logu)), y, threshold, which)
    scale = x_ref**alphas if which == "C" else 1.0
    return lo * scale, hi * scale


def _diverges(near: float, far: float, sign: float) -> bool:
    """Whether a slice end runs off to ``sign * inf`` as alpha leaves its range.

    ``near`` is its value at the range's edge, ``far`` beyond it (a tenth of the
    lower edge, twice the upper): it must move outwards and at least double.
    """
    return sign * far > sign * near and abs(far) > 2.0 * abs(near) and sign * far > 0


def _polish(f: Callable[[float], float], alphas: np.ndarray, values: np.ndarray, sign: float) -> float:
    """The extreme (``sign`` -1: least, 1: greatest) of ``f`` over alpha.

    From its ``values`` on ``alphas``, refined by bounded Brent search between the
    best one's neighbours.
    """
    best = int(np.argmax(sign * values))
    if alphas.size < 3:
        return float(values[best])
    lo, hi = alphas[max(best - 1, 0)], alphas[min(best + 1, alphas.size - 1)]
    res = minimize_scalar(lambda a: -sign * f(a), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12 * hi})
    return float(max(sign * values[best], -res.fun) * sign)


def _linear_interval(logu: np.ndarray, y: np.ndarray, alphas: np.ndarray, threshold: float,
                     which: str, x_ref: float) -> list[float]:
    """The profile interval of ``y_inf`` or ``C``: the union of its per-``alpha`` slices.

    ``alphas`` lie inside the alpha interval (ascending). Where that interval
    runs to 0 the slices grow like ``1/alpha`` (``C`` and ``y_inf`` trade off
    along a curve linear in ``log x``), and where it runs to infinity ``C``
    grows like ``x_min**alpha``: an end that still moves outwards beyond the
    range of ``alpha`` is infinite.
    """
    lo, hi = _scaled_slices(logu, y, alphas, threshold, which, x_ref)

    def at(alpha: float) -> tuple[float, float]:
        low, high = _scaled_slices(logu, y, np.array([alpha]), threshold, which, x_ref)
        return float(low[0]), float(high[0])

    out = [_polish(lambda a: at(a)[0], alphas, lo, -1.0), _polish(lambda a: at(a)[1], alphas, hi, 1.0)]
    edges = [(alphas[0], alphas[0] / 10.0)] if alphas[0] <= _ALPHA_GRID[0] else []
    edges += [(alphas[-1], 2.0 * alphas[-1])] if alphas[-1] >= _ALPHA_MAX else []
    for near_alpha, far_alpha in edges:
        lows, highs = _scaled_slices(logu, y, np.array([near_alpha, far_alpha]), threshold, which, x_ref)
        if _diverges(float(lows[0]), float(lows[1]), -1.0):
            out[0] = -np.inf
        if _diverges(float(highs[0]), float(highs[1]), 1.0):
            out[1] = np.inf
    return out


def _profile_ci(x: np.ndarray, y: np.ndarray, params: Mapping[str, float], level: float
                ) -> dict[str, list[float]]:
    """Profile-likelihood intervals of a saturating fit's ``C``, ``alpha``, ``y_inf``."""
    x_ref = float(np.exp(np.mean(np.log(x))))
    logu = np.log(x / x_ref)
    grid_rss = _profile_rss(_ALPHA_GRID, logu, y)
    rss_hat = float(_profile_rss(np.array(params["alpha"]), logu, y))
    # the best alpha seen: the fit's, or a grid point in the rare case Brent ended above one
    best = params["alpha"] if rss_hat <= grid_rss.min() else float(_ALPHA_GRID[np.argmin(grid_rss)])
    threshold = profile_threshold(min(rss_hat, float(grid_rss.min())), x.size, level)
    a_lo, a_hi = _alpha_interval(logu, y, best, threshold)
    inner = _PROFILE_GRID[(_PROFILE_GRID > a_lo) & (_PROFILE_GRID < a_hi)]
    # the best alpha too: its slice is the widest where the alpha interval is narrower than
    # the grid's step (precise data), and it holds the estimates themselves
    alphas = np.unique(np.concatenate([inner, [max(a_lo, _ALPHA_GRID[0]), best, min(a_hi, _ALPHA_MAX)]]))
    ci = {
        "C": _linear_interval(logu, y, alphas, threshold, "C", x_ref),
        "alpha": [a_lo, a_hi],
        "y_inf": _linear_interval(logu, y, alphas, threshold, "y_inf", x_ref),
    }
    # rounding (an exact fit's RSS is ~1e-30) must not leave an estimate outside its interval
    return {k: [min(lo, params[k]), max(hi, params[k])] for k, (lo, hi) in ci.items()}


def _loo_rel_error(x: np.ndarray, y: np.ndarray, form: Form) -> float | None:
    top = x == x.max()
    if np.unique(x[~top]).size < _MIN_DISTINCT[form]:
        return None
    params, _ = _fitter(form)(x[~top], y[~top])
    observed = float(y[top].mean())
    predicted = float(_curve(form)(np.array([x.max()]), params)[0])
    return abs(predicted - observed) / abs(observed) if observed != 0 else float("inf")


def _skip_reason(x: np.ndarray, y: np.ndarray, form: Form) -> str:
    if np.any(x <= 0):
        return f"skipped: {form} needs x > 0, min x = {x.min():g}"
    if form == "power_law" and np.any(y <= 0):
        return f"skipped: log-log power law needs y > 0, min y = {y.min():g}"
    if np.unique(x).size < _MIN_DISTINCT[form]:
        return f"skipped: {form} needs >= {_MIN_DISTINCT[form]} distinct x, got {np.unique(x).size}"
    return ""


def _bound_note(params: Mapping[str, float]) -> str:
    """A warning when the saturating exponent ended on a bound of its range."""
    alpha = params.get("alpha")
    if alpha is None:
        return ""
    for bound in (_ALPHA_GRID[0], _ALPHA_MAX):
        if abs(alpha - bound) <= 1e-6 * bound:
            return f"alpha at its bound {bound:g}: the data do not pin down a saturating exponent"
    return ""


def fit_scaling(
    x: Any,
    y: Any,
    *,
    form: Form = "power_law",
    metric: str = "",
    x_name: str = "n_params",
    ci_level: float = 0.95,
) -> FitResult:
    """Fit ``y`` against ``x`` in the given form, with CIs and LOO error.

    Args:
        x: ``(point,)`` regressor, e.g. parameter count.
        y: ``(point,)`` metric.
        form: ``"power_law"`` or ``"saturating"``.
        metric: Metric name recorded in the result.
        x_name: Regressor name recorded in the result.
        ci_level: Confidence level of the intervals, in (0, 1).

    Returns:
        A :class:`FitResult`; skipped (empty params, reason in ``note``) when
        the data cannot support the form.

    Raises:
        ScalelensError: On malformed input (shapes, NaN, unknown form or level).
    """
    if form not in _MIN_DISTINCT:
        raise ScalelensError(f"form must be 'power_law' or 'saturating', got {form!r}")
    if not 0 < ci_level < 1:
        raise ScalelensError(f"ci_level must lie in (0, 1), got {ci_level}")
    xa, ya = _points(x, y)
    reason = _skip_reason(xa, ya, form)
    params: dict[str, float] = {}
    ci: dict[str, list[float]] = {}
    se: dict[str, float] = {}
    method = ""
    r2: float | None = None
    loo: float | None = None
    if not reason:
        params, r2 = _fitter(form)(xa, ya)
        if form == "power_law":
            (ci, se), method = _power_ci(xa, ya, ci_level), "ols_t"
        else:
            ci, method = _profile_ci(xa, ya, params, ci_level), "profile_likelihood"
            reason = "; ".join(t for t in (_bound_note(params), _open_note(ci, ci_level)) if t)
        loo = _loo_rel_error(xa, ya, form)
    return FitResult(
        metric=metric,
        x_name=x_name,
        form=form,
        params=params,
        ci=ci,
        r2=r2,
        loo_rel_error=loo,
        n_points=int(xa.size),
        x=xa.tolist(),
        y=ya.tolist(),
        note=reason,
        se=se,
        ci_method=method,
    )


def _open_note(ci: Mapping[str, list[float]], level: float) -> str:
    """Which ends of a saturating fit's intervals the data leave open, or ""."""
    ends = []
    for name, (lo, hi) in ci.items():
        low_open = lo == 0.0 if name == "alpha" else lo == -np.inf
        sides = [side for side, is_open in (("below", low_open), ("above", hi == np.inf)) if is_open]
        if sides:
            ends.append(f"{name} {' and '.join(sides)}")
    if not ends:
        return ""
    return (f"the data do not bound the {100 * level:g}% interval of " + ", ".join(ends)
            + " (alpha's open lower end is 0, the others' are infinite)")


def fit_power_law(x: Any, y: Any, **kwargs: Any) -> FitResult:
    """``fit_scaling(x, y, form="power_law", **kwargs)``: ``y = a * x**b``."""
    return fit_scaling(x, y, form="power_law", **kwargs)


def fit_saturating(x: Any, y: Any, **kwargs: Any) -> FitResult:
    """``fit_scaling(x, y, form="saturating", **kwargs)``: ``y = C x**-alpha + y_inf``."""
    return fit_scaling(x, y, form="saturating", **kwargs)


def _dynamics_entry(item: DynamicsFit | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, DynamicsFit):
        entry = {
            "size": item.size,
            "layer": item.layer,
            "params": item.params,
            "r2": item.r2,
            "peak_step": item.peak_step,
            "n_points": item.n_points,
        }
    else:
        entry = dict(item)
    missing = {"size", "layer", "params", "r2", "peak_step"} - set(entry)
    if missing:
        raise ScalelensError(f"dynamics entry lacks {sorted(missing)}")
    out: dict[str, Any] = jsonable(entry)
    return out


def fits_to_json(
    fits: Iterable[FitResult], dynamics: Iterable[DynamicsFit | Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Assemble the ``fits.json`` document.

    Args:
        fits: Scaling fits.
        dynamics: Per (size, layer) dynamics fits: :class:`DynamicsFit` objects
            (their ``size`` and ``layer`` fields are used) or mappings with
            ``size, layer, params, r2, peak_step``.

    Returns:
        ``{"version": 1, "fits": [...], "dynamics": [{"size", "layer",
        "params", "r2", "peak_step", "n_points"}, ...]}`` (``n_points`` for
        :class:`DynamicsFit` entries), JSON-serialisable.
    """
    return {
        "version": 1,
        "fits": [f.to_dict() for f in fits],
        "dynamics": [_dynamics_entry(d) for d in dynamics],
    }
