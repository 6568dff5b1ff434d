"""Small plotting functions: plain arrays in, a matplotlib Figure out (Agg, no pyplot state)."""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from . import curves
from .runfiles import ScalingFit

FIGSIZE = (5.0, 3.4)
DPI = 110
Color = tuple[float, float, float, float]
XY = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Points:
    """Measured points of one model family against parameter count, labelled by size."""

    x: np.ndarray
    y: np.ndarray
    labels: Sequence[str]


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """Return a figure with one axes and an Agg canvas attached."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


_MATH_DOLLAR = re.compile(r"(?<!\\)\$")


def _escape_dollars(text: str) -> str:
    """``text`` with every unescaped ``$`` escaped, so that matplotlib shows it as written."""
    return _MATH_DOLLAR.sub(r"\\$", text)


def _literal_dollars(fig: Figure) -> None:
    r"""Show every ``$`` in the figure's own texts (titles, labels, legends) as a dollar sign.

    Model names, size labels and metric names come from the user's files; matplotlib read
    ``fam$\frac$A`` as mathtext and stopped the report with a parse error. No text of
    ours is mathtext; tick labels, which the formatters may write as mathtext, are made
    while drawing, after this.
    """
    for text in fig.findobj(Text):
        if "$" in text.get_text():
            text.set_text(_escape_dollars(text.get_text()))


def _wrap(text: str, chars: int) -> str:
    r"""``text`` broken into lines of at most ``chars`` characters, never inside a ``\$``."""
    lines = textwrap.wrap(text, max(chars, 8), break_on_hyphens=True) or [text]
    return "\n".join(lines).replace("\\\n$", "\n\\$")


def _labels(fig: Figure) -> list[tuple[Text, Axes, bool]]:
    """Each axes' title, x label and y label, with its axes and whether it is vertical."""
    return [(text, ax, vertical) for ax in fig.axes
            for text, vertical in ((ax.title, False), (ax.xaxis.label, False), (ax.yaxis.label, True))]


def _share_that_fits(fig: Figure, text: Text, ax: Axes, vertical: bool) -> float:
    """The share of a title or label that fits the figure (1 or more: all of it).

    A title or label is centred on its axes, so its room is twice the distance from the
    axes' centre to the nearer edge of the figure.
    """
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box, extent = ax.get_window_extent(renderer), text.get_window_extent(renderer)
    if vertical:
        centre, edge, length = box.y0 + box.height / 2, fig.bbox.height, extent.height
    else:
        centre, edge, length = box.x0 + box.width / 2, fig.bbox.width, extent.width
    return float(2 * min(centre, edge - centre) / max(length, 1.0))


def _fit_texts(fig: Figure) -> None:
    """Wrap each title and axis label that runs off the figure, until all fit.

    A title holding a long model name ran off both sides of the figure and was cut (and a
    long y label off its top and bottom); wrapped, the layout makes room for its lines.
    Texts under 60% of the figure fit wherever the layout puts them, and cost no layout here.
    """
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    written = {}
    for text, ax, vertical in _labels(fig):
        extent = text.get_window_extent(renderer)
        share = extent.height / fig.bbox.height if vertical else extent.width / fig.bbox.width
        if text.get_text() and share > 0.6:
            written[text] = (text.get_text(), ax, vertical)
    for _ in range(4 if written else 0):
        fig.canvas.draw()  # the layout, as saved: wrapped lines move the axes
        shares = {text: _share_that_fits(fig, text, ax, vertical)
                  for text, (_, ax, vertical) in written.items()}
        if all(share >= 1.0 for share in shares.values()):
            return
        for text, share in shares.items():
            if share < 1.0:
                widest = max(map(len, text.get_text().split("\n")))
                text.set_text(_wrap(written[text][0], int(widest * 0.92 * share)))


