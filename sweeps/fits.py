"""Scaling fits of every scalar metric, and massive-activation dynamics per size.

Metrics are fitted against parameter count; the loss also against width (Liu et al.).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.analyses.dynamics import fit_dynamics_layers
from scalelens.analyses.scaling import FitResult, fit_scaling, fits_to_json

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


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _step(row: dict[str, str]) -> int:
    return int(row["step"]) if row["step"] else 0


def scaling_fits(rows: list[dict[str, str]], n_boot: int = 200,
                 sizes: list[str] | None = None) -> list[FitResult]:
    """Power law (and saturating where a metric has an asymptote) for each scalar metric.

    Sizes are compared at one checkpoint, the sweep's last (largest) step: a size whose task
    at that step failed is left out of the fit, with a note, never stood in for by an
    earlier checkpoint of it. ``sizes``: every size the sweep ran (default: those in
    ``rows``), so that a size none of whose tasks finished is named too.
    """
    if not rows:
        return []
    final = max(_step(r) for r in rows)
    sizes = list(dict.fromkeys([*(sizes or []), *(r["size"] for r in rows)]))
    by_metric: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for r in rows:
        if _step(r) == final and r["layer"] == "" and r["head"] == "":
            by_metric[f"{r['analysis']}.{r['metric']}"][r["size"]] = r
    width = {size: r["value"] for size, r in by_metric.get(WIDTH, {}).items()}
    fits = []
    for name, per_size in sorted(by_metric.items()):
        if len(per_size) < 3 or name in NOT_FITTED:
            continue
        missing = [s for s in sizes if s not in per_size]
        note = f"sizes {', '.join(missing)} have no value at step {final} and are left out" if missing else ""
        forms = ("power_law", "saturating") if name in SATURATING else ("power_law",)
        for x_name in X_NAMES:
            fits += [_fit(per_size, name, x_name, f, n_boot, note) for f in forms]
        if name in LOSS_VS_WIDTH and width:
            with_m = {s: {**v, WIDTH: width[s]} for s, v in per_size.items() if s in width}
            fits.append(_fit(with_m, name, WIDTH, "saturating", n_boot, note))
    return fits


def _fit(per_size: dict[str, dict[str, str]], name: str, x_name: str, form: str, n_boot: int,
         note: str) -> FitResult:
    """One fit of metric ``name`` (each size's ``value``) against column ``x_name``."""
    x = np.array([float(v[x_name]) for v in per_size.values()])
    y = np.array([float(v["value"]) for v in per_size.values()])
    fit = fit_scaling(x, y, form=form, metric=name, x_name=x_name, n_boot=n_boot)  # type: ignore[arg-type]
    return replace(fit, note="; ".join(t for t in (fit.note, note) if t))


def dynamics_fits(rows: list[dict[str, str]]) -> list[Any]:
    """Per size and layer: the massive-activation ratio against training step."""
    table: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["analysis"] == "massive_activations" and r["metric"] == "ratio" and r["step"]:
            table[r["size"]][int(r["step"])][int(r["layer"])] = float(r["value"])
    out = []
    for size, by_step in sorted(table.items()):
        steps = sorted(by_step)
        if len(steps) < MIN_DYNAMICS_POINTS:
            continue
        layers = sorted(by_step[steps[0]])
        values = np.array([[by_step[s].get(layer, np.nan) for layer in layers] for s in steps])
        if np.isnan(values).any():
            continue
        out += fit_dynamics_layers(np.array(steps, dtype=float), values, size=size)
    return out


def write_fits(run_dir: Path, n_boot: int = 200, sizes: list[str] | None = None) -> dict[str, Any]:
    """Write RUN_DIR/fits.json from RUN_DIR/metrics.csv (``sizes``: see :func:`scaling_fits`)."""
    from scalelens.measure.run import write_json

    rows = _read(run_dir / "metrics.csv")
    data = fits_to_json(scaling_fits(rows, n_boot, sizes), dynamics_fits(rows))
    write_json(run_dir / "fits.json", data)
    return data
