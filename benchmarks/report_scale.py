"""The post-sweep pipeline (metrics.csv -> fits.json -> report) at the size of a full Pythia sweep.

    python -m benchmarks.report_scale [--checkpoints all|log] [--json PATH]

Writes a synthetic run directory shaped like ``scalelens sweep --family pythia --checkpoints
all --analyses all``: one ``results.json`` per (size, checkpoint) for the 10 Pythia sizes
(14m .. 12b, their real layer x head shapes and parameter counts) and 154 checkpoints (19
with ``--checkpoints log``), each with every analysis that ``sweeps/metrics.py`` flattens:
retrieval scores per head and the retrieval scalars, massive-activation statistics per layer,
superposition, text dominance per layer and per layer group with three dilutions,
information capacity and activation sparsity per layer. Values are smooth functions of
parameter count, training step and depth plus seeded noise, so the run is deterministic and
every fit has something to fit (massive-activation ratios follow the dynamics curve).

Then times, each stage in a fresh Python process so that its peak RSS is its own:
``write_metrics`` (reads every results.json), ``write_fits`` and ``render_report``.
Prints one line per stage and, with ``--json``, writes all figures there.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.models.params import count_parameters
from scalelens.models.pythia import PYTHIA_CONFIGS, pythia_config

from .results import check_outputs

PYTHIA = tuple(PYTHIA_CONFIGS)  # the sizes, smallest first


@cache
def pythia_shape(size: str) -> tuple[int, int, int, int, int]:
    """``(layers, heads, width, n_params, n_params_non_embedding)`` of a Pythia size, from its config."""
    config = pythia_config(size)
    n, n_ne = count_parameters(config)
    return config.num_hidden_layers, config.num_attention_heads, config.hidden_size, n, n_ne


DILUTIONS = (1, 5, 10)
STAGES = ("write_metrics", "write_fits", "render_report")
ANALYSES = ["retrieval_heads", "massive_activations", "superposition", "text_dominance",
            "information_capacity", "activation_sparsity"]


def pythia_steps(checkpoints: str) -> list[int]:
    """The steps a sweep with ``--checkpoints all`` (154) or ``log`` (19) measures."""
    from scalelens.models.pythia import PYTHIA_STEPS
    from scalelens.sweeps.spec import select_steps

    return select_steps(list(PYTHIA_STEPS), checkpoints)


def _progress(step: int) -> float:
    """Training progress in [0, 1] on a log step axis."""
    return math.log10(step + 1) / math.log10(143_001)


def _ratio(n_params: float, layer: int, n_layers: int, step: int) -> float:
    """Massive-activation ratio: the dynamics curve A exp(-lam x) log x + K, x = gamma t + 1."""
    depth = min(1.0, 3 * layer / n_layers) if layer > 0 else 0.05
    amp = 60 * (n_params / 1.4e7) ** 0.35 * depth
    x = step / 5000 + 1
    return 3.0 + amp * math.exp(-0.05 * x) * math.log(x)


def _retrieval(rng: np.random.Generator, heads_rng: np.random.Generator, shape: tuple[int, int],
               p: float) -> dict[str, Any]:
    """Per-head retrieval scores: ~5% retrieval heads, about half exactly 0, as Wu et al. report."""
    kind = heads_rng.random(shape)  # the same per size at every step
    noise = rng.random(shape)
    scores = np.where(kind < 0.05, p * (0.2 + 0.6 * noise), np.where(kind < 0.55, 0.0, 0.02 * p * noise))
    return {"scores": [[float(v) for v in row] for row in scores],
            "fraction": float(np.mean(scores > 0.1)), "fraction_zero": float(np.mean(scores == 0)),
            "n_tests_passed": int(20 + 30 * p), "ablation": {
                "recall_unmasked": 0.2 + 0.6 * p, "recall_top_masked": 0.1 + 0.2 * p,
                "recall_random_masked": 0.2 + 0.55 * p}}


def _massive(rng: np.random.Generator, n: float, layers: int, step: int) -> dict[str, Any]:
    """Per-layer ratio / max / median and the massive-activation scalars."""
    per_layer = []
    for layer in range(layers):
        ratio = _ratio(n, layer, layers, step) * (1 + 0.03 * rng.standard_normal())
        median = 0.3 + 0.01 * layer
        per_layer.append({"layer": layer, "ratio": ratio, "max_abs": ratio * median, "median_abs": median})
    n_massive = int(max(r["ratio"] for r in per_layer) > 100) * (2 + layers // 8)
    out: dict[str, Any] = {"per_layer": per_layer, "massive": [{}] * n_massive}
    if n_massive:
        loss = 3.5 - 0.2 * math.log10(n / 1e7)
        out["intervention"] = {"loss": loss, "delta_zero": 4.0 + rng.random(),
                               "delta_mean": 0.01 * rng.random()}
    return out


def _superposition(rng: np.random.Generator, n: float, width: int, p: float) -> dict[str, Any]:
    inv_m = 1 / width
    overlap = inv_m * (1.2 + 0.5 * (1 - p)) * (1 + 0.02 * rng.standard_normal())
    return {"mean_sq_overlap": overlap, "mean_sq_overlap_centered": 0.9 * overlap, "inv_m": inv_m,
            "phi_half": 0.4 + 0.3 * p, "phi_one": 0.2 + 0.2 * p, "m": width, "n": 50_304}


def _dominance(rng: np.random.Generator, n: float, layers: int, p: float) -> dict[str, Any]:
    per_layer = []
    for layer in range(layers):
        mdi = 1 + 3 * p * math.sin(math.pi * (layer + 0.5) / layers) * (n / 1e8) ** 0.1
        per_layer.append({"layer": layer, "mdi": mdi * (1 + 0.05 * rng.standard_normal()),
                          "aei_text": 1 + 0.3 * (mdi - 1), "aei_other": 1 - 0.1 * (mdi - 1)})
    keys = ("mdi", "aei_text", "aei_other")
    groups = {}
    for name, part in zip(("early", "middle", "late"), np.array_split(np.arange(layers), 3), strict=True):
        groups[name] = {k: float(np.mean([per_layer[i][k] for i in part])) for k in keys}
    groups["all"] = {k: float(np.mean([r[k] for r in per_layer])) for k in keys}
    dilution = [{"factor": f, "mdi_middle": groups["middle"]["mdi"] / f ** 0.2} for f in DILUTIONS]
    return {"per_layer": per_layer, "groups": groups, "dilution": dilution}


def _capacity(rng: np.random.Generator, n: float, p: float) -> dict[str, Any]:
    nll = 2.4 + 8 * (n / 1e6) ** -0.3 + 6 * (1 - p) ** 2 + 0.01 * rng.standard_normal()
    flops = 2 * n
    return {"information_capacity": (11.0 - nll - 2) / math.log2(flops), "nll_bits_per_token": nll,
            "text_bits_per_token": 11.0, "flops_per_token": flops}


def _sparsity(rng: np.random.Generator, layers: int, p: float) -> dict[str, Any]:
    points = {}
    for i, point in enumerate(("resid_post", "mlp_out")):
        hoyer = [0.2 + 0.1 * i + 0.2 * p * layer / layers + 0.01 * rng.standard_normal()
                 for layer in range(layers)]
        points[point] = {"per_layer": [{"layer": k, "hoyer": h} for k, h in enumerate(hoyer)],
                         "mean_hoyer": float(np.mean(hoyer))}
    return {"points": points}


def task_results(size: str, step: int) -> dict[str, Any]:
    """The results.json of one synthetic task (deterministic in ``size`` and ``step``)."""
    layers, heads, width, n, n_ne = pythia_shape(size)
    index = PYTHIA.index(size)
    rng = np.random.default_rng([index, step])
    p = _progress(step)
    model = {"name": f"pythia-{size}", "revision": f"step{step}", "step": step, "n_params": n,
             "n_params_non_embedding": n_ne}
    analyses = {
        "retrieval_heads": _retrieval(rng, np.random.default_rng(index), (layers, heads), p),
        "massive_activations": _massive(rng, n, layers, step),
        "superposition": _superposition(rng, n, width, p),
        "text_dominance": _dominance(rng, n, layers, p),
        "information_capacity": _capacity(rng, n, p),
        "activation_sparsity": _sparsity(rng, layers, p),
    }
    return {"model": model, "analyses": analyses}


def tasks(checkpoints: str) -> Iterator[tuple[str, int]]:
    """Every (size, step) of the sweep, in the sweep's order."""
    steps = pythia_steps(checkpoints)
    return ((size, step) for size in PYTHIA for step in steps)