def to_data_uri(fig: Figure) -> str:
    """Render a figure to a ``data:image/png;base64,...`` URI (long titles and labels wrapped)."""
    _literal_dollars(fig)
    _fit_texts(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def palette(labels: Sequence[str]) -> dict[str, Color]:
    """Assign ordered colours (small model = dark, large = light) to series labels."""
    cmap = colormaps["viridis"]
    stops = np.linspace(0.0, 0.85, max(len(labels), 2))
    return {label: tuple(cmap(s)) for label, s in zip(labels, stops, strict=False)}


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def _wide_positive(values: np.ndarray, min_range: float = 1.0) -> bool:
    """True when all values are positive and span more than ``min_range`` times."""
    v = _finite(values)
    return v.size > 0 and bool(np.all(v > 0)) and v.max() / v.min() > min_range


def human(value: float, _pos: int | None = None) -> str:
    """Format a count compactly: 14000000 -> '14M', 1.4e9 -> '1.4B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plain(value: float, _pos: int | None = None) -> str:
    return f"{value:g}"


def log_ticks(axis: Axis, values: np.ndarray, fmt: Callable[[float, int | None], str] = _plain) -> None:
    """Label a log axis without clutter: linear-spaced ticks under one decade, 1-2-5 under two."""
    v = _finite(values)
    v = v[v > 0]
    span = float(np.log10(v.max() / v.min())) if v.size else 0.0
    if span < 1.0:
        axis.set_major_locator(MaxNLocator(nbins=5))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def _step_axis(ax: Axes, steps: np.ndarray) -> None:
    s = _finite(steps)
    if s.size and s.min() <= 0:
        ax.set_xscale("symlog", linthresh=1.0)
    elif s.size:
        ax.set_xscale("log")
    ax.set_xlabel("training step")


def _log_y_if_wide(ax: Axes, values: np.ndarray, min_range: float = 30.0) -> None:
    """Use a log y axis for positive data spanning more than ``min_range`` times."""
    if _wide_positive(values, min_range):
        ax.set_yscale("log")
        log_ticks(ax.yaxis, values)


MAX_LEGEND_COLUMNS = 4


def _legend_columns(n: int) -> list[int]:
    """Column counts to try for ``n`` entries, most first, each giving rows as full as it can."""
    counts = [math.ceil(n / rows) for rows in range(math.ceil(n / MAX_LEGEND_COLUMNS), n + 1)]
    return list(dict.fromkeys(counts))


def _legend(ax: Axes) -> None:
    """Put the legend below the axes, in as many columns as fit, growing the figure to hold it.

    Inside the axes a legend covered data wherever none of its spots was free (lines that
    span the width, a CI band, eight series of long model names); to the right it squeezed
    the axes to a sliver. Below, it covers nothing and the axes keep their size.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = [_escape_dollars(label) for label in labels]
    for ncol in _legend_columns(len(labels)):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small",
                            frameon=False)
        width = legend.get_window_extent(renderer).width
        if width <= 0.98 * fig.bbox.width:
            break
        legend.remove()
        if ncol == 1:  # one column and still too wide: wrap the labels
            chars = int(max(map(len, labels)) * 0.9 * fig.bbox.width / width)
            legend = fig.legend(handles, [_wrap(label, chars) for label in labels],
                                loc="outside lower center", ncol=1, fontsize="small", frameon=False)
    height = legend.get_window_extent(renderer).height / fig.dpi
    fig.set_figheight(fig.get_figheight() + height)


def _fit_label(fit: ScalingFit) -> str:
    r2 = "" if fit.r2 is None else f", R²={fit.r2:.3f}"
    exp = curves.EXPONENT.get(fit.form)
    value = "" if exp not in fit.params else f", {exp}={fit.params[exp]:.3g}"
    return f"{fit.form}{value}{r2}"


