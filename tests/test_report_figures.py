"""The report's figures as a reader sees them: measured on the drawn matplotlib artists.

Each test draws a figure with the report's own plotting functions, on values like those of a
real run (the micro demo suite, Pythia shapes, long model names), and measures the rendered
boxes: a legend must not cover the axes, tick labels must not run into each other, titles
must stay inside the figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.text import Text

from scalelens.reports import plots

LONG = ("EleutherAI/pythia-deduped-v0-long-experimental-name",
        "EleutherAI/pythia-standard-training-run-seed-1234")
STEPS = np.array([0, 1, 2, 4, 8, 16, 24], dtype=float)


def _renderer(fig: Figure) -> RendererBase:
    fig.canvas.draw()
    return fig.canvas.get_renderer()  # type: ignore[attr-defined]


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
