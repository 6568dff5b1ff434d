"""Scaling fits of every scalar metric, its trend over training, and massive-activation dynamics.

Metrics are fitted against parameter count; the loss also against width (Liu et al.).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.analyses.dynamics import DynamicsFit, fit_dynamics
from scalelens.analyses.scaling import FitResult, fit_scaling, fits_to_json
from scalelens.analyses.trends import StepTrend, fit_step_trend
from scalelens.sweeps.metrics import checkpoint_name

# Metrics with an asymptote get a saturating fit beside the power law. The information
# capacity may be negative (the paper's bias b < 0), where only the saturating form applies.
SATURATING = {"massive_activations.loss", "superposition.mean_sq_overlap",
              "information_capacity.information_capacity", "information_capacity.nll_bits_per_token"}
# Bookkeeping or shape values, not measurements: never fitted. The text's bits per token
# depend on the tokenizer only, FLOPs per token on the config only.
NOT_FITTED = {"superposition.m", "superposition.n", "superposition.inv_m", "retrieval_heads.n_tests_passed",
              "information_capacity.text_bits_per_token", "information_capacity.flops_per_token"}
X_NAMES = ("n_params", "n_params_non_embedding")
# Liu, Liu & Gore fit the loss against the width m of the LM head: L = C / m^alpha + L_inf
# (alpha = 0.91 +- 0.04 across families). The model's loss here is its NLL on the probe text.
WIDTH = "superposition.m"
LOSS_VS_WIDTH = ("information_capacity.nll_bits_per_token",)
MIN_DYNAMICS_POINTS = 6
MIN_SIZES = 3
Steps = dict[str, int | None]  # size -> its last step; None: a final model, measured without one


def _read(path: Path) -> list[dict[str, str]]:
    """The rows of metrics.csv that the fits read, as dicts of strings.

    Those are the scalar rows, the massive-activation ratios and the first row of each
    (size, step): per-layer and per-head rows are most of a large sweep's table (a full
    Pythia sweep has ~1M rows, 5% of them scalar) and no fit reads them, while a step or
    size seen only in them still counts as the sweep's last step or one of its sizes.
    """
    seen: set[tuple[str, str]] = set()
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if _wanted(r, seen)]


def _wanted(row: dict[str, str], seen: set[tuple[str, str]]) -> bool:
    """Keep a scalar row, a massive-activation ratio, or the first row of its (size, step)."""
    first = (row["size"], row["step"])
    if first not in seen:
        seen.add(first)
        return True
    if row["layer"] == "" and row["head"] == "":
        return True
    return row["analysis"] == "massive_activations" and row["metric"] == "ratio"


def _step(row: dict[str, str]) -> int | None:
    """The row's training step; None for a model measured without one (a final model)."""
    return int(row["step"]) if row["step"] else None


def scaling_fits(rows: list[dict[str, str]], sizes: list[str] | None = None,
                 last_steps: Steps | None = None) -> list[FitResult]:
    """Power law (and saturating where a metric has an asymptote) for each scalar metric.

    Sizes are compared at their last checkpoint: the sweep's last (largest) step, or each
    size's own last planned step in ``last_steps`` (families whose larger models train
    longer). A size whose task at that step failed is left out of the fit, with a note,
    never stood in for by an earlier checkpoint of it. ``sizes``: every size the sweep ran
    (default: those in ``rows``), so that a size none of whose tasks finished is named too.
    """
    by_metric, sizes, steps = _at_last_step(rows, sizes, last_steps)
    width = {size: r["value"] for size, r in by_metric.get(WIDTH, {}).items()}
    fits = []
    for name, per_size in sorted(by_metric.items()):
        if len(per_size) < MIN_SIZES or name in NOT_FITTED:
            continue
        notes = (_missing_note(sizes, per_size, steps), _steps_note(per_size, steps))
        note = "; ".join(t for t in notes if t)
        forms = ("power_law", "saturating") if name in SATURATING else ("power_law",)
        for x_name in X_NAMES:
            fits += [_fit(per_size, name, x_name, f, note) for f in forms]
        if name in LOSS_VS_WIDTH and width:
            with_m = {s: {**v, WIDTH: width[s]} for s, v in per_size.items() if s in width}
            fits.append(_fit(with_m, name, WIDTH, "saturating", note))
    return fits


def unfitted_note(rows: list[dict[str, str]], sizes: list[str] | None = None,
                  last_steps: Steps | None = None) -> str:
    """Why no metric could be fitted ("" when some could, or when there are no rows)."""
    by_metric, sizes, steps = _at_last_step(rows, sizes, last_steps)
    fitted = {k: v for k, v in by_metric.items() if k not in NOT_FITTED}
    if not fitted or max(len(v) for v in fitted.values()) >= MIN_SIZES:
        return ""
    have = sorted({s for v in fitted.values() for s in v}, key=sizes.index)
    named = ", ".join(f"{s} ({checkpoint_name(steps[s])})" for s in have)
    return (f"a fit needs {MIN_SIZES} sizes with values at their last checkpoint, "
            f"and only {named} {'has' if len(have) == 1 else 'have'} them")