def _past(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """``values`` with -inf / inf moved far below / above ``finite`` (on linear and log axes)."""
    low, high = float(finite.min()), float(finite.max())
    span = (high - low) or max(abs(high), 1.0)
    below = min(low - 10 * span, low / 1e3) if low > 0 else low - 10 * span
    above = max(high + 10 * span, high * 1e3) if high > 0 else high + 10 * span
    return np.where(values == -np.inf, below, np.where(values == np.inf, above, values))


def _draw_fit(ax: Axes, fit: ScalingFit, grid: np.ndarray, color: str) -> np.ndarray | None:
    """Draw a fit's curve and exponent band; return None when the fit has no curve.

    Returns the finite values drawn when the band is open-ended (an exponent CI with an
    infinite end), else an empty array: the caller then sets the y limits from them and
    the data, and the open side of the band runs off the axes.
    """
    line = curves.evaluate(fit, grid)
    if line is None:
        return None
    ax.plot(grid, line, "--", color=color, lw=1.5, label=_fit_label(fit))
    band = curves.exponent_band(fit, grid)
    if band is None:
        return np.empty(0)
    label = f"{curves.EXPONENT[fit.form]} CI band"
    stack = np.concatenate([line, *band])
    finite = stack[np.isfinite(stack)]
    if finite.size == stack.size:
        ax.fill_between(grid, *band, color=color, alpha=0.15, lw=0, label=label)
        return np.empty(0)
    ax.fill_between(grid, _past(band[0], finite), _past(band[1], finite), color=color, alpha=0.15,
                    lw=0, label=f"{label} (open-ended)")
    return finite


def _set_ylim(ax: Axes, values: np.ndarray) -> None:
    """Y limits around ``values`` with a 5% margin (in log space on a log axis)."""
    low, high = float(values.min()), float(values.max())
    if ax.get_yscale() == "log":
        pad = (high / low) ** 0.05
        ax.set_ylim(low / pad, high * pad)
    else:
        pad = 0.05 * ((high - low) or max(abs(high), 1.0))
        ax.set_ylim(low - pad, high + pad)


def _values(measured: Sequence[np.ndarray], fitted: Sequence[Sequence[float]]) -> np.ndarray:
    """The finite measured values and the fits' data, in one array (empty when none)."""
    return np.concatenate([np.empty(0), *(_finite(v) for v in measured), *(np.array(v) for v in fitted)])


def _grid(points: Mapping[str, Points], fits: Sequence[ScalingFit]) -> np.ndarray:
    xs = _values([p.x for p in points.values()], [f.x for f in fits])
    xs = xs[xs > 0]
    if xs.size == 0:
        return np.array([])
    return np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 200)


def scaling_plot(
    points: Mapping[str, Points],
    fits: Sequence[ScalingFit],
    *,
    x_label: str,
    y_label: str,
) -> Figure:
    """Plot a metric against parameter count (log-log where possible) with fitted curves.

    Args:
        points: Measured points per model family (each size at its last checkpoint, as the fits compare them).
        fits: Fits of this metric against the same x; each adds a curve and CI band.
        x_label: Axis label for the parameter count.
        y_label: Axis label for the metric.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    fit_colors = ["black", "tab:red", "tab:blue", "tab:green"]
    for (family, p), color in zip(points.items(), ["tab:blue", "tab:orange", "tab:green"] * 9, strict=False):
        ax.plot(p.x, p.y, "o-", color=color, lw=1, ms=5, label=family if len(points) > 1 else None)
        for x, y, text in zip(p.x, p.y, p.labels, strict=False):
            if np.isfinite(x) and np.isfinite(y):
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    grid = _grid(points, fits)
    drawn, open_values = [], []
    for fit, color in zip(fits, fit_colors * 4, strict=False):
        shown = _draw_fit(ax, fit, grid, color) if grid.size else None
        if shown is not None:
            drawn.append(fit)
            open_values.append(shown)
    data = next((f for f in drawn if f.x), None)
    if data is not None:  # the points the fits used, once
        ax.plot(data.x, data.y, "o", mfc="none", mec="black", ms=9, label=f"fit data (n={len(data.x)})")
    ys = _values([p.y for p in points.values()], [f.y for f in fits])
    ax.set_xscale("log")
    log_ticks(ax.xaxis, np.concatenate([grid] + [p.x for p in points.values()]), human)
    if _wide_positive(ys):
        ax.set_yscale("log")
        log_ticks(ax.yaxis, ys)
    if any(v.size for v in open_values):  # an open band must not set the limits
        limits = np.concatenate([_finite(ys), *open_values])
        _set_ylim(ax, limits[limits > 0] if ax.get_yscale() == "log" else limits)
    ax.set(xlabel=x_label, ylabel=y_label, title=y_label)
    _legend(ax)
    return fig


def steps_plot(lines: Mapping[str, XY], colors: Mapping[str, Color], *, y_label: str) -> Figure:
    """Plot a scalar metric against training step, one line per size.

    Args:
        lines: ``(steps, values)`` per series label.
        colors: Colour per series label.
        y_label: Metric name.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    for label, (steps, values) in lines.items():
        ax.plot(steps, values, "o-", color=colors.get(label), ms=3, lw=1.2, label=label)
    _step_axis(ax, np.concatenate([s for s, _ in lines.values()]))
    _log_y_if_wide(ax, np.concatenate([v for _, v in lines.values()]))
    ax.set(ylabel=y_label, title=y_label)
    _legend(ax)
    return fig


