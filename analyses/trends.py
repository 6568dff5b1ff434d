"""How a metric changes over training: a regression on log step and a rank correlation.

For one size's checkpoints, the metric is regressed on ``log10(step + 1)`` by OLS
(``scipy.stats.linregress``): the slope is the change per decade of training steps, with a
95% t interval from its standard error. Spearman's rank correlation (``scipy.stats.spearmanr``)
says whether the change is monotone, whatever its shape. Its p-value is exact (all orderings of
the values) up to ``EXACT_MAX_POINTS`` checkpoints: scipy's t approximation gives p = 0 to any
perfectly monotone series, even 4 points, whose exact p is 1/12. Both are descriptive: checkpoints
of one run are not independent samples, so the p-value is a guide, not a test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

MIN_TREND_POINTS = 4
EXACT_MAX_POINTS = 8  # 8! = 40,320 orderings


@dataclass(frozen=True)
class StepTrend:
    """One metric of one size against training step.

    Attributes:
        metric: ``analysis.metric``.
        size: Size label.
        n_points: Checkpoints used.
        first_step: Earliest step used.
        last_step: Latest step used.
        first_value: Value at ``first_step``.
        last_value: Value at ``last_step``.
        slope_per_decade: OLS slope of the value against ``log10(step + 1)``.
        slope_ci: 95% interval of the slope (t distribution, ``n - 2`` dof).
        r2: R² of that regression.
        spearman_rho: Rank correlation of value and step (NaN when the value is constant).
        spearman_p: Its two-sided p-value (NaN likewise); exact up to ``EXACT_MAX_POINTS``.
    """

    metric: str
    size: str
    n_points: int
    first_step: int
    last_step: int
    first_value: float
    last_value: float
    slope_per_decade: float
    slope_ci: tuple[float, float]
    r2: float
    spearman_rho: float
    spearman_p: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; NaN becomes None."""
        return {k: _json_num(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepTrend:
        """Parse :meth:`to_dict`'s form (None back to NaN); KeyError/TypeError/ValueError if malformed."""
        lo, hi = (_float(v) for v in d["slope_ci"])
        return cls(str(d["metric"]), str(d["size"]), int(d["n_points"]), int(d["first_step"]),
                   int(d["last_step"]), _float(d["first_value"]), _float(d["last_value"]),
                   _float(d["slope_per_decade"]), (lo, hi), _float(d["r2"]),
                   _float(d["spearman_rho"]), _float(d["spearman_p"]))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _json_num(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_num(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fit_step_trend(steps: np.ndarray, values: np.ndarray, metric: str, size: str) -> StepTrend | None:
    """The trend of ``values`` over ``steps`` (one size); None with under MIN_TREND_POINTS steps.

    Non-finite values are dropped first.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(values) & np.isfinite(steps)
    steps, values = steps[keep], values[keep]
    order = np.argsort(steps)
    steps, values = steps[order], values[order]
    if len(np.unique(steps)) < MIN_TREND_POINTS:
        return None
    if np.ptp(values) == 0:  # no change: no correlation to speak of
        slope, ci, r2, rho, p = 0.0, (0.0, 0.0), math.nan, math.nan, math.nan
    else:
        slope, ci, r2 = _log_step_regression(steps, values)
        rho, p = _spearman(steps, values)
    return StepTrend(metric, size, len(steps), int(steps[0]), int(steps[-1]), float(values[0]),
                     float(values[-1]), slope, ci, r2, rho, p)


def _log_step_regression(steps: np.ndarray, values: np.ndarray) -> tuple[float, tuple[float, float], float]:
    """OLS of ``values`` on ``log10(steps + 1)``: slope, its 95% t interval, R²."""
    reg = stats.linregress(np.log10(steps + 1.0), values)
    half = float(stats.t.ppf(0.975, len(steps) - 2) * reg.stderr)
    return float(reg.slope), (float(reg.slope) - half, float(reg.slope) + half), float(reg.rvalue**2)


def _spearman(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        res = stats.spearmanr(steps, values)
    rho = float(res.statistic)
    if len(steps) > EXACT_MAX_POINTS or not math.isfinite(rho):
        return rho, float(res.pvalue)
    return rho, _exact_spearman_p(steps, values)


def _exact_spearman_p(steps: np.ndarray, values: np.ndarray) -> float:
    """Two-sided p of Spearman's rho over every pairing of the values (``scipy.stats.permutation_test``)."""
    rx = stats.rankdata(steps)

    def rho(v: np.ndarray, axis: int) -> np.ndarray:
        ranks = stats.rankdata(v, axis=axis)
        return stats.pearsonr(ranks, np.broadcast_to(rx, ranks.shape), axis=axis).statistic

    res = stats.permutation_test((values,), rho, permutation_type="pairings", n_resamples=np.inf,
                                 vectorized=True)
    return float(res.pvalue)
