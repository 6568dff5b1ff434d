"""Load and query the sweep's long-format metrics table (``RUN_DIR/metrics.csv``)."""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ScalelensError
from ..sweeps.metrics import COLUMNS  # the writer's column contract
from ..textfiles import read_utf8


@dataclass(frozen=True, order=True)
class Series:
    """One model size of one model family: a line in every per-size plot."""

    model: str
    size: str


MAX_INDEX = 100_000
"""Layer and head indices are below this (a larger one is a corrupt file, not a model)."""


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One value of ``metrics.csv``; ``layer``/``head`` are None where not applicable."""

    model: str
    size: str
    revision: str
    step: int | None
    n_params: float
    n_params_non_embedding: float
    analysis: str
    metric: str
    layer: int | None
    head: int | None
    value: float

    @property
    def key(self) -> str:
        """Return the metric's full name, ``analysis.metric``."""
        return f"{self.analysis}.{self.metric}"

    @property
    def series(self) -> Series:
        """Return the (model, size) this value belongs to."""
        return Series(self.model, self.size)

    @property
    def kind(self) -> str:
        """Return ``scalar``, ``layer`` (one value per layer) or ``head`` (per layer and head)."""
        if self.head is not None:
            return "head"
        return "layer" if self.layer is not None else "scalar"


def step_rank(step: int | None) -> float:
    """Order checkpoints; a row without a step (e.g. ``main``) counts as the latest."""
    return math.inf if step is None else float(step)