# magma_r without its palest tenth: its first colour (a score just above 0) was all but white,
# the colour of an exact 0 (luminance contrast 1.06; from 0.1 on, 1.44).
_SCORE_CMAP = ListedColormap(colormaps["magma_r"](np.linspace(0.1, 1.0, 256)))


def heatmap(
    matrix: np.ndarray,
    *,
    title: str,
    vmax: float | None = None,
    threshold: float | None = None,
    zero_white: bool = False,
) -> Figure:
    """Plot a (layer, head) matrix; NaN cells (not measured) are grey.

    Args:
        matrix: Values indexed ``[layer, head]``.
        title: Plot title.
        vmax: Upper end of the colour scale (shared across sizes); data max when None.
        threshold: If given, the title counts the cells above it.
        zero_white: Scores in [0, 1]: colour from 0 and show exact zeros white.

    Returns:
        The figure.
    """
    n_layers, n_heads = matrix.shape
    fig, ax = new_figure((max(3.4, 1.6 + 0.22 * n_heads), max(2.6, 1.2 + 0.16 * n_layers)))
    ax.grid(False)
    values = _finite(matrix)
    top = vmax if vmax is not None else (float(values.max()) if values.size else 1.0)
    if zero_white:
        cmap = _SCORE_CMAP.with_extremes(bad="lightgrey", under="white")
        low, top = 1e-12, max(top, 1e-9)
    else:
        cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
        low = float(values.min()) if values.size else 0.0
    im = ax.imshow(
        np.ma.masked_invalid(matrix),
        cmap=cmap,
        origin="lower",
        aspect="auto",
        vmin=low,
        vmax=max(top, low),
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, shrink=0.9)
    if threshold is not None:
        title = f"{title}: {int(np.sum(values > threshold))}/{matrix.size} heads > {threshold:g}"
    ax.set(xlabel="head", ylabel="layer", title=title)
    ax.title.set_fontsize("medium")
    return fig


def per_layer_plot(
    lines: Mapping[str, XY],
    colors: Mapping[str, Color],
    *,
    y_label: str,
    reference: tuple[float, str] | None = None,
) -> Figure:
    """Plot a per-layer metric at the latest checkpoint, one line per size.

    Args:
        lines: ``(layers, values)`` per series label.
        colors: Colour per series label.
        y_label: Metric name.
        reference: Optional ``(y, label)`` horizontal reference line; the y axis is
            logarithmic when the data and the reference span more than 30 times.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    for label, (layers, values) in lines.items():
        ax.plot(layers, values, "o-", color=colors.get(label), ms=3, lw=1.2, label=label)
    shown = np.concatenate([v for _, v in lines.values()])
    if reference is not None:
        ax.axhline(reference[0], color="grey", ls=":", lw=1, label=reference[1])
        shown = np.append(shown, reference[0])  # far above the data, it flattened a linear axis
    _log_y_if_wide(ax, shown)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel=y_label, title=y_label)
    _legend(ax)
    return fig


def overlap_plot(points: Mapping[str, tuple[float, float, float]], colors: Mapping[str, Color]) -> Figure:
    """Plot mean squared overlap of normalised unembedding rows against 1/m.

    Args:
        points: ``(inv_m, overlap, centered_overlap)`` per size; NaN where absent.
        colors: Colour per size label.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    for label, (inv_m, overlap, centered) in points.items():
        ax.plot([inv_m], [overlap], "o", color=colors.get(label), ms=7, label=label)
        if np.isfinite(centered):
            ax.plot([inv_m], [centered], "s", mfc="none", mec=colors.get(label), ms=7)
    xs = _finite(np.array([p[0] for p in points.values()]))
    if xs.size and np.all(xs > 0):
        ref = np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 20)
        ax.plot(ref, ref, color="grey", ls=":", lw=1, label="y = 1/m (random unit vectors)")
        ax.plot([], [], "s", mfc="none", mec="grey", label="centred rows")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ys = _finite(np.array([v for p in points.values() for v in p[1:]]))
        log_ticks(ax.xaxis, ref)
        log_ticks(ax.yaxis, np.concatenate([ref, ys[ys > 0]]))
    ax.set(
        xlabel="1/m (inverse width)",
        ylabel="mean squared overlap",
        title="superposition: overlap vs 1/m",
    )
    _legend(ax)
    return fig


