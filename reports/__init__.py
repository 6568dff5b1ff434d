"""Per-scale reports: one self-contained HTML file plus a Markdown summary per run directory."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["ReportPaths", "render_report"]


class _NoFontCacheSaveWarning(logging.Filter):
    """Drop matplotlib's "Could not save font_manager cache" warning; pass every other record.

    matplotlib builds its font list on first import and saves it as a cache (``MPLCONFIGDIR``);
    on a full disk the save fails, and matplotlib, which goes on without the cache, logged a
    second stderr line beside the report's own one-line error. Installed here, before any
    module of this package imports matplotlib.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Could not save font_manager cache")


logging.getLogger("matplotlib.font_manager").addFilter(_NoFontCacheSaveWarning())


def __getattr__(name: str) -> Any:
    """Import the renderer on first use, so ``reports.cli`` stays cheap to import."""
    if name in __all__:
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