@dataclass(frozen=True)
class MetricTable:
    """All rows of one run, indexed once by (metric, series) for the report's queries."""

    rows: tuple[MetricRow, ...]
    _groups: dict[tuple[str, Series], list[MetricRow]] = field(init=False, repr=False)
    _first: dict[Series, MetricRow] = field(init=False, repr=False)
    _kinds: dict[str, dict[str, None]] = field(init=False, repr=False)
    _last_step: int | None = field(init=False, repr=False)
    _newest: dict[Series, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        groups: dict[tuple[str, Series], list[MetricRow]] = defaultdict(list)
        first: dict[Series, MetricRow] = {}
        newest: dict[Series, float] = {}
        kinds: dict[str, dict[str, None]] = {"scalar": {}, "layer": {}, "head": {}}
        for r in self.rows:
            series, key = r.series, r.key
            groups[key, series].append(r)
            first.setdefault(series, r)
            newest[series] = max(newest.get(series, -math.inf), step_rank(r.step))
            kinds[r.kind].setdefault(key)
        object.__setattr__(self, "_groups", dict(groups))
        object.__setattr__(self, "_first", first)
        object.__setattr__(self, "_kinds", kinds)
        object.__setattr__(self, "_newest", newest)
        last = max((r.step for r in self.rows if r.step is not None), default=None)
        object.__setattr__(self, "_last_step", last)

    def series(self) -> list[Series]:
        """Return every (model, size), smallest parameter count first."""
        return sorted(self._first, key=lambda s: (_nan_last(self._first[s].n_params), s))

    def label(self, series: Series) -> str:
        """Return the legend label: the size alone unless two models share a size label.

        Every size of a family has its own model name (``pythia-70m``, ``pythia-160m``), so the
        size names a series unless the run mixes families with a size in common.
        """
        if len({s.size for s in self._first}) < len(self._first):
            return f"{series.model} {series.size}"
        return series.size

    @staticmethod
    def family(series: Series) -> str:
        """Return the model family: the model name without its size (``pythia-70m`` -> ``pythia``).

        Each size of a family has its own model name, so grouping by name alone would make
        every size a family of one.
        """
        suffix = f"-{series.size}"
        if series.model.endswith(suffix) and len(series.model) > len(suffix):
            return series.model[: -len(suffix)]
        return series.model

    def n_params(self, series: Series, x_name: str = "n_params") -> float:
        """Return a fit's x for one series.

        ``n_params``, ``n_params_non_embedding``, or a scalar metric such as
        ``superposition.m`` (the width the loss is fitted against).
        """
        if "." in x_name:
            return self.scalar(x_name, series)
        row = self._first.get(series)
        return math.nan if row is None else float(getattr(row, x_name))

    def _of_series(self, series: Series) -> list[MetricRow]:
        return [r for (_, s), rows in self._groups.items() if s == series for r in rows]

    def latest_rows(self, series: Series) -> list[MetricRow]:
        """Return every row of one series at its latest checkpoint."""
        rows = self._of_series(series)
        last = max((step_rank(r.step) for r in rows), default=None)
        return [r for r in rows if step_rank(r.step) == last]

    def steps(self, series: Series) -> list[int]:
        """Return the sorted training steps measured for one series."""
        return sorted({r.step for r in self._of_series(series) if r.step is not None})

    def revisions(self, series: Series) -> set[str]:
        """Return the checkpoint revisions measured for one series."""
        return {r.revision for r in self._of_series(series)}

    def keys(self, kind: str) -> list[str]:
        """Return the metric names of one kind (see `MetricRow.kind`) in order of appearance."""
        return list(self._kinds.get(kind, {}))

    def select(self, key: str, series: Series | None = None) -> list[MetricRow]:
        """Return the rows of one metric, optionally of one series only."""
        if series is not None:
            return list(self._groups.get((key, series), ()))
        return [r for (k, _), rows in self._groups.items() if k == key for r in rows]

    def latest(self, key: str, series: Series) -> list[MetricRow]:
        """Return one metric's rows at the latest checkpoint that has it for this series."""
        rows = self.select(key, series)
        if not rows:
            return []
        last = max(step_rank(r.step) for r in rows)
        return [r for r in rows if step_rank(r.step) == last]

    def earlier_step(self, key: str, series: Series) -> int | None:
        """Return the step `latest` takes ``key`` from when it is older than the size's latest checkpoint.

        None when the size's latest checkpoint has the metric (or nothing has it): the values
        shown as "the latest" are then the latest.
        """
        rows = self.latest(key, series)
        if not rows or step_rank(rows[0].step) == self._newest.get(series):
            return None
        return rows[0].step

    def scalar(self, key: str, series: Series) -> float:
        """Return a scalar metric at its latest checkpoint, NaN when absent."""
        rows = [r for r in self.latest(key, series) if r.kind == "scalar"]
        return rows[-1].value if rows else math.nan

    def scalar_at_last_step(self, key: str, series: Series, step: int | None = None) -> float:
        """Return a scalar metric at its last step, as the scaling fits compare sizes.

        ``step``: the size's own last step (fits.json's ``last_steps``); None: the run's last.
        NaN when this series lacks that step (its latest checkpoint may not stand in for it);
        the latest value when the run has no steps (e.g. ``main`` revisions only).
        """
        if self._last_step is None:
            return self.scalar(key, series)
        return self.scalar_at_step(key, series, self._last_step if step is None else step)

    def scalar_at_step(self, key: str, series: Series, step: int | None) -> float:
        """Return a scalar metric at exactly ``step`` (None: a model measured without one); NaN if absent."""
        rows = [r for r in self.select(key, series) if r.step == step and r.kind == "scalar"]
        return rows[-1].value if rows else math.nan

    def over_steps(self, key: str, series: Series, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(steps, values)`` arrays of a scalar (or one layer's) metric over training."""
        pairs = sorted(
            (r.step, r.value)
            for r in self.select(key, series)
            if r.step is not None and r.layer == layer and r.head is None
        )
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def by_layer(self, key: str, series: Series) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(layers, values)`` arrays of a per-layer metric at the latest checkpoint."""
        pairs = sorted(
            (r.layer, r.value) for r in self.latest(key, series) if r.kind == "layer" and r.layer is not None
        )
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def head_matrix(self, key: str, series: Series) -> np.ndarray:
        """Return a (layer, head) matrix at the latest checkpoint; NaN where nothing was stored."""
        cells = [
            (r.layer, r.head, r.value)
            for r in self.latest(key, series)
            if r.layer is not None and r.head is not None
        ]
        if not cells:
            return np.zeros((0, 0))
        out = np.full((max(c[0] for c in cells) + 1, max(c[1] for c in cells) + 1), np.nan)
        for layer, head, value in cells:
            out[layer, head] = value
        return out


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _optional_int(text: str, what: str, line: int, limit: float = math.inf) -> int | None:
    """An integer in ``[0, limit)``, or None for an empty cell."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = -1
    if not 0 <= value < limit:
        bound = f" below {limit:,.0f}" if math.isfinite(limit) else ""
        raise ScalelensError(
            f"metrics.csv line {line}: {what}={text!r} is not an integer >= 0{bound}; "
            "fix or regenerate the file with the sweep"
        )
    return value


def _float(text: str, what: str, line: int) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ScalelensError(
            f"metrics.csv line {line}: {what}={text!r} is not a number; "
            "fix or regenerate the file with the sweep"
        ) from None


def _parse_row(rec: list[str], col: dict[str, int], line: int) -> MetricRow:
    text = sys.intern  # model/size/analysis/metric repeat on every row
    return MetricRow(
        model=text(rec[col["model"]]),
        size=text(rec[col["size"]]),
        revision=text(rec[col["revision"]]),
        step=_optional_int(rec[col["step"]], "step", line),
        n_params=_float(rec[col["n_params"]], "n_params", line),
        n_params_non_embedding=_float(rec[col["n_params_non_embedding"]], "n_params_non_embedding", line),
        analysis=text(rec[col["analysis"]]),
        metric=text(rec[col["metric"]]),
        layer=_optional_int(rec[col["layer"]], "layer", line, MAX_INDEX),
        head=_optional_int(rec[col["head"]], "head", line, MAX_INDEX),
        value=_float(rec[col["value"]], "value", line),
    )


def parse_metrics(lines: Iterable[str]) -> MetricTable:
    """Parse metrics.csv text (header + rows) into a `MetricTable`.

    Args:
        lines: The CSV lines, header first.

    Returns:
        The parsed table.

    Raises:
        ScalelensError: A column is missing, a row is short, a number does not parse, or
            there are no rows.
    """
    reader = csv.reader(lines)
    header = [name.strip() for name in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ScalelensError(
            f"metrics.csv lacks column(s) {', '.join(missing)}; expected header "
            f"'{','.join(COLUMNS)}' as written by the sweep"
        )
    col = {name: header.index(name) for name in COLUMNS}
    rows = []
    for line, rec in enumerate(reader, start=2):
        if not rec:
            continue
        if len(rec) < len(header):
            raise ScalelensError(
                f"metrics.csv line {line} has {len(rec)} field{'' if len(rec) == 1 else 's'}, "
                f"the header {len(header)}; "
                "fix or regenerate the file with the sweep"
            )
        rows.append(_parse_row(rec, col, line))
    if not rows:
        raise ScalelensError("metrics.csv has a header but no rows; run the sweep to fill it")
    return MetricTable(tuple(rows))


def load_metrics(path: Path) -> MetricTable:
    """Read ``metrics.csv`` from disk.

    Args:
        path: Path of the CSV file.

    Returns:
        The parsed table.

    Raises:
        ScalelensError: The file is missing or malformed.
    """
    if not path.is_file():
        raise ScalelensError(
            f"no metrics.csv in {path.parent}; pass the output directory of a finished sweep"
        )
    try:  # streamed: a full Pythia sweep's 94 MB file read whole peaked at 2.9x its size
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return parse_metrics(fh)
    except UnicodeDecodeError:  # the offset in the whole file, for the one-line error
        read_utf8(path, "metrics file")
        raise