def write_run(run_dir: Path, checkpoints: str) -> list[tuple[str, Path]]:
    """Write every task's results.json and a sweep-style run.json; return (size, path) per task."""
    done = []
    for size, step in tasks(checkpoints):
        path = run_dir / "tasks" / size / f"step{step}" / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(task_results(size, step)), encoding="utf-8")
        done.append((size, path))
    info = {"scalelens_version": "benchmark", "models": [f"EleutherAI/pythia-{s}" for s in PYTHIA],
            "sizes": list(PYTHIA), "analyses": ANALYSES,
            "settings": {"family": "pythia", "checkpoints": checkpoints, "executor": "local"},
            "tasks": [{"key": f"{p.parent.parent.name}/{p.parent.name}", "status": "done", "attempts": 1,
                       "error": None} for _, p in done]}
    (run_dir / "run.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return done


def run_stage(stage: str, run_dir: Path, checkpoints: str) -> dict[str, float]:
    """Run one stage in this process: wall seconds, and peak RSS (MiB) after the imports and at the end."""
    from scalelens.reports import render_report
    from scalelens.sweeps.fits import write_fits
    from scalelens.sweeps.metrics import write_metrics

    imported = _peak_rss_mib()
    start = time.perf_counter()
    if stage == "write_metrics":
        done = [(s, run_dir / "tasks" / s / f"step{t}" / "results.json") for s, t in tasks(checkpoints)]
        write_metrics(run_dir, done)
    elif stage == "write_fits":
        steps = pythia_steps(checkpoints)
        write_fits(run_dir, sizes=list(PYTHIA), last_steps=dict.fromkeys(PYTHIA, steps[-1]))
    else:
        render_report(run_dir, progress=False)
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "peak_rss_mib": _peak_rss_mib(), "imports_rss_mib": imported}


