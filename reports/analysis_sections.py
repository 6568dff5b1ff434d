"""Plan the sections dedicated to one analysis each (retrieval heads, massive activations, ...)."""

from __future__ import annotations

import math
import re
from functools import partial

import numpy as np

from ..sweeps.metrics import checkpoint_name
from . import plots
from .metrics import MetricTable, Series
from .rundir import Run
from .sections import PlotJob, SectionPlan, earlier_steps
from .tables import Table, fmt, interval_end

RETRIEVAL_SCORE = "retrieval_heads.score"
RETRIEVAL_THRESHOLD = 0.1
MAX_HEADS_LISTED = 10
"""The report lists each size's retrieval heads, highest score first, up to this many."""
MASSIVE_RATIO = "massive_activations.ratio"
MASSIVE_BAR = 1000.0
MDI = "text_dominance.mdi"
LAYER_GROUPS = ("early", "middle", "late", "all")  # "all" when a model is too shallow to split
_GROUPED = re.compile(r"^text_dominance\.(.+)_(early|middle|late|all)$")

# Per-layer / per-head metrics that a dedicated section already plots.
HANDLED = {RETRIEVAL_SCORE, MASSIVE_RATIO, MDI}


def _missing(analysis: str) -> str:
    return f"No {analysis} results in this run."


def plan_retrieval(run: Run) -> SectionPlan:
    """Plan one (layer x head) retrieval-score heatmap per size, latest checkpoint.

    The bar the captions and heatmap titles name is the run's own (its ``threshold`` setting,
    which the fractions were counted with). A size whose latest checkpoint has no scores (no
    test passed the gate there) shows its latest scored checkpoint, and the caption names it.
    The caption lists the heads above the bar (`retrieval_heads_table` has them for the Markdown).
    """
    table = run.table
    threshold = retrieval_threshold(run)
    matrices = {s: table.head_matrix(RETRIEVAL_SCORE, s) for s in run.series()}
    matrices = {s: m for s, m in matrices.items() if m.size}
    finite = [np.nanmax(m) for m in matrices.values() if np.isfinite(m).any()]
    vmax = max(finite + [2 * threshold])
    jobs = []
    for s, matrix in matrices.items():
        label = table.label(s)
        caption = _retrieval_caption(
            table.scalar("retrieval_heads.fraction", s),
            table.scalar("retrieval_heads.fraction_zero", s),
            threshold,
            table.earlier_step(RETRIEVAL_SCORE, s),
            _heads_text(top_heads(matrix, threshold)),
        )
        jobs.append(
            PlotJob(
                f"retrieval scores, {label}",
                partial(
                    plots.heatmap,
                    matrix,
                    title=label,
                    vmax=vmax,
                    threshold=threshold,
                    zero_white=True,
                ),
                caption,
            )
        )
    return SectionPlan(
        "retrieval",
        "Retrieval heads",
        "Retrieval score per head (share of needle tokens the head copy-pastes) at the latest "
        "checkpoint; shared colour scale, white = exactly 0. Wu et al. 2024 call a head a "
        "retrieval head above 0.1 and report 3–6% of heads above it, 45–73% at exactly 0.",
        tuple(jobs),
        _missing("retrieval-head"),
    )