def group_bars(
    values: Mapping[str, Mapping[str, float]],
    groups: Sequence[str],
    colors: Mapping[str, Color],
    *,
    y_label: str,
    reference: float | None = 1.0,
) -> Figure:
    """Grouped bar chart: one group per layer group, one bar per size.

    Args:
        values: ``{size label: {group: value}}``.
        groups: Group names in display order (e.g. early, middle, late).
        colors: Colour per size label.
        y_label: Metric name.
        reference: Optional horizontal line (1.0 = parity for MDI/AEI).

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    width = 0.8 / max(len(values), 1)
    base = np.arange(len(groups))
    for i, (label, by_group) in enumerate(values.items()):
        heights = [by_group.get(g, np.nan) for g in groups]
        ax.bar(base + i * width - 0.4 + width / 2, heights, width, color=colors.get(label), label=label)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1, label=f"parity ({reference:g})")
    all_values = np.array([v for d in values.values() for v in d.values()], dtype=float)
    _log_y_if_wide(ax, all_values, 10.0)
    ax.set_xticks(base, groups)
    ax.set(ylabel=y_label, title=f"{y_label} by layer group")
    _legend(ax)
    return fig


MAX_LEGEND_LAYERS = 8
_LAYER_CMAP = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.9, 256)))  # no pale yellow


def dynamics_plot(
    observed: Mapping[int, XY], fitted: Mapping[int, dict[str, float]], *, title: str, y_label: str
) -> Figure:
    """Plot a per-layer metric over training with the fitted dynamics curves.

    Layers are coloured by depth; beyond `MAX_LEGEND_LAYERS` layers a colour bar
    replaces the per-layer legend.

    Args:
        observed: ``(steps, values)`` per layer.
        fitted: Fit parameters (A, lambda or lam, gamma, t0, K) per layer.
        title: Plot title.
        y_label: Metric name.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    layers = sorted(set(observed) | set(fitted))
    norm = Normalize(vmin=min(layers, default=0), vmax=max(max(layers, default=1), 1))
    few = len(layers) <= MAX_LEGEND_LAYERS
    steps = np.concatenate([s for s, _ in observed.values()] + [np.array([0.0, 1.0])])
    grid = np.unique(np.concatenate([np.linspace(0, steps.max(), 200), np.geomspace(1, steps.max(), 200)]))
    for layer in layers:
        color = _LAYER_CMAP(norm(layer))
        if layer in observed:
            ax.plot(*observed[layer], "o", color=color, ms=4, label=f"layer {layer}" if few else None)
        curve = curves.dynamics_from_params(grid, fitted.get(layer, {}))
        if curve is not None:
            ax.plot(grid, curve, "-", color=color, lw=1.2)
    ax.plot([], [], "-", color="grey", label="fit A·e^(−λx)·log x + K")
    if not few:
        fig.colorbar(ScalarMappable(norm, _LAYER_CMAP), ax=ax, label="layer", shrink=0.9)
    _step_axis(ax, steps)
    ax.set(ylabel=y_label, title=title)
    _legend(ax)
    return fig


def capacity_plot(points: Mapping[str, tuple[float, float]], colors: Mapping[str, Color], *,
                  mean: float | None = None) -> Figure:
    """Plot information capacity against FLOPs per token, one point per size.

    Args:
        points: ``(flops_per_token, information_capacity)`` per size label.
        colors: Colour per size label.
        mean: Mean capacity over the sizes, drawn as a dotted line when given.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    for label, (flops, capacity) in points.items():
        ax.plot([flops], [capacity], "o", color=colors.get(label), ms=7, label=label)
    if mean is not None and np.isfinite(mean):
        ax.axhline(mean, color="grey", ls=":", lw=1, label=f"mean {mean:.3g}")
    xs = _finite(np.array([p[0] for p in points.values()]))
    if xs.size and np.all(xs > 0):
        ax.set_xscale("log")
        log_ticks(ax.xaxis, xs, human)
    ax.set(xlabel="FLOPs per token", ylabel="information capacity",
           title="information capacity vs FLOPs per token")
    _legend(ax)
    return fig
