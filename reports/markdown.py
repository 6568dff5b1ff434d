"""The Markdown summary written beside the HTML report."""

from __future__ import annotations

import re
from urllib.parse import quote

from .tables import Table

_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})

_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
"""An ``_`` not inside a word: one that may open or close emphasis (``n_params`` cannot)."""


def escape(text: str) -> str:
    """Escape text for Markdown: no raw HTML, breaking pipes or newlines, emphasis, links or code.

    A path like ``runs/*/a`` or a name holding a backtick, ``_x_``, ``~~x~~`` or ``[x](y)``
    is shown as written, not as emphasis, a link or inline code spanning the cells after it.
    An ``_`` inside a word (``n_params``) and brackets not followed by ``(`` (``b ∈ [0, 1]``)
    are left as they are: they cannot start emphasis or a link (the summary defines no
    reference links).
    """
    text = text.translate(_HTML).replace("\\", "\\\\")
    for char in "|*`~":
        text = text.replace(char, "\\" + char)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text).replace("](", "\\](")  # [x](y) is a link; [x] alone is not
    return " ".join(text.splitlines())  # \r, \u2028 ... end a table row as \n does


def table(t: Table) -> str:
    """Render a `Table` as a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(escape(c) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _section(title: str, t: Table, empty: str) -> list[str]:
    note = [f"_{escape(t.note)}_", ""] if t.note and t.rows else []
    return [f"## {title}", "", *note, table(t) if t.rows else f"_{empty}_", ""]


def summary(title: str, html_name: str, tables: dict[str, Table]) -> str:
    """Build the Markdown summary.

    Args:
        title: Document title.
        html_name: File name of the full HTML report, linked relatively.
        tables: Tables keyed by ``run``, ``sizes``, ``fits``, ``dynamics``, ``trends``, ``scalars``,
            and optionally ``retrieval``.

    Returns:
        The Markdown text.
    """
    lines = [
        f"# {escape(title)}",
        "",
        f"Plots and the full report: [{escape(html_name)}]({quote(html_name)}).",
        "",
    ]
    if tables["run"].rows:
        lines += _section("Run", tables["run"], "")
    lines += _section("Sizes", tables["sizes"], "No sizes.")
    lines += _section("Scaling fits", tables["fits"], tables["fits"].empty or "No scaling fits in fits.json.")
    lines += _section("Training-dynamics fits", tables["dynamics"], "No training-dynamics fits in fits.json.")
    lines += _section("Trends over training", tables["trends"], tables["trends"].empty)
    lines += _section("Scalar metrics at the latest checkpoint", tables["scalars"], "No scalar metrics.")
    if "retrieval" in tables and tables["retrieval"].rows:  # a run without retrieval heads: no section
        lines += _section("Retrieval heads at the latest checkpoint", tables["retrieval"], "")
    return "\n".join(lines)
