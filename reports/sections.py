"""Plan the report's plot sections (lazily) and draw them into embedded PNGs."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from scalelens.progress import live_terminal, progress_bar

from . import plots
from .metrics import Series
from .rundir import Run

# Show a progress bar when a report has at least this many plots.
PROGRESS_MIN_PLOTS = 12


@dataclass(frozen=True)
class PlotJob:
    """A plot to draw later: its title, a caption and a zero-argument figure factory."""

    title: str
    make: Callable[[], Figure]
    caption: str = ""


@dataclass(frozen=True)
class SectionPlan:
    """A report section before drawing; ``empty`` explains a section without plots."""

    id: str
    title: str
    intro: str
    jobs: tuple[PlotJob, ...] = ()
    empty: str = ""


@dataclass(frozen=True)
class Plot:
    """A drawn plot: title, caption and a ``data:`` PNG URI."""

    title: str
    uri: str
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """A drawn report section, ready for the template."""

    id: str
    title: str
    intro: str
    plots: tuple[Plot, ...]
    empty: str = ""


def earlier_steps(run: Run, keys: Sequence[str]) -> str:
    """Name the sizes a plot of ``keys`` shows at a step older than their latest checkpoint.

    A plot "at the latest checkpoint" takes each size's latest values of a metric; a size
    whose latest checkpoint lacks them (non-finite there, so not in metrics.csv) shows an
    earlier step's, which the caption must say. "" when every size is at its latest.

    Args:
        run: The loaded run.
        keys: The metrics the plot shows.

    Returns:
        E.g. ``"shown at an earlier step, the latest checkpoint having none: 160m (step 10)"``.
    """
    named = []
    for s in run.series():
        steps = sorted({step for k in keys if (step := run.table.earlier_step(k, s)) is not None})
        if steps:
            word = "step" if len(steps) == 1 else "steps"
            named.append(f"{run.table.label(s)} ({word} {', '.join(map(str, steps))})")
    return f"shown at an earlier step, the latest checkpoint having none: {', '.join(named)}" if named else ""


MIN_SCALING_SIZES = 2
"""A metric-vs-parameters plot needs this many sizes: one size would be a single dot."""


def plan_scaling(run: Run) -> SectionPlan:
    """Plan one metric-vs-parameters plot per scalar metric and x variable with fits.

    A run of fewer than ``MIN_SCALING_SIZES`` sizes gets no plots (each would be one point),
    and the section says why in one line.
    """
    keys = run.table.keys("scalar")
    few = len(run.series()) < MIN_SCALING_SIZES
    jobs = []
    for key in [] if few else keys:
        fits = [f for f in run.fits.scaling if f.metric == key]
        for x_name in dict.fromkeys([f.x_name for f in fits] or ["n_params"]):
            chosen = tuple(f for f in fits if f.x_name == x_name)
            jobs.append(PlotJob(f"{key} vs {x_name}", _scaling_job(run, key, x_name, chosen)))
    return SectionPlan(
        "scaling",
        "Metrics vs parameter count",
        "Each scalar metric at each size's last checkpoint (a size without it is left out, as in "
        "the fits), against parameter count, with the fitted curve and the band from the "
        "exponent's CI where fitted (the OLS t interval of a power law, the profile-"
        "likelihood interval of a saturating fit).",
        tuple(jobs),
        _scaling_empty(run, keys, few),
    )


def _scaling_empty(run: Run, keys: Sequence[str], few: bool) -> str:
    """Why the scaling section has no plots (when it has none)."""
    if not keys:
        return "No scalar metrics in this run."
    if few:
        n = len(run.series())
        return (f"Not plotted: this run has {n} size, and a plot against parameter count needs "
                f"{MIN_SCALING_SIZES} or more (each value is in the scalar metrics table below).")
    return ""


def _scaling_job(run: Run, key: str, x_name: str, fits: Sequence) -> Callable[[], Figure]:
    families: dict[str, list] = {}
    for s in run.series():
        families.setdefault(run.table.family(s), []).append(s)
    points = {}
    for family, members in families.items():
        xy = [(run.table.n_params(s, x_name), _compared_value(run, key, s), s.size) for s in members]
        xy = [p for p in xy if np.isfinite(p[0]) and np.isfinite(p[1])]
        if xy:
            points[family] = plots.Points(x=np.array([p[0] for p in xy]), y=np.array([p[1] for p in xy]),
                                          labels=[p[2] for p in xy])
    return partial(plots.scaling_plot, points, fits, x_label=x_name, y_label=key)


def _compared_value(run: Run, key: str, series: Series) -> float:
    """A size's value where the fits compared it: its last step, or its final model (no step)."""
    if run.fits.final_model(series.size):
        return run.table.scalar_at_step(key, series, None)
    return run.table.scalar_at_last_step(key, series, run.fits.last_step(series.size))