def _at_last_step(rows: list[dict[str, str]], sizes: list[str] | None, last_steps: Steps | None
                  ) -> tuple[dict[str, dict[str, dict[str, str]]], list[str], Steps]:
    """Scalar rows by metric and size at each size's last step; the sizes; those steps."""
    sizes = list(dict.fromkeys([*(sizes or []), *(r["size"] for r in rows)]))
    final = max((t for r in rows if (t := _step(r)) is not None), default=None)
    steps = {s: (last_steps or {}).get(s, final) for s in sizes}
    by_metric: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for r in rows:
        if _step(r) == steps[r["size"]] and r["layer"] == "" and r["head"] == "":
            by_metric[f"{r['analysis']}.{r['metric']}"][r["size"]] = r
    return by_metric, sizes, steps


def _missing_note(sizes: list[str], per_size: dict[str, dict[str, str]], steps: Steps) -> str:
    missing = [s for s in sizes if s not in per_size]
    if not missing:
        return ""
    at = {steps[s] for s in missing}
    where = "their last checkpoint" if len(at) > 1 else "the " * (None in at) + checkpoint_name(at.pop())
    if len(missing) == 1:
        return f"size {missing[0]} has no value at {where} and is left out"
    return f"sizes {', '.join(missing)} have no value at {where} and are left out"


def _steps_note(per_size: dict[str, dict[str, str]], steps: Steps) -> str:
    used = {s: steps[s] for s in per_size}
    if len(set(used.values())) < 2:
        return ""
    at = ", ".join(f"{s}: {'final model' if t is None else t}" for s, t in used.items())
    return f"sizes compared at their own last checkpoint ({at})"


def _fit(per_size: dict[str, dict[str, str]], name: str, x_name: str, form: str,
         note: str) -> FitResult:
    """One fit of metric ``name`` (each size's ``value``) against column ``x_name``."""
    x = np.array([float(v[x_name]) for v in per_size.values()])
    y = np.array([float(v["value"]) for v in per_size.values()])
    fit = fit_scaling(x, y, form=form, metric=name, x_name=x_name)  # type: ignore[arg-type]
    return replace(fit, note="; ".join(t for t in (fit.note, note) if t))


def dynamics_fits(rows: list[dict[str, str]]) -> list[DynamicsFit]:
    """Per size and layer: the massive-activation ratio against training step.

    Each layer is fitted on the checkpoints that have its ratio (``n_points`` says how
    many): a layer whose ratio was not finite at one step (metrics.csv leaves such values
    out) loses that point, not its size's every fit. A layer with under
    ``MIN_DYNAMICS_POINTS`` checkpoints gets no fit.
    """
    table: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["analysis"] == "massive_activations" and r["metric"] == "ratio" and r["step"]:
            table[(r["size"], int(r["layer"]))][int(r["step"])] = float(r["value"])
    out = []
    for (size, layer), by_step in sorted(table.items()):
        if len(by_step) >= MIN_DYNAMICS_POINTS:
            steps = np.array(sorted(by_step), dtype=float)
            values = np.array([by_step[int(t)] for t in steps])
            out.append(fit_dynamics(steps, values, layer=layer, size=size))
    return out


def step_trends(rows: list[dict[str, str]]) -> list[StepTrend]:
    """Per scalar metric and size: its trend over the size's checkpoints (see analyses/trends.py)."""
    table: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        name = f"{r['analysis']}.{r['metric']}"
        if r["step"] and r["layer"] == "" and r["head"] == "" and name not in NOT_FITTED:
            table[(name, r["size"])][int(r["step"])] = float(r["value"])
    out = []
    for (name, size), by_step in sorted(table.items()):
        steps = np.array(sorted(by_step), dtype=float)
        trend = fit_step_trend(steps, np.array([by_step[int(t)] for t in steps]), name, size)
        if trend is not None:
            out.append(trend)
    return out


def write_fits(run_dir: Path, sizes: list[str] | None = None,
               last_steps: Steps | None = None) -> dict[str, Any]:
    """Write RUN_DIR/fits.json from RUN_DIR/metrics.csv (left untouched when it comes out as it was).

    ``sizes``, ``last_steps``: see :func:`scaling_fits`. ``notes`` says why there are no
    scaling fits, when there are none; ``last_steps`` the step each size was compared at
    (the report's scaling plots take the same).
    """
    from scalelens.measure.run import write_json

    rows = _read(run_dir / "metrics.csv")
    data = fits_to_json(scaling_fits(rows, sizes, last_steps), dynamics_fits(rows))
    data["last_steps"] = _at_last_step(rows, sizes, last_steps)[2]  # where sizes were compared
    data["step_trends"] = [t.to_dict() for t in step_trends(rows)]
    note = unfitted_note(rows, sizes, last_steps)
    if note:
        data["notes"] = [note]
    write_json(run_dir / "fits.json", data, keep_same=True)
    return data
