"""Tables of the report as plain strings, shared by the HTML and the Markdown output."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..analyses.trends import MIN_TREND_POINTS
from .metrics import MetricTable, Series, step_rank
from .rundir import Run
from .runfiles import DynamicsFit, ScalingFit

DASH = "—"


@dataclass(frozen=True)
class Table:
    """A header and rows of already formatted cells."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    empty: str = ""  # what to say instead of an empty table ("" : the page's default line)


def fmt(value: float | int | None) -> str:
    """Format a number with 4 significant digits; None/NaN become a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _params(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or DASH


def _ci(ci: Mapping[str, tuple[float, float]]) -> str:
    return "; ".join(f"{k} ∈ [{fmt(lo)}, {fmt(hi)}]" for k, (lo, hi) in ci.items()) or DASH


def fits_table(fits: Iterable[ScalingFit], notes: Iterable[str] = ()) -> Table:
    """Return the table of scaling fits (one row per fit); ``notes``: why there are none."""
    rows = tuple(
        (
            f.metric,
            f.x_name,
            f.form,
            _params(f.params),
            _ci(f.ci),
            fmt(f.r2),
            fmt(f.loo_rel_error),
            str(f.n_points),
            f.note or DASH,
        )
        for f in fits
    )
    empty = " ".join(f"No scaling fits: {n}." for n in notes)
    return Table(("metric", "x", "form", "params", "CI", "R²", "LOO rel. error", "n", "note"), rows, empty)


def dynamics_table(fits: Iterable[DynamicsFit]) -> Table:
    """Return the table of training-dynamics fits (one row per size and layer)."""
    rows = tuple(
        (
            f.size if f.model is None else f"{f.model} {f.size}",
            str(f.layer),
            f.metric,
            _params(f.params),
            fmt(f.r2),
            fmt(f.peak_step),
        )
        for f in fits
    )
    return Table(("size", "layer", "metric", "params", "R²", "peak step"), rows)


TRENDS_INTRO = (
    "Each scalar metric against training step, per size: the OLS slope of the value on "
    "log10(step + 1) (its change per tenfold more steps) and Spearman's rank correlation (is the "
    "change monotone). Checkpoints of one run are not independent samples: read p as a guide."
)
TRENDS_EMPTY = f"No trends over training: a size needs {MIN_TREND_POINTS} checkpoints or more."


def trends_table(run: Run) -> Table:
    """Return each scalar metric's trend over training, one row per size (sizes by parameters)."""
    order = {run.table.label(s): i for i, s in enumerate(run.series())} | {
        s.size: i for i, s in enumerate(run.series())}
    trends = sorted(run.fits.trends, key=lambda t: (t.metric, order.get(t.size, len(order)), t.size))
    rows = tuple(
        (t.metric, t.size, f"{t.n_points} ({t.first_step}–{t.last_step})",
         f"{fmt(t.first_value)} → {fmt(t.last_value)}",
         f"{fmt(t.slope_per_decade)} [{fmt(t.slope_ci[0])}, {fmt(t.slope_ci[1])}]", fmt(t.r2),
         f"{fmt(t.spearman_rho)} (p {fmt(t.spearman_p)})" if math.isfinite(t.spearman_rho) else DASH)
        for t in trends
    )
    return Table(("metric", "size", "checkpoints", "first → last", "change per decade of steps [95% CI]",
                  "R²", "Spearman ρ"), rows, empty=TRENDS_EMPTY)


def sizes_table(run: Run) -> Table:
    """Return one row per (model, size): parameter counts and checkpoints measured."""
    t = run.table
    rows = []
    for s in run.series():
        steps = t.steps(s)
        rows.append(
            (
                s.model,
                s.size,
                fmt(t.n_params(s)),
                fmt(t.n_params(s, "n_params_non_embedding")),
                str(len(t.revisions(s))),
                fmt(steps[-1]) if steps else DASH,
            )
        )
    return Table(
        ("model", "size", "params", "non-embedding params", "checkpoints", "latest step"),
        tuple(rows),
    )


def latest_scalars_table(run: Run) -> Table:
    """Return every scalar metric (rows) at the latest checkpoint of each size (columns).

    A value from an earlier checkpoint (the size's latest lacks that metric, e.g. a failed
    task) says its step, so sizes compared across a row are not silently at other steps.
    """
    t = run.table
    series = run.series()
    newest = {s: step_rank(t.latest_rows(s)[0].step) for s in series}
    rows = tuple((key, *(_latest_cell(t, key, s, newest[s]) for s in series)) for key in t.keys("scalar"))
    return Table(("metric", *(t.label(s) for s in series)), rows)


def _latest_cell(t: MetricTable, key: str, series: Series, newest: float) -> str:
    rows = [r for r in t.latest(key, series) if r.kind == "scalar"]
    if not rows:
        return DASH
    step = rows[-1].step
    return fmt(rows[-1].value) + ("" if step_rank(step) == newest else f" (step {step})")


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def info_table(info: Mapping[str, Any] | None) -> Table:
    """Return run.json as key/value rows (settings flattened one level)."""
    rows: list[tuple[str, str]] = []
    for key, value in (info or {}).items():
        if key == "settings" and isinstance(value, Mapping):
            rows.extend((f"settings.{k}", _cell(v)) for k, v in value.items())
        else:
            rows.append((key, _cell(value)))
    return Table(("key", "value"), tuple(rows))