def retrieval_threshold(run: Run) -> float:
    """The retrieval-head bar the run's tasks counted with: its ``threshold`` setting, else 0.1.

    Args:
        run: The loaded run; its ``run.json`` holds the sweep's settings.

    Returns:
        The score a head must exceed to count as a retrieval head.
    """
    spec = (run.info or {}).get("settings")
    settings = spec.get("settings") if isinstance(spec, dict) else None
    value = settings.get("threshold") if isinstance(settings, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return RETRIEVAL_THRESHOLD


def top_heads(matrix: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every head scoring above ``threshold``: ``(layer, head, score)``, highest score first.

    Args:
        matrix: Retrieval scores by (layer, head); NaN where not measured.
        threshold: The score a retrieval head must exceed.

    Returns:
        The heads, ties in layer then head order.
    """
    layers, heads = np.nonzero(np.nan_to_num(matrix, nan=-np.inf) > threshold)
    found = [(int(i), int(j), float(matrix[i, j])) for i, j in zip(layers, heads, strict=True)]
    return sorted(found, key=lambda h: (-h[2], h[0], h[1]))


def _heads_text(top: list[tuple[int, int, float]]) -> str:
    """The first `MAX_HEADS_LISTED` of `top_heads` as ``2.5 (0.93), 0.7 (0.4)``, or none."""
    text = ", ".join(f"{layer}.{head} ({fmt(score)})" for layer, head, score in top[:MAX_HEADS_LISTED])
    more = len(top) - MAX_HEADS_LISTED
    return (text + (f", and {more} more" if more > 0 else "")) or "none"


def retrieval_heads_table(run: Run) -> Table:
    """Each size's retrieval heads at its latest scored checkpoint, highest score first.

    Args:
        run: The loaded run.

    Returns:
        One row per size with retrieval scores: its checkpoint, how many heads exceed the run's
        threshold, and the top `MAX_HEADS_LISTED` of them as ``layer.head (score)``.
    """
    table, threshold = run.table, retrieval_threshold(run)
    rows = []
    for s in run.series():
        matrix = table.head_matrix(RETRIEVAL_SCORE, s)
        if matrix.size:
            top = top_heads(matrix, threshold)
            counted = f"{len(top)} of {int(np.isfinite(matrix).sum())}"
            rows.append((table.label(s), _scores_checkpoint(table, s), counted, _heads_text(top)))
    note = (f"Heads scoring above the run's threshold {threshold:g} (Wu et al. 2024 use 0.1) at each "
            f"size's latest checkpoint, highest first, up to {MAX_HEADS_LISTED}; the heatmaps are in "
            "the HTML report.")
    return Table(("size", "checkpoint", f"heads > {threshold:g}", "top heads, layer.head (score)"),
                 tuple(rows), note=note)


def _scores_checkpoint(table: MetricTable, series: Series) -> str:
    """The checkpoint of a size's retrieval scores, and why when it is not its latest."""
    rows = table.latest(RETRIEVAL_SCORE, series)
    earlier = table.earlier_step(RETRIEVAL_SCORE, series) is not None
    return checkpoint_name(rows[0].step) + (" (the latest checkpoint has no scores)" if earlier else "")


def _retrieval_caption(fraction: float, zero: float, threshold: float, step: int | None = None,
                       heads: str = "") -> str:
    parts = []
    if step is not None:
        parts.append(f"step {step}: the latest checkpoint has no scores")
    if math.isfinite(fraction):
        parts.append(f"fraction > {threshold:g}: {fraction:.1%}")
    if math.isfinite(zero):
        parts.append(f"exactly 0: {zero:.1%}")
    if heads:
        parts.append(f"heads > {threshold:g}, layer.head (score): {heads}")
    return "; ".join(parts)


def plan_massive(run: Run) -> SectionPlan:
    """Plan the massive-activation ratio per layer, one line per size."""
    table = run.table
    lines = {table.label(s): table.by_layer(MASSIVE_RATIO, s) for s in run.series()}
    lines = {k: v for k, v in lines.items() if v[0].size}
    colors = run.colors()
    jobs = (
        (
            PlotJob(
                "massive-activation ratio by layer",
                lambda: plots.per_layer_plot(
                    lines,
                    colors,
                    y_label="max|h| / median|h|",
                    reference=(MASSIVE_BAR, "ratio 1000 (Sun et al. bar)"),
                ),
                earlier_steps(run, [MASSIVE_RATIO]),
            ),
        )
        if lines
        else ()
    )
    return SectionPlan(
        "massive",
        "Massive activations",
        "Ratio of the largest to the median absolute activation of each decoder layer's "
        "output, latest checkpoint. Published final ratios: Pythia-14M about 83, "
        "1.4B about 2350, 12B about 3200.",
        jobs,
        _missing("massive-activation"),
    )


def plan_superposition(run: Run) -> SectionPlan:
    """Plan mean squared overlap of unembedding rows against 1/m, one point per size."""
    table = run.table
    points = {
        table.label(s): (
            table.scalar("superposition.inv_m", s),
            table.scalar("superposition.mean_sq_overlap", s),
            table.scalar("superposition.mean_sq_overlap_centered", s),
        )
        for s in run.series()
    }
    points = {k: v for k, v in points.items() if math.isfinite(v[0]) and math.isfinite(v[1])}
    colors = run.colors()
    keys = [f"superposition.{k}" for k in ("inv_m", "mean_sq_overlap", "mean_sq_overlap_centered")]
    draw = partial(plots.overlap_plot, points, colors)
    jobs = (PlotJob("overlap vs 1/m", draw, earlier_steps(run, keys)),) if points else ()
    return SectionPlan(
        "superposition",
        "Superposition",
        "Mean squared overlap of the normalised LM-head rows (filled) and of the centred rows "
        "(open squares) against 1/m for width m. Strong superposition tracks the dotted "
        "y = 1/m line (Liu, Liu & Gore 2025)." + _loss_vs_width(run),
        jobs,
        _missing("superposition"),
    )


def _loss_vs_width(run: Run) -> str:
    """The loss-vs-width fit in one sentence, beside the published exponent."""
    from scalelens.sweeps.fits import LOSS_VS_WIDTH, WIDTH

    fit = next((f for f in run.fits.scaling if f.metric in LOSS_VS_WIDTH and f.x_name == WIDTH), None)
    if fit is None:
        return ""
    published = "Liu et al. report alpha = 0.91 ± 0.04 across LLM families"
    if "alpha" not in fit.params:
        return f" Loss vs width m was not fitted ({fit.note or 'too few sizes'}); {published}."
    ci = fit.ci.get("alpha")
    band = f" [{interval_end(ci[0], '.2g')}, {interval_end(ci[1], '.2g')}]" if ci else ""
    return (f" Loss (NLL bits per token on the probe text) vs width m, fitted as L = C / m^alpha + "
            f"L_inf over {fit.n_points} sizes: alpha = {fit.params['alpha']:.2g}{band}; {published}.")


def plan_text_dominance(run: Run) -> SectionPlan:
    """Plan MDI/AEI grouped bars by layer group, and MDI by layer, per size."""
    table, colors = run.table, run.colors()
    matches = [m for k in table.keys("scalar") if (m := _GROUPED.match(k))]
    groups = tuple(g for g in LAYER_GROUPS if g in {m.group(2) for m in matches})
    jobs = []
    for prefix in dict.fromkeys(m.group(1) for m in matches):
        values = {
            table.label(s): {g: table.scalar(f"text_dominance.{prefix}_{g}", s) for g in groups}
            for s in run.series()
        }
        values = {k: v for k, v in values.items() if any(map(math.isfinite, v.values()))}
        jobs.append(
            PlotJob(
                f"{prefix} by layer group",
                partial(plots.group_bars, values, groups, colors, y_label=prefix),
                earlier_steps(run, [f"text_dominance.{prefix}_{g}" for g in groups]),
            )
        )
    lines = {table.label(s): table.by_layer(MDI, s) for s in run.series()}
    lines = {k: v for k, v in lines.items() if v[0].size}
    if lines:
        jobs.append(
            PlotJob(
                "MDI by layer",
                lambda: plots.per_layer_plot(lines, colors, y_label="MDI", reference=(1.0, "parity (1)")),
                earlier_steps(run, [MDI]),
            )
        )
    return SectionPlan(
        "text-dominance",
        "Text dominance",
        "MDI = (A_T/|T|)/(A_O/|O|) and AEI_T = [A_T/(A_T+A_O)]/[|T|/(|T|+|O|)] for the answer "
        "tokens' attention, by layer group. 1 means attention in proportion to token counts; "
        "LLaVA-1.5-7B middle layers reach MDI 10.23 (Wu et al. 2025).",
        tuple(jobs),
        _missing("text-dominance"),
    )
