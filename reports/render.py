"""Render a run directory into one self-contained HTML report plus a Markdown summary."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..errors import ScalelensError, naming
from ..textfiles import make_dirs, temp_beside
from . import analysis_sections as analyses
from . import extra_sections, markdown, sections, tables
from .rundir import Run, load_run

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
DEFAULT_NAME = "report.html"


@dataclass(frozen=True)
class ReportPaths:
    """Where a report was written."""

    html: Path
    markdown: Path


def plan(run: Run) -> list[sections.SectionPlan]:
    """Return every plot section of the report, in display order, not yet drawn."""
    return [
        sections.plan_scaling(run),
        sections.plan_steps(run),
        sections.plan_dynamics(run),
        analyses.plan_retrieval(run),
        analyses.plan_massive(run),
        analyses.plan_superposition(run),
        analyses.plan_text_dominance(run),
        extra_sections.plan_capacity(run),
        extra_sections.plan_sparsity(run),
        sections.plan_other(run, analyses.HANDLED | extra_sections.HANDLED),
    ]


def report_tables(run: Run) -> dict[str, tables.Table]:
    """Return the report's tables: run, sizes, fits, dynamics, trends, scalars and retrieval."""
    return {
        "run": tables.info_table(run.info),
        "sizes": tables.sizes_table(run),
        "fits": tables.fits_table(run.fits.scaling, run.fits.notes),
        "dynamics": tables.dynamics_table(run.fits.dynamics),
        "trends": tables.trends_table(run),
        "scalars": tables.latest_scalars_table(run),
        "retrieval": analyses.retrieval_heads_table(run),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _output_paths(run_dir: Path, out_html: Path | None) -> ReportPaths:
    html = Path(out_html) if out_html is not None else run_dir / DEFAULT_NAME
    if html.suffix.lower() == ".md":
        raise ScalelensError(
            f"--out {html} ends in .md, which is where the Markdown summary goes; pass an .html path"
        )
    md = html.with_suffix(".md")
    for path in (html, md):
        if path.is_dir():
            raise ScalelensError(f"--out {html}: {path} is a directory; pass another file path")
        if path.resolve() in _inputs(run_dir):
            raise ScalelensError(f"--out {html} would overwrite the run's own {path.name}; pass another path")
    parent = next((q for q in html.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ScalelensError(f"--out {html} lies under {parent}, which is a file; pass another path")
    return ReportPaths(html=html, markdown=md)


def _inputs(run_dir: Path) -> set[Path]:
    """The files of a run directory that a report must never overwrite."""
    from scalelens.sweeps.rundir import RUN_INFO, RUN_SPEC, RUN_TABLES

    return {(run_dir / name).resolve() for name in (*RUN_TABLES, RUN_INFO, RUN_SPEC)}


def render_report(
    run_dir: Path, out_html: Path | None = None, *, progress: bool | None = None
) -> ReportPaths:
    """Render the per-scale report of a sweep's run directory.

    Reads ``metrics.csv``, and ``fits.json`` and ``run.json`` where present, and writes
    one self-contained HTML file (plots embedded as PNG data URIs) and a Markdown
    summary with the same base name beside it.

    Args:
        run_dir: Directory written by a sweep.
        out_html: HTML path to write; defaults to ``run_dir/report.html``.
        progress: Show a progress bar over the plots; None shows one for many plots
            when stderr is a terminal.

    Returns:
        The paths of the HTML report and the Markdown summary.

    Raises:
        ScalelensError: The inputs are missing or malformed, or ``out_html`` is unusable.
    """
    run = load_run(Path(run_dir))
    paths = _output_paths(run.path, out_html)
    drawn = sections.draw(plan(run), progress=progress)
    tabs = report_tables(run)
    title = f"scalelens report: {run.path.resolve().name}"
    html = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=title,
            run_dir=str(run.path),
            created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            sections=drawn,
            tables=tabs,
            trends_intro=tables.TRENDS_INTRO,
        )
    )
    make_dirs(paths.html.parent)
    _write_both({paths.html: html, paths.markdown: markdown.summary(title, paths.html.name, tabs)})
    return paths


def _write_both(texts: dict[Path, str]) -> None:
    """Write every file aside, then rename each into place: a failure leaves none half-written."""
    tmps = {path: temp_beside(path) for path in texts}  # this write's own: see temp_beside
    try:
        for path, text in texts.items():
            with naming(path):
                tmps[path].write_text(text, encoding="utf-8")
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
