"""Tables of the report as plain strings, shared by the HTML and the Markdown output."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analyses.trends import MIN_TREND_POINTS, StepTrend
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
    note: str = ""  # said above the table (e.g. that it is a digest of a longer one)


def fmt(value: float | int | None) -> str:
    """Format a number with 4 significant digits; None/NaN become a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


_COUNT_SCALES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def count(value: float | None) -> str:
    """Format a parameter count with 4 significant digits and a k/M/B/T suffix; NaN: a dash.

    ``3312`` -> ``3.312k``, ``37340`` -> ``37.34k``, ``70426624`` -> ``70.43M``: one format
    from the smallest mini-suite model to the largest hub one (``.4g`` wrote ``3312`` beside
    ``3.734e+04``).
    """
    if value is None or math.isnan(value):
        return DASH
    rounded = float(f"{value:.4g}")  # 999,950 is 1M, not 1000k
    for scale, suffix in _COUNT_SCALES:
        if abs(rounded) >= scale:
            return f"{rounded / scale:.4g}{suffix}"
    return f"{rounded:.4g}"


def _params(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()) or DASH


CI_METHODS = {"ols_t": "OLS t", "profile_likelihood": "profile likelihood",
              "bootstrap_percentile": "bootstrap"}


def interval_end(value: float, spec: str = ".4g") -> str:
    """An interval's end formatted with ``spec``; an open (infinite) one as ∞ or −∞."""
    return ("∞" if value > 0 else "−∞") if math.isinf(value) else format(value, spec)


def _ci(ci: Mapping[str, tuple[float, float]], method: str = "") -> str:
    """The intervals, and how they were made when fits.json says."""
    text = "; ".join(f"{k} ∈ [{interval_end(lo)}, {interval_end(hi)}]" for k, (lo, hi) in ci.items())
    if not text:
        return DASH
    return f"{text} ({CI_METHODS.get(method, method)})" if method else text


def fits_table(fits: Iterable[ScalingFit], notes: Iterable[str] = ()) -> Table:
    """Return the table of scaling fits (one row per fit); ``notes``: why there are none."""
    rows = tuple(
        (
            f.metric,
            f.x_name,
            f.form,
            _params(f.params),
            _ci(f.ci, f.ci_method),
            fmt(f.r2),
            fmt(f.loo_rel_error),
            str(f.n_points),
            f.note or DASH,
        )
        for f in fits
    )
    empty = " ".join(f"No scaling fits: {n}." for n in notes)
    columns = ("metric", "x", "form", "params", "CI", "R²", "LOO rel. error", "n", "note")
    return Table(columns, rows, empty)


MAX_DYNAMICS_ROWS = 100
"""Above this many (size, layer) dynamics fits the report tables one digest row per size."""


def dynamics_table(fits: Iterable[DynamicsFit]) -> Table:
    """Return the table of training-dynamics fits (one row per size and layer).

    Above `MAX_DYNAMICS_ROWS` fits, one digest row per size and metric (`dynamics_digest`).
    """
    fits = tuple(fits)
    if len(fits) > MAX_DYNAMICS_ROWS:
        return dynamics_digest(fits)
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


def dynamics_digest(fits: Sequence[DynamicsFit]) -> Table:
    """One row per (size, metric): layers fitted, and the median and range of R² and peak step."""
    groups: dict[tuple[str, str], list[DynamicsFit]] = {}
    for f in fits:
        groups.setdefault((f.size if f.model is None else f"{f.model} {f.size}", f.metric), []).append(f)
    rows = tuple((size, metric, str(len(fs)), _spread([f.r2 for f in fs]), _spread([f.peak_step for f in fs]))
                 for (size, metric), fs in groups.items())
    note = (f"{len(fits):,} fits (size x layer), too many to read one by one: one row per size, "
            "with the median [min, max] over its layers; every layer's fit is in fits.json (dynamics), "
            "and the plots below show each layer's curve.")
    return Table(("size", "metric", "layers", "R², median [min, max]", "peak step, median [min, max]"),
                 rows, note=note)


