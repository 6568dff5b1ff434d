"""The report's figures as a reader sees them: measured on the drawn matplotlib artists.

Each test draws a figure with the report's own plotting functions, on values like those of a
real run (the micro demo suite, Pythia shapes, long model names), and measures the rendered
boxes: a legend must not cover the axes, tick labels must not run into each other, titles
must stay inside the figure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from scalelens.reports import plots
from scalelens.reports.runfiles import ScalingFit

LONG = ("EleutherAI/pythia-deduped-v0-long-experimental-name",
        "EleutherAI/pythia-standard-training-run-seed-1234")
SIZES = ("14m", "70m", "160m", "410m")
LABELS = [f"{model} {size}" for size in SIZES for model in LONG]  # 8 series, as two families share sizes
COLORS = plots.palette(LABELS)
STEPS = np.array([0, 1, 2, 4, 8, 16, 24], dtype=float)


def _renderer(fig: Figure) -> RendererBase:
    fig.canvas.draw()
    return fig.canvas.get_renderer()  # type: ignore[attr-defined]


def _overlap(a: Bbox, b: Bbox, slack: float = 1.0) -> bool:
    """True when the boxes share more than ``slack`` pixels in both directions."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


def _tick_boxes(fig: Figure, axis: str) -> list[Bbox]:
    """The boxes of the tick labels shown on the first axes' x or y axis, major and minor."""
    renderer = _renderer(fig)
    ax = fig.axes[0]
    which = ax.xaxis if axis == "x" else ax.yaxis
    low, high = sorted(which.get_view_interval())
    ticks = [*which.get_major_ticks(), *which.get_minor_ticks()]
    labels = [t.label1 for t in ticks if low <= t.get_loc() <= high]
    return [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]


def _steps() -> Figure:
    lines = {label: (STEPS, 20_000.0 * (1 + i) + 0 * STEPS) for i, label in enumerate(LABELS)}
    return plots.steps_plot(lines, COLORS, y_label="information_capacity.flops_per_token")


def _per_layer() -> Figure:
    lines = {label: (np.arange(6.0), 3.0 + np.arange(6.0) + i) for i, label in enumerate(LABELS)}
    return plots.per_layer_plot(lines, COLORS, y_label="MDI", reference=(1.0, "parity (1)"))


def _scaling() -> Figure:
    x = np.array([15_600.0, 37_344.0, 50_048.0, 93_504.0])
    y = np.array([-1.055, -0.918, -0.889, -0.809])
    points = {model: plots.Points(x=x * (1 + i), y=y, labels=["16k", "37k", "50k", "94k"])
              for i, model in enumerate(LONG)}
    fit = ScalingFit("information_capacity.information_capacity", "n_params", "saturating",
                     {"C": -7.433, "alpha": 0.2473, "y_inf": -0.3719},
                     {"alpha": (0.0, float("inf"))}, r2=0.998, x=tuple(x), y=tuple(y))
    return plots.scaling_plot(points, [fit], x_label="n_params", y_label=fit.metric)


def _bars() -> Figure:
    values = {label: {"early": 3.9, "middle": 6.8, "late": 3.9} for label in LABELS}
    return plots.group_bars(values, ["early", "middle", "late"], COLORS, y_label="mdi")


def _overlap_plot() -> Figure:
    points = {label: (1 / (16 * (1 + i)), 0.55, 0.6) for i, label in enumerate(LABELS)}
    return plots.overlap_plot(points, COLORS)


def _capacity() -> Figure:
    points = {label: (20_000.0 * (1 + i), -1.0 + 0.03 * i) for i, label in enumerate(LABELS)}
    return plots.capacity_plot(points, COLORS, mean=-0.9)


def _dynamics() -> Figure:
    params = {"A": -0.66, "lambda": 0.06, "gamma": 1.15, "t0": 1.0, "K": 5.37}
    observed = {layer: (STEPS, 5.4 - 0.1 * STEPS + layer) for layer in range(6)}
    return plots.dynamics_plot(observed, dict.fromkeys(range(6), params), title=f"{LONG[0]} 14m: ratio",
                               y_label="massive_activations.ratio")


