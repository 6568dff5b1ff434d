"""Everything a report reads from one run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScalelensError
from .metrics import MetricTable, Series, load_metrics
from .plots import Color, palette
from .runfiles import Fits, load_fits, load_run_info


@dataclass(frozen=True)
class Run:
    """A loaded run directory: metrics, fits and the optional run description."""

    path: Path
    table: MetricTable
    fits: Fits
    info: dict[str, Any] | None

    def series(self) -> list[Series]:
        """Return the (model, size) series, smallest first."""
        return self.table.series()

    def colors(self) -> dict[str, Color]:
        """Return one colour per series label, ordered by size."""
        return palette([self.table.label(s) for s in self.series()])


def load_run(run_dir: Path) -> Run:
    """Load ``metrics.csv``, ``fits.json`` (optional) and ``run.json`` (optional).

    Args:
        run_dir: Directory written by a sweep.

    Returns:
        The loaded run.

    Raises:
        ScalelensError: The directory or its metrics are missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScalelensError(f"run directory {run_dir} does not exist; pass the output directory of a sweep")
    return Run(
        path=run_dir,
        table=load_metrics(run_dir / "metrics.csv"),
        fits=load_fits(run_dir / "fits.json"),
        info=load_run_info(run_dir / "run.json"),
    )