def plan_steps(run: Run) -> SectionPlan:
    """Plan one metric-vs-training-step plot per scalar metric (one line per size)."""
    table, colors = run.table, run.colors()
    multi = any(len(table.steps(s)) > 1 for s in run.series())
    jobs = []
    for key in table.keys("scalar") if multi else []:
        lines = {table.label(s): table.over_steps(key, s) for s in run.series()}
        lines = {k: v for k, v in lines.items() if v[0].size}
        if lines:
            jobs.append(
                PlotJob(
                    f"{key} over training",
                    partial(plots.steps_plot, lines, colors, y_label=key),
                )
            )
    return SectionPlan(
        "steps",
        "Metrics vs training step",
        "Each scalar metric over the checkpoints of every size (log step axis, linear near step 0).",
        tuple(jobs),
        "Every size has a single checkpoint, so there is nothing to plot over training.",
    )


def plan_dynamics(run: Run) -> SectionPlan:
    """Plan one plot per (size, metric) with fitted training dynamics per layer."""
    by_target: dict[tuple, dict[int, dict[str, float]]] = {}
    for fit in run.fits.dynamics:
        for s in run.series():
            if s.size == fit.size and fit.model in (None, s.model):
                by_target.setdefault((s, fit.metric), {})[fit.layer] = fit.params
    jobs = []
    order = {s: i for i, s in enumerate(run.series())}
    for (s, metric), fitted in sorted(by_target.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        observed = {layer: run.table.over_steps(metric, s, layer) for layer in fitted}
        observed = {k: v for k, v in observed.items() if v[0].size}
        title = f"{run.table.label(s)}: {metric}"
        jobs.append(
            PlotJob(
                title,
                partial(plots.dynamics_plot, observed, fitted, title=title, y_label=metric),
            )
        )
    return SectionPlan(
        "dynamics",
        "Training-dynamics fits",
        "Per-layer values over training (dots) and the fitted "
        "f(t) = A·exp(−λx)·log(x) + K, x = γt + t0 (lines).",
        tuple(jobs),
        "No training-dynamics fits in fits.json.",
    )


def plan_other(run: Run, handled: set[str]) -> SectionPlan:
    """Plan generic plots for per-layer and per-head metrics no other section shows."""
    table, colors = run.table, run.colors()
    jobs = []
    for key in (k for k in table.keys("layer") if k not in handled):
        lines = {table.label(s): table.by_layer(key, s) for s in run.series()}
        lines = {k: v for k, v in lines.items() if v[0].size}
        jobs.append(PlotJob(key, partial(plots.per_layer_plot, lines, colors, y_label=key),
                            earlier_steps(run, [key])))
    for key in (k for k in table.keys("head") if k not in handled):
        for s in run.series():
            matrix = table.head_matrix(key, s)
            if matrix.size:
                title = f"{key}, {table.label(s)}"
                step = table.earlier_step(key, s)
                caption = "" if step is None else f"step {step}: the latest checkpoint has none"
                jobs.append(PlotJob(title, partial(plots.heatmap, matrix, title=title), caption))
    return SectionPlan(
        "other",
        "Other per-layer and per-head metrics",
        "Metrics without a dedicated plot, at the latest checkpoint of each size.",
        tuple(jobs),
        "None: every metric in this run is shown above.",
    )


def draw(plans: Sequence[SectionPlan], progress: bool | None = None) -> list[Section]:
    """Draw every planned plot into a PNG data URI.

    Args:
        plans: The planned sections.
        progress: Show a progress bar; None shows it for many plots on a terminal (a report
            takes seconds, so a log gets no progress lines).

    Returns:
        The drawn sections in the same order.
    """
    total = sum(len(p.jobs) for p in plans)
    disable = (total < PROGRESS_MIN_PLOTS or not live_terminal()) if progress is None else not progress
    with progress_bar(total=total, desc="report plots", unit="plot", disable=disable) as bar, _frozen_gc():
        return [_draw_section(plan, bar) for plan in plans]


@contextmanager
def _frozen_gc() -> Iterator[None]:
    """Let a collection after each plot scan only what was made since (``gc.freeze``).

    A figure is a web of reference cycles. With a large run's million metric rows alive,
    Python's full collections came rarely, and the figures' garbage piled up (+150 MiB over
    145 plots); a full collection per plot would rescan every row (3x the drawing time).
    """
    if gc.get_freeze_count():  # the caller froze objects of its own: leave its state alone
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _draw_section(plan: SectionPlan, bar: tqdm) -> Section:
    drawn = []
    for job in plan.jobs:
        fig = job.make()
        drawn.append(Plot(job.title, plots.to_data_uri(fig), job.caption))
        del fig
        gc.collect()  # the figure's cycles (see _frozen_gc)
        bar.update()
    return Section(plan.id, plan.title, plan.intro, tuple(drawn), plan.empty)
