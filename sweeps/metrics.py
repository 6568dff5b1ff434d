"""Flatten per-task results.json files into metrics.csv rows."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalelens.errors import ScalelensError, naming
from scalelens.sweeps.rundir import RUN_TABLES
from scalelens.textfiles import replace_unless_same, temp_beside

COLUMNS = ("model", "size", "revision", "step", "n_params", "n_params_non_embedding", "analysis",
           "metric", "layer", "head", "value")

Row = tuple[str, str, Any, Any]  # (analysis, metric, layer, head) -> value appended


def checkpoint_name(step: int | None) -> str:
    """``step 1000``, or ``final model`` for a model measured without a training step.

    Step 0 is a real checkpoint (Pythia's ``step0``); metrics.csv leaves the step of a model
    without one (a plain model directory, a hub id's ``main``) empty.
    """
    return "final model" if step is None else f"step {step}"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _retrieval(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    yield "fraction", None, None, a.get("fraction")
    yield "fraction_zero", None, None, a.get("fraction_zero")
    yield "n_tests_passed", None, None, a.get("n_tests_passed")
    for layer, row in enumerate(a.get("scores") or []):
        for head, value in enumerate(row):
            yield "score", layer, head, value
    abl = a.get("ablation") or {}
    for key in ("recall_unmasked", "recall_top_masked", "recall_random_masked"):
        if key in abl:
            yield key, None, None, abl[key]


def _massive(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    ratios = [_num(row.get("ratio")) for row in a.get("per_layer", [])]
    for row in a.get("per_layer", []):
        for key in ("ratio", "max_abs", "median_abs"):
            yield key, row["layer"], None, row.get(key)
    if ratios and None not in ratios:  # a layer without a ratio (all non-finite) leaves it unknown
        yield "max_ratio", None, None, max(r for r in ratios if r is not None)
    yield "n_massive", None, None, len(a.get("massive", []))
    effect = a.get("intervention") or {}
    for key in ("loss", "delta_zero", "delta_mean"):
        if key in effect:
            yield key, None, None, effect[key]


def _superposition(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    for key in ("mean_sq_overlap", "mean_sq_overlap_centered", "inv_m", "phi_half", "phi_one", "m", "n"):
        yield key, None, None, a.get(key)


def _dominance(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    for row in a.get("per_layer", []):
        for key in ("mdi", "aei_text", "aei_other"):
            yield key, row["layer"], None, row.get(key)
    for group, stats in (a.get("groups") or {}).items():
        for key in ("mdi", "aei_text", "aei_other"):
            yield f"{key}_{group}", None, None, stats.get(key)
    for d in a.get("dilution", []):
        yield f"mdi_middle_x{d['factor']}", None, None, d.get("mdi_middle")


# The compression gain (text bits - NLL bits) stays in results.json: it is the difference of two of these.
CAPACITY_SCALARS = ("information_capacity", "nll_bits_per_token", "text_bits_per_token", "flops_per_token")


def _capacity(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    for key in CAPACITY_SCALARS:
        yield key, None, None, a.get(key)


def _sparsity(a: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    """Per point: ``hoyer_<point>`` per layer and ``hoyer_<point>_mean`` over layers."""
    for point, res in (a.get("points") or {}).items():
        for row in res.get("per_layer", []):
            yield f"hoyer_{point}", row["layer"], None, row.get("hoyer")
        yield f"hoyer_{point}_mean", None, None, res.get("mean_hoyer")


FLATTENERS = {"retrieval_heads": _retrieval, "massive_activations": _massive,
              "superposition": _superposition, "text_dominance": _dominance,
              "information_capacity": _capacity, "activation_sparsity": _sparsity}


def rows_of(results: dict[str, Any], size: str) -> Iterator[dict[str, Any]]:
    """metrics.csv rows of one task's results.json (non-finite values are dropped)."""
    m = results["model"]
    base = {"model": m["name"], "size": size, "revision": m.get("revision") or "",
            "step": "" if m.get("step") is None else m["step"], "n_params": m["n_params"],
            "n_params_non_embedding": m["n_params_non_embedding"]}
    for analysis, data in results["analyses"].items():
        for metric, layer, head, value in FLATTENERS.get(analysis, lambda _: iter(()))(data):
            v = _num(value)
            if v is not None:
                yield {**base, "analysis": analysis, "metric": metric,
                       "layer": "" if layer is None else layer, "head": "" if head is None else head,
                       "value": v}


def _task_rows(size: str, results_path: Path) -> list[dict[str, Any]]:
    """The rows of one finished task; ScalelensError naming the file when it is unreadable."""
    try:
        return list(rows_of(json.loads(results_path.read_text(encoding="utf-8")), size))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON, UTF-8, shape
        raise ScalelensError(f"{results_path} is unreadable ({type(exc).__name__}: {exc}); "
                             "delete it and rerun to redo that task") from None


def write_metrics(run_dir: Path, tasks: list[tuple[str, Path]]) -> Path:
    """Write RUN_DIR/metrics.csv (and .parquet if pyarrow is present) from finished tasks.

    A table that comes out as it was is left untouched (its mtime too). When metrics.csv
    changes, the tables made from the old one (metrics.parquet, fits.json) are removed first:
    a write that fails after it (a full disk) leaves none of them beside the new metrics.csv,
    and the rerun makes them again.

    Rows are written task by task: a full Pythia sweep has ~1M of them, and holding them
    all as dicts peaked at 1.4 GB. The parquet file gets per-column lists instead.
    """
    path = run_dir / "metrics.csv"
    tmp = path.with_name("metrics.csv.tmp")
    columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    try:
        with naming(path), tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            for size, results_path in tasks:
                rows = _task_rows(size, results_path)
                writer.writerows(rows)
                _append_columns(columns, rows)
        replace_unless_same(tmp, path, stale=[run_dir / name for name in RUN_TABLES if name != path.name])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _parquet(run_dir, columns)
    return path


def _append_columns(columns: dict[str, list[Any]], rows: list[dict[str, Any]]) -> None:
    """Add rows to the parquet columns: layer, head and step as strings, as the CSV has them.

    Those strings are interned: a million rows hold a few hundred distinct ones, and a new
    string per cell held 150 MB of a full Pythia sweep's columns.
    """
    for c, values in columns.items():
        if c in ("layer", "head", "step"):
            values.extend(sys.intern(str(r[c])) for r in rows)
        else:
            values.extend(r[c] for r in rows)


def _parquet(run_dir: Path, columns: dict[str, list[Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    path = run_dir / "metrics.parquet"
    tmp = temp_beside(path)  # aside and renamed, as metrics.csv: an open reader keeps a whole file
    try:
        with naming(path):
            pq.write_table(pa.table(columns), tmp)
        replace_unless_same(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