FIGURES: dict[str, Callable[[], Figure]] = {
    "steps": _steps, "per_layer": _per_layer, "scaling": _scaling, "group_bars": _bars,
    "overlap": _overlap_plot, "capacity": _capacity, "dynamics": _dynamics,
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_a_legend_of_eight_long_names_covers_no_data_and_leaves_the_axes_their_room(name: str) -> None:
    """Inside the axes, eight legend entries of long model names covered the lines (and a
    legend of any names covered a line spanning the width, or a CI band); to the right of
    grouped bars they squeezed the bars to a sliver whose group names ran into each other.
    The legend now sits below the axes, inside the figure, which grows to hold it."""
    fig = FIGURES[name]()
    plots.to_data_uri(fig)
    renderer = _renderer(fig)
    legends = [*fig.legends, *(leg for ax in fig.axes if (leg := ax.get_legend()) is not None)]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    ax = fig.axes[0]
    assert not _overlap(box, ax.get_window_extent(renderer)), (box, ax.get_window_extent(renderer))
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert ax.get_window_extent(renderer).width >= 0.5 * fig.bbox.width
    assert ax.get_window_extent(renderer).height >= 1.8 * fig.dpi
    ticks = _tick_boxes(fig, "x")
    assert not any(_overlap(a, b, slack=0.0) for a, b in itertools.combinations(ticks, 2))


def _inside(text: Text, fig: Figure) -> bool:
    box = text.get_window_extent(_renderer(fig))
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_a_heatmap_title_with_a_long_model_name_stays_inside_the_figure() -> None:
    """A retrieval heatmap's title names the model and size; with a long model name it ran
    off both sides of the figure and was cut. It is wrapped now, with the layout making room."""
    title = f"{LONG[0]} 410m"
    fig = plots.heatmap(np.full((24, 16), 0.05), title=title, vmax=0.4, threshold=0.1, zero_white=True)
    plots.to_data_uri(fig)
    assert _inside(fig.axes[0].title, fig)
    assert fig.axes[0].title.get_text().replace("\n", " ") == f"{title}: 0/384 heads > 0.1"


def test_a_long_metric_name_stays_inside_the_figure_as_title_and_y_label() -> None:
    """A metric name is a plot's title and y label; a long one is wrapped, not cut."""
    name = "custom_analysis." + "_".join(["a_rather_long_metric_name_part"] * 5)
    fig = plots.steps_plot({"16k": (STEPS, STEPS + 1)}, plots.palette(["16k"]), y_label=name)
    plots.to_data_uri(fig)
    ax = fig.axes[0]
    assert _inside(ax.title, fig) and _inside(ax.yaxis.label, fig)


def test_a_dollar_in_a_wrapped_title_stays_escaped() -> None:
    """Wrapping never splits the ``\\$`` that shows a dollar sign as written."""
    title = "fam$x^2$B-" * 12
    fig = plots.heatmap(np.ones((2, 2)), title=title)
    plots.to_data_uri(fig)
    text = fig.axes[0].title.get_text()
    assert "\\\n$" not in text and text.replace("\n", "").replace("\\$", "$") == title
    assert _inside(fig.axes[0].title, fig)


def test_the_layer_axis_shows_whole_layers() -> None:
    """Two-layer models (the micro and default mini suites) got layer ticks at 0.2, 0.4, ..."""
    lines = {"16k": (np.array([0.0]), np.array([3.1])), "50k": (np.array([0.0, 1.0]), np.array([4.7, 4.6]))}
    fig = plots.per_layer_plot(lines, plots.palette(list(lines)), y_label="Hoyer sparsity, resid_post")
    _renderer(fig)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if low <= t <= high]
    assert shown == [0.0, 1.0]


def test_a_reference_far_above_the_data_does_not_flatten_it() -> None:
    """The massive-activation bar at 1000 on a linear axis squeezed ratios of 2.4-6 into the
    bottom 0.4% of the plot, every size one line; the axis is logarithmic now."""
    lines = {"16k": (np.array([0.0]), np.array([2.4])), "94k": (np.array([0.0, 1.0]), np.array([5.6, 6.0]))}
    fig = plots.per_layer_plot(lines, plots.palette(list(lines)), y_label="max|h| / median|h|",
                               reference=(1000.0, "ratio 1000 (Sun et al. bar)"))
    renderer = _renderer(fig)
    ax = fig.axes[0]
    to_pixels = ax.transData.transform
    span = to_pixels((0.0, 6.0))[1] - to_pixels((0.0, 2.4))[1]
    assert span >= 0.1 * ax.get_window_extent(renderer).height
    low, high = ax.get_ylim()
    assert low <= 2.4 and high >= 1000.0


def test_overlap_plot_tick_labels_do_not_run_into_each_other() -> None:
    """With widths 16-48 (under a decade of 1/m), the log axes labelled every minor tick as
    2×10⁻², 3×10⁻², 4×10⁻², ..., which ran into each other."""
    points = {"16k": (1 / 16, 0.57, 0.61), "37k": (1 / 32, 0.53, 0.58), "50k": (1 / 32, 0.53, 0.56),
              "94k": (1 / 48, 0.49, 0.52)}
    fig = plots.overlap_plot(points, plots.palette(list(points)))
    for axis in ("x", "y"):
        boxes = _tick_boxes(fig, axis)
        assert len(boxes) >= 3
        assert not any(_overlap(a, b, slack=0.0) for a, b in itertools.combinations(boxes, 2)), axis


def _luminance(rgb: tuple[float, ...]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_a_retrieval_score_just_above_zero_is_not_white() -> None:
    """In retrieval-score maps white means exactly 0 (45-73% of heads); the smallest positive
    score was drawn in magma's palest yellow, contrast 1.06 against white: a head scoring
    0.001 looked like one scoring 0."""
    matrix = np.array([[0.0, 0.001], [0.2, 0.4]])
    fig = plots.heatmap(matrix, title="14m", vmax=0.4, threshold=0.1, zero_white=True)
    image = fig.axes[0].images[0]
    zero, small = (image.cmap(image.norm(v)) for v in (0.0, 0.001))
    assert zero[:3] == (1.0, 1.0, 1.0)
    assert 1.05 / (_luminance(small) + 0.05) >= 1.3
