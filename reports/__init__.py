"""Per-scale reports: one self-contained HTML file plus a Markdown summary per run directory."""

from __future__ import annotations

from typing import Any

__all__ = ["ReportPaths", "render_report"]


def __getattr__(name: str) -> Any:
    """Import the renderer on first use, so ``reports.cli`` stays cheap to import."""
    if name in __all__:
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