def _peak_rss_mib() -> int:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _child(stage: str, run_dir: Path, checkpoints: str) -> dict[str, float]:
    """Run one stage in a fresh interpreter, so its peak RSS is not an earlier stage's."""
    cmd = [sys.executable, "-m", "benchmarks.report_scale", "--stage", stage, "--run-dir", str(run_dir),
           "--checkpoints", checkpoints]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sizes(run_dir: Path) -> dict[str, Any]:
    """Rows of metrics.csv and the sizes of the files the pipeline wrote."""
    with (run_dir / "metrics.csv").open() as fh:
        rows = sum(1 for _ in fh) - 1
    files = ("metrics.csv", "metrics.parquet", "fits.json", "report.html", "report.md")
    return {"metrics_rows": rows, **{f"{name}_mib": round((run_dir / name).stat().st_size / 2**20, 2)
                                     for name in files if (run_dir / name).is_file()}}


def measure(run_dir: Path, checkpoints: str) -> dict[str, Any]:
    """Generate the run into ``run_dir`` and time every stage; all figures in one dict."""
    start = time.perf_counter()
    done = write_run(run_dir, checkpoints)
    result: dict[str, Any] = {"checkpoints": checkpoints, "n_tasks": len(done),
                              "generate_s": round(time.perf_counter() - start, 2)}
    for stage in STAGES:
        result[stage] = _child(stage, run_dir, checkpoints)
        r = result[stage]
        print(f"{stage}: {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB "
              f"({r['imports_rss_mib']} after imports)", flush=True)
    result.update(_sizes(run_dir))
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``--stage`` is the child's, internal)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", choices=("all", "log"), default="all",
                    help="154 checkpoints per size (all) or 19 (log)")
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="write the synthetic run here and keep it (default: a temporary directory)")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures as JSON here")
    ap.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_outputs(ap, {"--json": args.json})
    if args.stage and args.run_dir is None:
        ap.error("--stage needs --run-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate, time, print; 0."""
    args = parse(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.run_dir, args.checkpoints)))
        return 0
    tmp = None if args.run_dir else Path(tempfile.mkdtemp(prefix="report-scale-"))
    run_dir = args.run_dir or tmp
    assert run_dir is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(run_dir, args.checkpoints)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