def _spread(values: Iterable[float | None]) -> str:
    """``median [min, max]`` of the finite values, a dash when there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return DASH
    return f"{fmt(float(np.median(v)))} [{fmt(min(v))}, {fmt(max(v))}]"


TRENDS_INTRO = (
    "Each scalar metric against training step, per size: the OLS slope of the value on "
    "log10(step + 1) (its change per tenfold more steps) and Spearman's rank correlation (is the "
    "change monotone). Checkpoints of one run are not independent samples: read p as a guide."
)
TRENDS_EMPTY = f"No trends over training: a size needs {MIN_TREND_POINTS} checkpoints or more."


MAX_TREND_ROWS = 100
"""Above this many (metric, size) trends the report tables one digest row per metric."""
TRENDS_DIGEST_NOTE = (
    " This run has {n:,} trends (metric x size), too many to read one by one: the table has one "
    "row per metric over its sizes; every size's trend is in fits.json (step_trends)."
)


def trends_table(run: Run) -> Table:
    """Return each scalar metric's trend over training, one row per size (sizes by parameters).

    Above `MAX_TREND_ROWS` trends, one digest row per metric instead (`trends_digest`).
    """
    order = {run.table.label(s): i for i, s in enumerate(run.series())} | {
        s.size: i for i, s in enumerate(run.series())}
    trends = sorted(run.fits.trends, key=lambda t: (t.metric, order.get(t.size, len(order)), t.size))
    if len(trends) > MAX_TREND_ROWS:
        return trends_digest(trends)
    rows = tuple(
        (t.metric, t.size, f"{t.n_points} ({t.first_step}–{t.last_step})",
         f"{fmt(t.first_value)} → {fmt(t.last_value)}",
         f"{fmt(t.slope_per_decade)} [{fmt(t.slope_ci[0])}, {fmt(t.slope_ci[1])}]", fmt(t.r2),
         f"{fmt(t.spearman_rho)} (p {fmt(t.spearman_p)})" if math.isfinite(t.spearman_rho) else DASH)
        for t in trends
    )
    return Table(("metric", "size", "checkpoints", "first → last", "change per decade of steps [95% CI]",
                  "R²", "Spearman ρ"), rows, empty=TRENDS_EMPTY)


def trends_digest(trends: Sequence[StepTrend]) -> Table:
    """One row per metric over its sizes (``trends`` sorted by metric, then size).

    How many sizes rise or fall monotonically (Spearman p < 0.05), and the change per
    decade of steps of the first (smallest) and last (largest) size with its median.
    """
    by_metric: dict[str, list[StepTrend]] = {}
    for t in trends:
        by_metric.setdefault(t.metric, []).append(t)
    rows = tuple(_trend_digest_row(metric, ts) for metric, ts in by_metric.items())
    return Table(("metric", "sizes", "rising / falling / neither (Spearman p < 0.05)",
                  "change per decade of steps: first size, median, last size"), rows, empty=TRENDS_EMPTY,
                 note=TRENDS_DIGEST_NOTE.format(n=len(trends)).strip())


def _trend_digest_row(metric: str, ts: Sequence[StepTrend]) -> tuple[str, ...]:
    significant = [t for t in ts if math.isfinite(t.spearman_p) and t.spearman_p < 0.05]
    rising = sum(t.spearman_rho > 0 for t in significant)
    falling = len(significant) - rising
    slopes = [t.slope_per_decade for t in ts]
    first, last = ts[0], ts[-1]
    neither = len(ts) - len(significant)
    return (metric, f"{len(ts)} ({first.size}–{last.size})", f"{rising} / {falling} / {neither}",
            f"{first.size}: {fmt(slopes[0])}; median {fmt(float(np.median(slopes)))}; "
            f"{last.size}: {fmt(slopes[-1])}")


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
                count(t.n_params(s)),
                count(t.n_params(s, "n_params_non_embedding")),
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
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


MAX_FAILED_SHOWN = 10


def tasks_digest(tasks: list[Any]) -> str | None:
    """run.json's task list in one line: counts by status, then the failed tasks and errors.

    A full sweep lists ~1,500 tasks, which as one JSON cell made a page-long paragraph.
    None when ``tasks`` is not a list of task objects (then the cell shows it as it is).
    """
    if not all(isinstance(t, Mapping) for t in tasks):
        return None
    counts: dict[str, int] = {}
    for t in tasks:
        status = str(t.get("status"))
        counts[status] = counts.get(status, 0) + 1
    noun = "task" if len(tasks) == 1 else "tasks"
    text = f"{len(tasks):,} {noun}: " + ", ".join(f"{n:,} {status}" for status, n in counts.items())
    failed = [t for t in tasks if t.get("status") == "failed"]
    shown = "; ".join(f"{t.get('key')} ({t.get('error') or 'no error recorded'})"
                      for t in failed[:MAX_FAILED_SHOWN])
    extra = len(failed) - MAX_FAILED_SHOWN
    more = f"; and {extra:,} more (run.json)" if extra > 0 else ""
    return text + (f". Failed: {shown}{more}" if failed else "")


def info_table(info: Mapping[str, Any] | None) -> Table:
    """Return run.json as key/value rows (settings flattened one level, tasks counted)."""
    rows: list[tuple[str, str]] = []
    for key, value in (info or {}).items():
        if key == "settings" and isinstance(value, Mapping):
            rows.extend((f"settings.{k}", _cell(v)) for k, v in value.items())
        elif key == "tasks" and isinstance(value, list) and (digest := tasks_digest(value)) is not None:
            rows.append((key, digest))
        else:
            rows.append((key, _cell(value)))
    return Table(("key", "value"), tuple(rows))
