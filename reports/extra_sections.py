"""Plan the sections of the extra per-scale metrics: information capacity and activation sparsity."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from . import plots
from .rundir import Run
from .sections import PlotJob, SectionPlan, earlier_steps

CAPACITY = "information_capacity.information_capacity"
CAPACITY_FLOPS = "information_capacity.flops_per_token"
SPARSITY_POINTS = ("resid_post", "mlp_out")
SPARSITY = tuple(f"activation_sparsity.hoyer_{p}" for p in SPARSITY_POINTS)

# Per-layer metrics that these sections already plot.
HANDLED = set(SPARSITY)


def plan_capacity(run: Run) -> SectionPlan:
    """Plan information capacity against FLOPs per token, one point per size."""
    table = run.table
    points = {
        table.label(s): (table.scalar(CAPACITY_FLOPS, s), table.scalar(CAPACITY, s))
        for s in run.series()
    }
    points = {k: v for k, v in points.items() if math.isfinite(v[0]) and math.isfinite(v[1])}
    mean = float(np.mean([v[1] for v in points.values()])) if points else None
    jobs = (
        (PlotJob("information capacity vs FLOPs per token",
                 partial(plots.capacity_plot, points, run.colors(), mean=mean),
                 _join(_capacity_caption(points), earlier_steps(run, [CAPACITY_FLOPS, CAPACITY]))),)
        if points
        else ()
    )
    return SectionPlan(
        "capacity",
        "Information capacity",
        "(text bits per token − NLL bits per token + b) / log2(FLOPs per token) on the probe "
        "text, latest checkpoint (Yuan et al. 2025; b is the numerator bias of the run's "
        "settings). Yuan et al. find it nearly constant across the sizes of one series.",
        jobs,
        "No information-capacity results in this run.",
    )


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _capacity_caption(points: dict[str, tuple[float, float]]) -> str:
    values = [v[1] for v in points.values()]
    if len(values) < 2:
        return ""
    return f"spread over sizes: {min(values):.3g} to {max(values):.3g}"


def plan_sparsity(run: Run) -> SectionPlan:
    """Plan the per-layer Hoyer sparsity of resid_post and mlp_out, one line per size."""
    table, colors = run.table, run.colors()
    jobs = []
    for point, key in zip(SPARSITY_POINTS, SPARSITY, strict=True):
        lines = {table.label(s): table.by_layer(key, s) for s in run.series()}
        lines = {k: v for k, v in lines.items() if v[0].size}
        if lines:
            draw = partial(plots.per_layer_plot, lines, colors, y_label=f"Hoyer sparsity, {point}")
            jobs.append(PlotJob(f"Hoyer sparsity of {point} by layer", draw, earlier_steps(run, [key])))
    return SectionPlan(
        "sparsity",
        "Activation sparsity",
        "Mean Hoyer sparsity (√n − ‖x‖₁/‖x‖₂)/(√n − 1) of each token's vector after the first "
        "token, per layer, latest checkpoint: 0 when every entry has the same magnitude, 1 for a "
        "single non-zero entry; a vector of i.i.d. Gaussian entries gives about 1 − √(2/π) ≈ 0.20.",
        tuple(jobs),
        "No activation-sparsity results in this run.",
    )
