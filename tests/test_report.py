"""Report rendering on a synthetic but realistic sweep output (real files, real browser)."""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import io
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from scalelens.errors import ScalelensError
from scalelens.reports import ReportPaths, render_report
from scalelens.reports import cli as report_cli
from scalelens.reports.curves import dynamics_from_params, evaluate, exponent_band
from scalelens.reports.runfiles import ScalingFit

COLUMNS = [
    "model",
    "size",
    "revision",
    "step",
    "n_params",
    "n_params_non_embedding",
    "analysis",
    "metric",
    "layer",
    "head",
    "value",
]
# size: (layers, heads, d_model, total params, non-embedding params) -- Pythia configs
SIZES = {
    "14m": (6, 4, 128, 14_067_712, 1_189_888),
    "70m": (6, 8, 512, 70_426_624, 18_915_328),
    "160m": (12, 12, 768, 162_322_944, 85_056_000),
    "410m": (24, 16, 1024, 405_334_016, 302_311_424),
}
STEPS = [0, 1000, 16000, 143000]
DYN = {"A": 0.0, "lambda": 0.01, "gamma": 1e-3, "t0": 1.0, "K": 5.0}  # A set per layer
LOSS = {"C": 25.0, "alpha": 0.2, "y_inf": 1.8}
GROUPS = ("early", "middle", "late")
NOTE = "bootstrap over sizes, 1000 resamples <b>raw</b> | piped"


def _dyn(t: float, p: dict[str, float]) -> float:
    x = p["gamma"] * t + p["t0"]
    return p["A"] * math.exp(-p["lambda"] * x) * math.log(x) + p["K"]


def _final_ratio(n_params: float, layer: int, n_layers: int) -> float:
    peak = 83.0 * (n_params / 14e6) ** 0.5
    depth = layer / max(n_layers - 1, 1)
    return 5.0 + (peak - 5.0) * min(1.0, 4 * depth) * (0.6 if layer == n_layers - 1 else 1.0)


def _layer_params(n_params: float, layer: int, n_layers: int) -> dict[str, float]:
    final = DYN["K"] + 0.0
    growth = (_final_ratio(n_params, layer, n_layers) - final) / _dyn(143000, {**DYN, "A": 1.0, "K": 0.0})
    return {**DYN, "A": growth}


def _size_rows(size: str, rng: np.random.Generator) -> list[dict]:
    n_layers, n_heads, d_model, n_params, n_non_emb = SIZES[size]
    rows: list[dict] = []
    for step in STEPS:
        progress = math.log1p(step) / math.log1p(STEPS[-1])

        def add(analysis, metric, value, layer=None, head=None, _step=step):
            rows.append(
                dict(
                    model="pythia",
                    size=size,
                    revision=f"step{_step}",
                    step=_step,
                    n_params=n_params,
                    n_params_non_embedding=n_non_emb,
                    analysis=analysis,
                    metric=metric,
                    layer="" if layer is None else layer,
                    head="" if head is None else head,
                    value=f"{value:.6g}",
                )
            )

        # retrieval heads: most heads exactly 0, a few above 0.1, more with training and size
        scale = progress * (0.8 + 0.2 * math.log10(n_params / 1e7))
        scores = np.clip(rng.beta(0.5, 14.0, (n_layers, n_heads)) * scale, 0.0, 1.0)
        scores[rng.random(scores.shape) < 0.6] = 0.0
        for (layer, head), v in np.ndenumerate(scores):
            add("retrieval_heads", "score", v, layer, head)
        add("retrieval_heads", "fraction", float(np.mean(scores > 0.1)))
        add("retrieval_heads", "fraction_zero", float(np.mean(scores == 0)))
        # massive activations follow the published dynamics form per layer
        ratios = [_dyn(step, _layer_params(n_params, i, n_layers)) for i in range(n_layers)]
        for layer, r in enumerate(ratios):
            median = 0.4 + 0.02 * layer
            add("massive_activations", "ratio", r, layer)
            add("massive_activations", "median_abs", median, layer)
            add("massive_activations", "max_abs", r * median, layer)
        add("massive_activations", "max_ratio", max(ratios))
        add("massive_activations", "n_massive", 0)
        # superposition: overlap tracks 1/m once trained
        inv_m = 1.0 / d_model
        add("superposition", "inv_m", inv_m)
        add("superposition", "mean_sq_overlap", inv_m * (1.0 + 0.3 * progress))
        add("superposition", "mean_sq_overlap_centered", inv_m * (1.0 + 0.05 * progress))
        add("superposition", "phi_half", 1.0)
        add("superposition", "phi_one", 0.5 + 0.4 * progress)
        # text dominance: text over-attended in middle layers
        mdi = [1.0 + progress * 6.0 * math.sin(math.pi * (i + 0.5) / n_layers) for i in range(n_layers)]
        for layer, v in enumerate(mdi):
            add("text_dominance", "mdi", v, layer)
            add("text_dominance", "aei_text", 1.0 + 0.1 * v, layer)
            add("text_dominance", "aei_other", 1.0 / (1.0 + 0.1 * v), layer)
        for g, chunk in zip(GROUPS, np.array_split(np.array(mdi), 3), strict=True):
            add("text_dominance", f"mdi_{g}", float(chunk.mean()))
            add("text_dominance", f"aei_text_{g}", float(1.0 + 0.1 * chunk.mean()))
        final_loss = LOSS["C"] * n_non_emb ** -LOSS["alpha"] + LOSS["y_inf"]
        add("loss", "loss", 10.9 + (final_loss - 10.9) * progress)
    return rows


def _fits() -> dict:
    xs = np.array([SIZES[s][3] for s in SIZES], dtype=float)
    ys = np.array(
        [
            max(_final_ratio(n, i, SIZES[s][0]) for i in range(SIZES[s][0]))
            for s, n in zip(SIZES, xs, strict=True)
        ]
    )
    b, log_a = np.polyfit(np.log(xs), np.log(ys), 1)
    non_emb = [float(SIZES[s][4]) for s in SIZES]
    loss = [LOSS["C"] * n ** -LOSS["alpha"] + LOSS["y_inf"] for n in non_emb]
    skipped = {
        "metric": "massive_activations.n_massive",
        "x_name": "n_params",
        "form": "power_law",
        "params": {},
        "ci": {},
        "r2": None,
        "loo_rel_error": None,
        "n_points": 4,
        "x": xs.tolist(),
        "y": [0.0] * 4,
        "note": "skipped: log-log power law needs y > 0",
    }
    return {
        "version": 1,
        "fits": [
            skipped,
            {
                "metric": "massive_activations.max_ratio",
                "x_name": "n_params",
                "form": "power_law",
                "params": {"a": float(np.exp(log_a)), "b": float(b)},
                "ci": {"b": [b - 0.06, b + 0.06]},
                "r2": 0.994,
                "loo_rel_error": 0.071,
                "n_points": 4,
                "x": xs.tolist(),
                "y": ys.tolist(),
                "note": NOTE,
            },
            {
                "metric": "loss.loss",
                "x_name": "n_params_non_embedding",
                "form": "saturating",
                "params": dict(LOSS),
                "ci": {"alpha": [0.17, 0.23], "y_inf": [1.7, 1.9]},
                "r2": 0.999,
                "loo_rel_error": None,
                "n_points": 4,
                "x": non_emb,
                "y": loss,
                "note": "",
            },
        ],
        "dynamics": [
            {
                "size": "70m",
                "layer": 3,
                "params": _layer_params(SIZES["70m"][3], 3, 6),
                "r2": 0.981,
                "peak_step": 28000,
            },
            *_sweep_style_dynamics("410m"),
        ],
    }


def _sweep_style_dynamics(size: str) -> list[dict]:
    """Entries as sweeps/fits.py writes them: every layer, decay named 'lam', extra keys."""
    n_layers, n_params = SIZES[size][0], SIZES[size][3]
    out = []
    for layer in range(n_layers):
        params = _layer_params(n_params, layer, n_layers)
        params["lam"] = params.pop("lambda")
        out.append(
            {
                "size": size,
                "layer": layer,
                "params": params,
                "r2": 0.97,
                "peak_step": 28000.0,
                "stderr": {k: 0.0 for k in params},
                "n_points": 4,
            }
        )
    return out


def write_run_dir(path: Path, seed: int = 0) -> Path:
    """Write metrics.csv, fits.json and run.json the way a 4-size x 4-step sweep would."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with (path / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for size in SIZES:
            writer.writerows(_size_rows(size, rng))
    from scalelens.sweeps.fits import _read, step_trends

    trends = [t.to_dict() for t in step_trends(_read(path / "metrics.csv"))]
    (path / "fits.json").write_text(json.dumps({**_fits(), "step_trends": trends}, indent=1))
    (path / "run.json").write_text(
        json.dumps(
            {
                "models": ["pythia"],
                "sizes": list(SIZES),
                "analyses": ["retrieval_heads", "massive_activations", "superposition", "text_dominance"],
                "created": "2025-01-01T00:00:00Z",
                "settings": {"steps": STEPS, "n_prompts": 10, "dtype": "float32"},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("sweep") / "run")


@pytest.fixture(scope="module")
def report(run_dir: Path) -> ReportPaths:
    return render_report(run_dir, progress=False)


@pytest.fixture(scope="module")
def small_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two sizes' loss at one step (read-only): one plot, so its report is quick to draw.

    For the tests of where and how a report is written (its file names, a full disk, a sweep
    holding the run), which run_dir's 70 figures only slowed down.
    """
    run = tmp_path_factory.mktemp("small") / "run"
    run.mkdir()
    rows = ["m,14m,main,5,1e6,5e5,loss,loss,,,3.5", "m,70m,main,5,4e6,2e6,loss,loss,,,3.1"]
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return run


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Collector()
    parser.feed(html)
    return parser.tags


def test_writes_html_and_markdown_beside_it(run_dir: Path, report: ReportPaths) -> None:
    assert report.html == run_dir / "report.html"
    assert report.markdown == run_dir / "report.md"
    assert report.html.stat().st_size > 10_000
    assert report.markdown.read_text().startswith("# scalelens report: run")


def test_html_is_self_contained(report: ReportPaths) -> None:
    html = report.html.read_text()
    refs = [
        (tag, k, v)
        for tag, attrs in _tags(html)
        for k, v in attrs.items()
        if k in ("src", "href", "srcset", "data", "poster", "action")
    ]
    assert refs, "expected images and in-page links"
    external = [r for r in refs if not (r[2] or "").startswith(("data:", "#"))]
    assert external == []
    assert "<script" not in html.lower()
    assert "url(" not in html and "@import" not in html


def test_images_are_embedded_pngs(report: ReportPaths) -> None:
    srcs = [attrs["src"] for tag, attrs in _tags(report.html.read_text()) if tag == "img"]
    assert len(srcs) >= 30
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[0] > 100


def _section_images(html: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    current = None
    for tag, attrs in _tags(html):
        if tag == "section":
            current = attrs.get("id")
            counts[current] = 0
        elif tag == "img":
            counts[current] += 1
    return counts


def test_every_section_present_with_its_plots(report: ReportPaths) -> None:
    html = report.html.read_text()
    counts = _section_images(html)
    n_scalars = 16  # 3 retrieval/massive... see _size_rows
    assert counts == {
        "how-to-read": 0,
        "run": 0,
        "fits": 0,
        "scaling": n_scalars,
        "steps": n_scalars,
        "dynamics": 2,  # 70m (one layer) and 410m (all 24 layers)
        "retrieval": len(SIZES),
        "massive": 1,
        "superposition": 1,
        "text-dominance": 3,  # mdi and aei_text by group, MDI by layer
        "capacity": 0,  # no extra metrics in this run
        "sparsity": 0,
        "other": 4,  # max_abs, median_abs, aei_text, aei_other per layer
        "scalars": 0,
    }
    for text in (
        "How to read this report",
        "Run settings (run.json)",
        "Scaling fits",
        "Training-dynamics fits",
        "Retrieval heads",
        "Massive activations",
        "Superposition",
        "Text dominance",
        "massive_activations.max_ratio vs n_params",
        "loss.loss vs n_params_non_embedding",
        "pythia",
    ):
        assert text in html


def _extra_results(size: str) -> dict:
    """results.json of one Pythia size with only the extra analyses, as measure writes it."""
    from scalelens.analyses.capacity import flops_per_token, information_capacity
    from scalelens.analyses.sparsity import activation_sparsity
    from scalelens.measure.capacity import model_shape
    from scalelens.models.pythia import pythia_config

    n_layers, _, d_model, n_params, n_non_emb = SIZES[size]
    nll = 1.5 + 20.0 * n_non_emb ** -0.2  # nats per token, falling with size
    cap = information_capacity(nll, 10_000, 42_000, flops_per_token(model_shape(pythia_config(size)), 127.5),
                               bias=-27.0)
    l2 = np.ones((2, n_layers, 3))
    points = {}
    for k, point in enumerate(("resid_post", "mlp_out")):
        # H = (sqrt(n) - l1) / (sqrt(n) - 1) with l2 = 1: plant H = 0.1 + 0.02 layer (+ 0.1 for mlp_out)
        h = 0.1 + 0.1 * k + 0.02 * np.arange(n_layers)[None, :, None] * np.ones((2, 1, 3))
        l1 = math.sqrt(d_model) - h * (math.sqrt(d_model) - 1)
        points[point] = activation_sparsity(l1, l2, np.array([3, 3]), d_model, point).to_dict()
    return {"model": {"name": "pythia", "revision": "step143000", "step": 143000, "n_params": n_params,
                      "n_params_non_embedding": n_non_emb},
            "analyses": {"information_capacity": cap.to_dict(),
                         "activation_sparsity": {"measure": "hoyer", "points": points}}}


def _extra_run(tmp_path: Path) -> Path:
    """A run directory whose metrics.csv holds ``_extra_results`` of every size."""
    from scalelens.sweeps.metrics import write_metrics

    run = tmp_path / "run"
    run.mkdir()
    tasks = []
    for size in SIZES:
        path = tmp_path / f"{size}.json"
        path.write_text(json.dumps(_extra_results(size)))
        tasks.append((size, path))
    write_metrics(run, tasks)
    return run


def test_extra_metrics_render_through_the_sweep_writers(tmp_path: Path) -> None:
    from scalelens.sweeps.fits import write_fits

    run = _extra_run(tmp_path)
    write_fits(run)
    paths = render_report(run, progress=False)
    html, md = paths.html.read_text(), paths.markdown.read_text()
    counts = _section_images(html)
    assert counts["capacity"] == 1 and counts["sparsity"] == 2 and counts["other"] == 0
    for text in ("Information capacity", "information capacity vs FLOPs per token",
                 "Hoyer sparsity of resid_post by layer", "Hoyer sparsity of mlp_out by layer",
                 "information_capacity.information_capacity vs n_params"):
        assert text in html
    scalars = md.split("## Scalar metrics at the latest checkpoint")[1]
    caps = [_extra_results(s)["analyses"]["information_capacity"]["information_capacity"] for s in SIZES]
    cells = " | ".join(f"{v:.4g}" for v in caps)
    assert f"| information_capacity.information_capacity | {cells} |" in scalars
    mlp = " | ".join(f"{0.2 + 0.02 * (SIZES[s][0] - 1) / 2:.4g}" for s in SIZES)  # mean over layers
    assert f"| activation_sparsity.hoyer_mlp_out_mean | {mlp} |" in scalars
    assert "| information_capacity.information_capacity | n_params | saturating |" in md
    assert "information_capacity.flops_per_token | n_params" not in md  # config arithmetic, not fitted


def test_the_fits_table_prints_the_statsmodels_interval_that_fits_json_holds(tmp_path: Path) -> None:
    """A power law's row: fits.json's numbers at 4 significant digits, the interval the OLS t
    interval statsmodels gives for the same log-log regression, and its method named."""
    import statsmodels.api as sm

    from scalelens.sweeps.fits import write_fits

    run = _extra_run(tmp_path)
    metric = "activation_sparsity.hoyer_mlp_out_mean"
    (fit,) = [f for f in write_fits(run)["fits"]
              if (f["metric"], f["x_name"], f["form"]) == (metric, "n_params", "power_law")]
    ols = sm.OLS(np.log(fit["y"]), sm.add_constant(np.log(fit["x"]))).fit()
    lo, hi = ols.conf_int(alpha=0.05)[1]
    assert fit["ci"]["b"] == pytest.approx([lo, hi], rel=1e-10) and fit["r2"] == pytest.approx(ols.rsquared)
    md = render_report(run, progress=False).markdown.read_text()
    (row,) = [line for line in md.splitlines() if line.startswith(f"| {metric} | n_params | power_law |")]
    a, b = fit["params"]["a"], fit["params"]["b"]
    assert f"| a={a:.4g}, b={b:.4g} |" in row and f"| {fit['r2']:.4g} |" in row
    assert f"b ∈ [{lo:.4g}, {hi:.4g}] (OLS t) |" in row


def test_loss_vs_width_fit_is_plotted_and_stated(tmp_path: Path) -> None:
    """With superposition's width m and the loss in one sweep, the report plots the loss
    against m and states the fitted exponent beside the published 0.91."""
    from scalelens.sweeps.fits import write_fits
    from scalelens.sweeps.metrics import write_metrics

    run = tmp_path / "run"
    run.mkdir()
    tasks = []
    for size in SIZES:
        results = _extra_results(size)
        results["analyses"]["superposition"] = {"m": SIZES[size][2], "n": 50304, "mean_sq_overlap": 0.01}
        path = tmp_path / f"{size}.json"
        path.write_text(json.dumps(results))
        tasks.append((size, path))
    write_metrics(run, tasks)
    fits = write_fits(run)["fits"]
    (fit,) = [f for f in fits if f["x_name"] == "superposition.m"]
    html = render_report(run, progress=False).html.read_text()
    assert "information_capacity.nll_bits_per_token vs superposition.m" in html
    assert f"alpha = {fit['params']['alpha']:.2g}" in html and "alpha = 0.91 ± 0.04" in html
    lo, hi = fit["ci"]["alpha"]
    assert hi is None  # four sizes leave the exponent open above: said as ∞, not "inf"
    assert f"alpha = {fit['params']['alpha']:.2g} [{lo:.2g}, ∞];" in html


def test_trends_over_training_are_tabled_per_metric_smallest_size_first(report: ReportPaths) -> None:
    md, html = report.markdown.read_text(), report.html.read_text()
    trends = md.split("## Trends over training")[1].split("\n## ")[0]
    key = "| superposition.mean_sq_overlap |"
    rows = [line.split(" | ") for line in trends.splitlines() if line.startswith(key)]
    assert [r[1] for r in rows] == list(SIZES)  # by parameter count
    assert all(r[2] == f"{len(STEPS)} (0–{STEPS[-1]})" for r in rows)
    assert "Trends over training" in html and "change per decade of steps" in html


def test_a_run_without_enough_checkpoints_says_why_there_are_no_trends(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1,1,a,b,,,1\n")
    md = render_report(run, progress=False).markdown.read_text()
    assert "_No trends over training: a size needs 4 checkpoints or more._" in md


def test_text_is_escaped(report: ReportPaths) -> None:
    html = report.html.read_text()
    assert "&lt;b&gt;raw&lt;/b&gt;" in html
    assert "<b>raw</b>" not in html


def test_markdown_has_fits_tables(report: ReportPaths) -> None:
    md = report.markdown.read_text()
    assert "| metric | x | form | params | CI | R² | LOO rel. error | n | note |" in md
    fits_rows = [
        line for line in md.splitlines() if line.startswith("| massive_activations.max_ratio | n_params |")
    ]
    assert len(fits_rows) == 1 and "| power_law |" in fits_rows[0] and "b ∈ [" in fits_rows[0]
    assert "&lt;b&gt;raw" in md and "<b>" not in md  # no raw HTML in the Markdown
    assert "\\| piped" in md  # pipes escaped, cell count intact
    assert fits_rows[0].count(" | ") == 8
    assert any(
        line.startswith("| loss.loss | n_params_non_embedding | saturating |") for line in md.splitlines()
    )
    assert "| 70m | 3 | massive_activations.ratio |" in md
    assert "| 410m | 23 | massive_activations.ratio | A=" in md
    assert "| massive_activations.n_massive | n_params | power_law | — | — | — | — | 4 | skipped:" in md
    assert "[report.html](report.html)" in md


def test_missing_optional_inputs_still_render(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run")
    (run / "fits.json").unlink()
    (run / "run.json").unlink()
    lines = (run / "metrics.csv").read_text().splitlines()
    keep = [
        ln
        for ln in lines
        if ",superposition," not in ln
        and ",text_dominance," not in ln
        and (",step143000," in ln or ln.startswith("model,"))
    ]
    (run / "metrics.csv").write_text("\n".join(keep) + "\n")
    paths = render_report(run, tmp_path / "out" / "r.html", progress=False)
    html = paths.html.read_text()
    assert paths.markdown == tmp_path / "out" / "r.md"
    assert "No superposition results in this run." in html
    assert "No text-dominance results in this run." in html
    assert "No scaling fits in fits.json." in html
    assert "Every size has a single checkpoint" in html
    assert "Run settings" not in html
    assert "_No scaling fits in fits.json._" in paths.markdown.read_text()


def _keep_sizes(run: Path, sizes: set[str]) -> None:
    """Leave only the rows of ``sizes`` in a run's metrics.csv."""
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    kept = [r for r in rows if r.split(",")[COLUMNS.index("size")] in sizes]
    (run / "metrics.csv").write_text("\n".join([header, *kept]) + "\n")


def test_a_one_size_run_draws_no_single_point_scaling_plots(tmp_path: Path) -> None:
    """One size: each "vs parameter count" plot would be one dot, so none is drawn and the section
    says why in one line; the other sections still plot that size."""
    run = write_run_dir(tmp_path / "run")
    (run / "fits.json").unlink()
    _keep_sizes(run, {"160m"})
    html = render_report(run, progress=False).html.read_text()
    counts = _section_images(html)
    assert counts["scaling"] == 0 and counts["steps"] == 16 and counts["retrieval"] == 1
    assert "vs n_params" not in html
    assert ("Not plotted: this run has 1 size, and a plot against parameter count needs 2 or more "
            "(each value is in the scalar metrics table below).") in html
    two = write_run_dir(tmp_path / "two")
    _keep_sizes(two, {"70m", "160m"})
    assert _section_images(render_report(two, progress=False).html.read_text())["scaling"] == 16


def test_column_order_and_bom_do_not_matter(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    order = COLUMNS[::-1]
    rows = [
        dict(zip(COLUMNS, ["m", "s", "step5", "5", "1e6", "1e5", "loss", "loss", "", "", "3.5"], strict=True))
    ]
    text = ",".join(order) + "\n" + "\n".join(",".join(r[c] for c in order) for r in rows) + "\n"
    (run / "metrics.csv").write_text("\ufeff" + text, encoding="utf-8")
    md = render_report(run, progress=False).markdown.read_text()
    assert "| loss.loss | 3.5 |" in md


def test_unknown_metrics_get_generic_plots(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [",".join(COLUMNS)]
    for i, (size, n) in enumerate([("a", 1e6), ("b", 1e7)]):
        rows += [
            f"m,{size},main,,{n},{n / 2},newthing,widget,,,{i + 1}",
            f"m,{size},main,,{n},{n / 2},newthing,per_layer,0,,{i}",
            f"m,{size},main,,{n},{n / 2},newthing,per_head,0,1,0.5",
        ]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    html = render_report(run, progress=False).html.read_text()
    counts = _section_images(html)
    assert counts["scaling"] == 1 and counts["other"] == 3 and counts["retrieval"] == 0
    assert "newthing.widget vs n_params" in html


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "metrics.csv").unlink(), "no metrics.csv"),
        (lambda d: (d / "metrics.csv").write_text("model,size,value\nm,s,1\n"), "lacks column(s)"),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\n"), "no rows"),
        (
            lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1,1,a,b,,,oops\n"),
            "line 2: value='oops'",
        ),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main\n"), "line 2 has 3 fields"),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm\n"), "line 2 has 1 field,"),
        (lambda d: (d / "fits.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "fits.json").write_text('{"version": 2}'), "version 2"),
        (lambda d: (d / "fits.json").write_text('{"fits": [{"metric": "x"}]}'), "entry 0 of 'fits'"),
        (lambda d: (d / "fits.json").write_text('{"fits": 5}'), "'fits' must be a list"),
        (lambda d: (d / "fits.json").write_text('{"last_steps": {"s": "10"}}'), "last_steps must map sizes"),
        (lambda d: (d / "fits.json").write_text('{"step_trends": [{"metric": "m"}]}'),
         "entry 0 of 'step_trends'"),
        (lambda d: (d / "fits.json").write_text(
            '{"fits": [{"metric": "m", "form": "power_law", "params": {}, "x": [1, 2], "y": [1]}]}'),
         "x and y differ in length"),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,inf,1,1,a,b,,,1\n"),
         "step='inf' is not an integer >= 0"),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1,1,a,b,0,-1,1\n"),
         "head='-1' is not an integer >= 0"),
        (lambda d: (d / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1,1,a,b,1e12,0,1\n"),
         "layer='1e12' is not an integer >= 0 below 100,000"),
    ],
)
def test_bad_inputs_raise_one_line_errors(tmp_path: Path, mutate, message: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1,1,a,b,,,1\n")
    mutate(run)
    with pytest.raises(ScalelensError, match=r"^[^\n]*$") as info:
        render_report(run, progress=False)
    assert message in str(info.value)


def test_out_must_not_be_markdown(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ScalelensError, match="pass an .html path"):
        render_report(run_dir, tmp_path / "x.md")


def test_cli_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1e6,1e5,loss,loss,,,3.1\n")
    parser = argparse.ArgumentParser(prog="scalelens")
    report_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "o" / "rep.html")])
    assert args.func(args) == 0
    assert (tmp_path / "o" / "rep.html").is_file() and (tmp_path / "o" / "rep.md").is_file()
    assert "rep.html" in capsys.readouterr().out


def test_main_report_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scalelens.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1e6,1e5,loss,loss,,,3.1\n")
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_an_out_with_a_trailing_slash_is_refused_not_written_as_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 'report RUN --out reports/' wrote an HTML file named 'reports' (and 'reports.md')
    from scalelens.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1e6,1e5,loss,loss,,,3.1\n")
    with pytest.raises(SystemExit) as exited:
        main(["report", str(run), "--out", f"{tmp_path / 'reports'}/"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_out_of_a_dash_is_refused_not_written_as_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # 'report RUN --out -' wrote files named '-' and '-.md' into the working directory
    from cli_run import assert_one_line, run_cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1e6,1e5,loss,loss,,,3.1\n")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, ["report", str(run), "--out", "-"])
    assert_one_line(rc, err, "argument --out: - is not stdout here", "pass a file path like report.html")
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    rc, _, err = run_cli(capsys, ["report", str(run), "--out", "./-"])  # a file named '-' on purpose
    assert rc == 0 and (tmp_path / "-").is_file() and (tmp_path / "-.md").is_file(), err


def test_dynamics_params_accept_lam_or_lambda() -> None:
    t = np.array([0.0, 1e3, 1e5])
    with_lambda = dynamics_from_params(t, DYN | {"A": 2.0})
    with_lam = dynamics_from_params(
        t, {k: v for k, v in DYN.items() if k != "lambda"} | {"A": 2.0, "lam": DYN["lambda"]}
    )
    assert np.allclose(with_lambda, with_lam)
    assert np.isclose(with_lambda[0], DYN["K"])  # x = t0 = 1 -> log x = 0
    assert dynamics_from_params(t, {"A": 1.0}) is None


def test_exponent_band_brackets_the_fit() -> None:
    fit = ScalingFit(
        metric="m",
        x_name="n_params",
        form="power_law",
        params={"a": 2.0, "b": 0.5},
        ci={"b": (0.4, 0.6)},
        x=(1e6, 1e8),
        y=(1, 1),
    )
    n = np.geomspace(1e5, 1e9, 50)
    line = evaluate(fit, n)
    lo, hi = exponent_band(fit, n)
    assert np.allclose(line, 2.0 * n**0.5)
    assert np.all(lo <= line) and np.all(line <= hi)
    pivot = np.argmin(np.abs(np.log(n) - np.log(1e7)))
    assert (hi - lo)[pivot] / line[pivot] < 0.05 < (hi - lo)[0] / line[0]
    sat = ScalingFit(
        metric="m",
        x_name="n_params",
        form="saturating",
        params={"C": 10.0, "alpha": 0.3, "y_inf": 1.0},
        ci={"alpha": (0.25, 0.35)},
    )
    lo, hi = exponent_band(sat, n)
    assert np.all(lo <= evaluate(sat, n)) and np.all(hi >= evaluate(sat, n)) and np.all(lo > 1.0)
    assert exponent_band(ScalingFit("m", "n_params", "power_law", {"a": 1, "b": 1}), n) is None


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing; install them with "
            ".ci/install_browser.sh (Debian chromium + chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_report_renders_in_chromium(browser, report: ReportPaths, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report.html.resolve().as_uri())
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        )
    )
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    assert len(images) >= 30
    assert [img for img in images if not (img[1] and img[2] > 0)] == []
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.05, "screenshot is (nearly) blank"


@pytest.mark.parametrize("name", ["metrics.csv", "fits.json", "run.json"])
def test_report_of_a_file_that_is_not_utf8_is_one_line(name: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from scalelens.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,,1e6,1e5,loss,loss,,,3.1\n")
    (run / name).write_bytes((run / name).read_bytes() if name == "metrics.csv" else b"{}")
    with (run / name).open("ab") as fh:
        fh.write("caf\xe9".encode("latin-1"))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} is not UTF-8" in err and "re-encode" in err, err
    assert not (run / "report.html").exists()


def test_series_are_labelled_by_size_unless_two_models_share_one() -> None:
    from scalelens.reports.metrics import parse_metrics

    def labels(models_sizes: list[tuple[str, str]]) -> list[str]:
        rows = "".join(f"{m},{s},main,,{1e6 * (i + 1)},1e5,loss,loss,,,3.1\n"
                       for i, (m, s) in enumerate(models_sizes))
        table = parse_metrics(io.StringIO(",".join(COLUMNS) + "\n" + rows, newline=""))
        return [table.label(s) for s in table.series()]

    assert labels([("pythia-70m", "70m"), ("pythia-160m", "160m")]) == ["70m", "160m"]
    assert labels([("pythia-70m", "70m"), ("other-70m", "70m")]) == ["pythia-70m 70m", "other-70m 70m"]


def test_sizes_of_one_family_share_one_scaling_line(tmp_path: Path) -> None:
    """Each size has its own model name (pythia-70m, pythia-160m): the scaling plot must join a
    family's sizes in one line, not draw every size as a family of one point."""
    from scalelens.reports.rundir import load_run
    from scalelens.reports.sections import _scaling_job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = [("EleutherAI/pythia-70m", "70m"), ("EleutherAI/pythia-160m", "160m"),
             ("EleutherAI/pythia-410m", "410m"), ("mini-other", "410m")]
    rows = "".join(f"{m},{s},main,,{1e6 * (i + 1)},1e5,loss,loss,,,{3.0 - i / 10}\n"
                   for i, (m, s) in enumerate(names))
    (run_dir / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + rows)
    run = load_run(run_dir)
    points = _scaling_job(run, "loss.loss", "n_params", ()).args[0]
    assert sorted(points) == ["EleutherAI/pythia", "mini-other"]
    assert points["EleutherAI/pythia"].labels == ["70m", "160m", "410m"]
    assert list(points["EleutherAI/pythia"].y) == pytest.approx([3.0, 2.9, 2.8])


def test_report_never_overwrites_its_inputs_nor_half_writes(run_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from scalelens.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    (tmp_path / "x.md").mkdir()
    (tmp_path / "afile").write_text("mine")
    for out, needle in ((run / "metrics.csv", "overwrite the run's own metrics.csv"),
                        (run / "fits.json", "overwrite the run's own fits.json"),
                        (run / "run.json", "overwrite the run's own run.json"),
                        (tmp_path / "x.html", "is a directory"),
                        (tmp_path / "afile" / "r.html", "which is a file")):
        assert main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (tmp_path / "x.html").exists()


def test_markdown_links_to_an_html_report_of_any_name(small_run_dir: Path, tmp_path: Path) -> None:
    # '#' would start a fragment and ')' end the link: the name is percent-encoded in the target
    name = "rep #1 (a)) 100% é.html"
    paths = render_report(small_run_dir, tmp_path / name, progress=False)
    md = paths.markdown.read_text()
    target = "rep%20%231%20%28a%29%29%20100%25%20%C3%A9.html"
    assert f"[rep #1 (a)) 100% é.html]({target})" in md


@pytest.mark.parametrize("stem", ["r" * 245, "é" * 122, "中" * 81])
def test_a_report_of_a_long_but_valid_file_name_is_written(small_run_dir: Path, tmp_path: Path,
                                                           stem: str) -> None:
    # 250 bytes is a valid name; the hidden temporary it is written through, '.NAME.host-pid.uuid.tmp',
    # was not ('File name too long', naming that temporary)
    paths = render_report(small_run_dir, tmp_path / f"{stem}.html", progress=False)
    assert paths.html.is_file() and paths.markdown.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{stem}.html", f"{stem}.md"])


def test_markdown_cells_hold_no_line_breaks() -> None:
    from scalelens.reports.markdown import escape

    assert escape("a\rb\nc\u2028d|e") == "a b c d\\|e"


def test_markdown_cells_show_stars_and_backticks_as_written() -> None:
    from scalelens.reports.markdown import escape

    assert escape("runs/*/a `x* b\\") == "runs/\\*/a \\`x\\* b\\\\"


def test_scaling_plot_compares_sizes_at_the_last_step_as_the_fits_do(tmp_path: Path) -> None:
    """A size whose last checkpoint is missing is left out of the scaling plot (its earlier
    checkpoint stood beside the other sizes' last one); a metric with no point still draws."""
    from scalelens.reports.plots import scaling_plot
    from scalelens.reports.rundir import load_run
    from scalelens.reports.sections import _scaling_job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [("pythia-70m", "70m", 10, 3.0), ("pythia-160m", "160m", 10, 2.9),
            ("pythia-160m", "160m", 20, 2.5), ("pythia-410m", "410m", 20, 2.2)]
    text = "".join(f"{m},{s},step{t},{t},{n},1e5,loss,loss,,,{v}\n"
                   for (m, s, t, v), n in zip(rows, (1e6, 2e6, 2e6, 4e6), strict=True))
    (run_dir / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + text)
    job = _scaling_job(load_run(run_dir), "loss.loss", "n_params", ())
    (points,) = job.args[0].values()
    assert points.labels == ["160m", "410m"] and list(points.y) == [2.5, 2.2]
    assert scaling_plot({}, [], x_label="n_params", y_label="loss") is not None


def test_scaling_plot_takes_each_sizes_own_last_step_from_the_fits(tmp_path: Path) -> None:
    """Sizes that train for different lengths (last steps 10, 10, 20, 20) are fitted each at its
    own last step; the plot showed only the two that reach the run's last step 20."""
    from scalelens.reports.rundir import load_run
    from scalelens.reports.sections import _scaling_job
    from scalelens.sweeps.fits import write_fits

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [("a", 10, 1e6, 3.0), ("b", 10, 2e6, 2.8), ("b", 5, 2e6, 9.0), ("c", 20, 4e6, 2.5),
            ("c", 10, 4e6, 9.0), ("d", 20, 8e6, 2.3)]
    text = "".join(f"fam-{s},{s},step{t},{t},{n},1e5,loss,loss,,,{v}\n" for s, t, n, v in rows)
    (run_dir / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + text)
    data = write_fits(run_dir, last_steps={"a": 10, "b": 10, "c": 20, "d": 20})
    assert data["last_steps"] == {"a": 10, "b": 10, "c": 20, "d": 20}
    (fit,) = [f for f in data["fits"] if f["x_name"] == "n_params" and f["metric"] == "loss.loss"]
    job = _scaling_job(load_run(run_dir), "loss.loss", "n_params", ())
    (points,) = job.args[0].values()
    assert points.labels == ["a", "b", "c", "d"] and list(points.y) == [3.0, 2.8, 2.5, 2.3] == fit["y"]


def test_a_run_too_small_to_fit_says_why_in_the_report(tmp_path: Path) -> None:
    """Two sizes cannot be fitted: fits.json and both report files say so, instead of a bare
    "No scaling fits"."""
    from scalelens.sweeps.fits import write_fits
    from scalelens.sweeps.metrics import write_metrics

    run = tmp_path / "run"
    run.mkdir()
    tasks = []
    for size in list(SIZES)[:2]:
        path = tmp_path / f"{size}.json"
        path.write_text(json.dumps(_extra_results(size)))
        tasks.append((size, path))
    write_metrics(run, tasks)
    fits = write_fits(run)
    assert fits["fits"] == [] and "a fit needs 3 sizes" in fits["notes"][0]
    paths = render_report(run, progress=False)
    for text in (paths.html.read_text(), paths.markdown.read_text()):
        assert "No scaling fits: a fit needs 3 sizes with values at their last checkpoint" in text


def test_a_latest_value_from_an_earlier_checkpoint_says_its_step(tmp_path: Path) -> None:
    """160m's last checkpoint lacks the loss (its task failed): the scalar table shows its
    step-10 value marked as such, not silently beside the other sizes' step-20 values."""
    from scalelens.reports.rundir import load_run
    from scalelens.reports.tables import latest_scalars_table

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [("70m", 20, "loss", 3.0), ("160m", 10, "loss", 2.9), ("160m", 20, "acc", 0.5),
            ("410m", 20, "loss", 2.2)]
    text = "".join(f"pythia-{s},{s},step{t},{t},{n},1e5,loss,{m},,,{v}\n"
                   for (s, t, m, v), n in zip(rows, (1e6, 2e6, 2e6, 4e6), strict=True))
    (run_dir / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + text)
    table = latest_scalars_table(load_run(run_dir))
    assert dict((r[0], r[1:]) for r in table.rows)["loss.loss"] == ("3", "2.9 (step 10)", "2.2")


def test_a_report_that_runs_out_of_room_does_not_promise_a_resume(small_run_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A report has no finished batches to keep: its full-disk line says to rerun, not that the
    run resumes; nothing half-written is left."""
    from cli_run import file_size_limit

    from scalelens.cli import main

    out = tmp_path / "o"
    out.mkdir()
    with file_size_limit(1024):
        code = main(["report", str(small_run_dir), "--out", str(out / "r.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "file-size limit" in err[0] and err[0].endswith("and rerun the same command"), err[0]
    assert f"a write to {out / 'r.html'} " in err[0] and "choose another --out" in err[0], err[0]
    assert list(out.iterdir()) == []


FIRST_REPORT_ON_A_FULL_DISK = """
import sys
sys.path.insert(0, sys.argv[1])
from cli_run import file_size_limit
from scalelens.cli import main
with file_size_limit(4096):
    code = main(["report", sys.argv[2]])
sys.exit(code)
"""


def test_a_first_report_on_a_full_disk_says_one_line_not_matplotlibs_too(tmp_path: Path) -> None:
    """A fresh MPLCONFIGDIR: matplotlib builds its font list on first import and saves it as a
    cache, which a full disk (here a 4 KiB file-size limit) refuses; its "Could not save
    font_manager cache" warning was a second stderr line beside the report's own one."""
    import subprocess
    import sys

    from cli_run import assert_one_line

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\nm,s,main,5,1e6,5e5,loss,loss,,,3.5\n")
    mpl = tmp_path / "mpl"
    mpl.mkdir()
    env = {**os.environ, "MPLCONFIGDIR": str(mpl)}
    done = subprocess.run([sys.executable, "-c", FIRST_REPORT_ON_A_FULL_DISK, str(Path(__file__).parent),
                           str(run)], env=env, capture_output=True, text=True)
    assert [p.name for p in mpl.iterdir() if p.name.startswith("fontlist")], "matplotlib built no font list"
    assert_one_line(done.returncode, done.stderr, "file-size limit", "report.html")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]


def test_only_the_font_cache_warning_of_matplotlib_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    """The filter drops matplotlib's one cache-save warning; its other font warnings still show."""
    import logging

    import scalelens.reports  # noqa: F401 - installs the filter

    log = logging.getLogger("matplotlib.font_manager")
    with caplog.at_level(logging.WARNING, logger="matplotlib.font_manager"):
        log.warning("Could not save font_manager cache %s", OSError(28, "No space left on device"))
        log.warning("findfont: Font family %r not found.", "Nonesuch")
    assert [r.getMessage() for r in caplog.records] == ["findfont: Font family 'Nonesuch' not found."]


WRITE_REPORT = """
from scalelens.reports.render import _write_both
html, me = Path(sys.argv[2]), int(sys.argv[3])
for i in range(300):
    _write_both({html: f"<p>{me} {i}</p>" + "x" * 4000 * (me + 1), html.with_suffix(".md"): f"{me} {i}"})
"""


def test_two_reports_written_at_once_never_collide(tmp_path: Path) -> None:
    """Two `scalelens report` runs of one run directory write the same report.html and
    report.md; with one shared temporary name one renamed the other's away or wrote into it."""
    from cli_run import race

    html, go = tmp_path / "report.html", tmp_path / "go"
    race(WRITE_REPORT, go, [[str(html), str(k)] for k in range(2)])
    assert html.read_text().startswith(("<p>0 299</p>", "<p>1 299</p>"))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["go", "report.html", "report.md"]


def test_a_report_while_a_sweep_writes_the_run_says_so(small_run_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep rewrites the tables only when it ends: a report made meanwhile notes the running
    sweep (its process) and still renders the run before it."""
    from cli_run import held_elsewhere

    from scalelens.cli import main

    run = tmp_path / "run"
    shutil.copytree(small_run_dir, run)
    take = ("from pathlib import Path\nfrom scalelens.sweeps.rundir import locked_run_dir\n"
            "held = locked_run_dir(Path(sys.argv[1]))\nheld.__enter__()")
    with held_elsewhere(take, str(run)) as sweeper:
        assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: a sweep is writing {run} now (process {sweeper}); its tables are rewritten when "
                   f"it ends, so this report shows the run before it (`scalelens inspect {run}` shows its "
                   "progress)"]
    assert (tmp_path / "r.html").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "r2.html")]) == 0
    assert capsys.readouterr().err == ""


def test_metrics_read_from_disk_as_the_text_parses(tmp_path: Path) -> None:
    """load_metrics streams the file; a byte-order mark, CRLF line ends and a quoted field with a
    line break inside give the rows the whole decoded text gives."""
    from scalelens.reports.metrics import load_metrics, parse_metrics

    text = ",".join(COLUMNS) + "\r\n" + "".join(
        f'pythia-70m,70m,step{k},{k},7e7,1.9e7,massive_activations,ratio,{k % 6},,{k / 7}\r\n'
        for k in range(3000)) + 'm,"s\nx",main,,1e6,1e5,loss,loss,,,3.25\r\n'
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    got = load_metrics(path)
    assert got.rows == parse_metrics(io.StringIO(text, newline="")).rows
    assert len(got.rows) == 3001 and got.rows[0].model == "pythia-70m" and got.rows[-1].size == "s\nx"


def test_a_bad_byte_deep_in_metrics_is_named_at_its_offset_in_the_file(tmp_path: Path) -> None:
    """The error names the offset in the whole file, not in the block being decoded."""
    from scalelens.reports.metrics import load_metrics

    head = (",".join(COLUMNS) + "\n" + "m,s,main,,1e6,1e5,loss,loss,,,3.1\n" * 5000).encode()
    path = tmp_path / "metrics.csv"
    path.write_bytes(head + b"m,s,main,,1e6,1e5,loss,caf\xe9,,,3.1\n")
    with pytest.raises(ScalelensError, match=f"bad byte at offset {len(head) + 26}\\)"):
        load_metrics(path)


def test_each_figure_is_freed_before_the_next_is_drawn_and_gc_is_left_as_found() -> None:
    """A figure (a web of reference cycles) is collected once drawn, not left for a rare full
    collection (with a large run's rows alive, 150 MiB of them piled up); gc is frozen while
    drawing so that collecting is cheap, and unfrozen afterwards, also when a plot fails."""
    import gc
    import weakref

    from scalelens.reports import plots, sections

    made: list[weakref.ref] = []
    alive_at_make: list[int] = []

    def make():
        alive_at_make.append(sum(ref() is not None for ref in made))
        fig, ax = plots.new_figure()
        ax.plot([0, 1], [1, 0])
        made.append(weakref.ref(fig))
        return fig

    def broken():
        raise ValueError("plot failed")

    jobs = tuple(sections.PlotJob(f"p{i}", make) for i in range(3))
    drawn = sections.draw([sections.SectionPlan("x", "X", "", jobs)], progress=False)
    assert [len(p.uri) > 100 for p in drawn[0].plots] == [True] * 3
    assert alive_at_make == [0, 0, 0]
    assert gc.get_freeze_count() == 0
    with pytest.raises(ValueError, match="plot failed"):
        sections.draw([sections.SectionPlan("x", "X", "", (sections.PlotJob("p", broken),))], progress=False)
    assert gc.get_freeze_count() == 0


def test_open_interval_ends_go_through_fits_json_the_table_and_the_plot(tmp_path: Path) -> None:
    """A 4-size saturating fit's interval is open (alpha down to 0, y_inf to -inf): fits.json
    writes null, loading gives -inf / inf back, the table prints −∞ / ∞, and the plot's y
    limits come from the data, with the band's open side running off the axes."""
    from scalelens.analyses.scaling import fit_saturating, fits_to_json
    from scalelens.reports.plots import Points, scaling_plot
    from scalelens.reports.runfiles import load_fits
    from scalelens.reports.tables import fits_table

    x = np.array([70_426_624, 162_322_944, 405_334_016, 1_011_781_632], dtype=float)
    y = 406.4 * x**-0.34 + 1.69 + np.array([0.004, -0.006, 0.003, 0.001])
    fit = fit_saturating(x, y, metric="loss")
    assert fit.ci["alpha"][0] == 0.0 and fit.ci["y_inf"][0] == -np.inf and fit.ci["C"][1] == np.inf
    path = tmp_path / "fits.json"
    path.write_text(json.dumps(fits_to_json([fit]), allow_nan=False))
    assert json.loads(path.read_text())["fits"][0]["ci"]["y_inf"][0] is None
    (back,) = load_fits(path).scaling
    assert back.ci["y_inf"] == (-math.inf, fit.ci["y_inf"][1]) and back.ci["C"][1] == math.inf
    assert back.ci["alpha"] == tuple(fit.ci["alpha"]) and back.ci_method == "profile_likelihood"
    (row,) = fits_table([back]).rows
    y_hi, a_hi = fit.ci["y_inf"][1], fit.ci["alpha"][1]
    assert f"alpha ∈ [0, {a_hi:.4g}]; y_inf ∈ [−∞, {y_hi:.4g}] (profile likelihood)" in row[4]
    assert "C ∈ [" in row[4] and ", ∞];" in row[4]
    points = {"pythia": Points(x, y, ["70m", "160m", "410m", "1b"])}
    closed = scaling_plot(points, [back], x_label="n_params", y_label="loss")
    assert "alpha CI band" in closed.axes[0].get_legend_handles_labels()[1]  # alpha = 0: a flat edge
    open_fit = dataclasses.replace(back, ci={"alpha": (0.2, math.inf)})  # a step: inf below the pivot
    fig = scaling_plot(points, [open_fit], x_label="n_params", y_label="loss")
    low, high = fig.axes[0].get_ylim()
    assert 1.5 < low < y.min() and y.max() < high < 4.0  # from the data and the band's finite side
    assert "alpha CI band (open-ended)" in fig.axes[0].get_legend_handles_labels()[1]


def test_names_are_shown_as_written_in_markdown_and_html(tmp_path: Path) -> None:
    """A model name or size label holding Markdown was formatted in report.md: ``_u_`` as
    emphasis, ``~~s~~`` struck through, ``[l](v)`` a link. They are escaped now (as ``*``, ``|``,
    backticks and ``<`` were), and ``_`` inside a word and brackets of intervals are left as they
    are; the HTML report shows the name as text."""
    run = write_run_dir(tmp_path / "run")
    name = "a<b>*x*|y _u_ [l](v) ~~s~~ `c`"
    with (run / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["model"] = name
        row["size"] = "_s_" if row["size"] == "70m" else row["size"]
    with (run / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plan = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**plan, "models": [name]}))
    paths = render_report(run, progress=False)
    md = paths.markdown.read_text()
    shown = r"a&lt;b&gt;\*x\*\|y \_u\_ [l\](v) \~\~s\~\~ \`c\`"
    assert f"| models | {shown} |" in md
    assert f"| {shown} | \\_s\\_ | " in md
    assert "| massive_activations.max_ratio | n_params |" in md and "b ∈ [" in md
    html = paths.html.read_text()
    assert "a&lt;b&gt;*x*|y _u_ [l](v) ~~s~~ `c`" in html and "<b>*x*" not in html


def test_dollar_signs_in_names_are_plotted_as_written(tmp_path: Path) -> None:
    """Model names are legend labels where two models share a size: matplotlib read
    ``fam$\\frac$A`` as mathtext and the report stopped with a parse error (an internal error
    on the command line). Dollars in the figures' texts are literal now."""
    run = write_run_dir(tmp_path / "run")
    with (run / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["model"] = "fam$\\frac$A" if row["size"] in ("14m", "70m") else "fam$x^2$B"
        row["size"] = {"70m": "14m", "410m": "160m"}.get(row["size"], row["size"])
    with (run / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths = render_report(run, progress=False)
    assert "fam$\\frac$A" in paths.html.read_text() and "fam$x^2$B" in paths.markdown.read_text()


STICKY_PROBE = """
const wrap = document.querySelector('#scalars .table-wrap');
wrap.scrollIntoView({block: 'center'});
const head = wrap.querySelector('thead th'), first = wrap.querySelector('tbody td');
const second = first.nextElementSibling, before = second.getBoundingClientRect().left;
wrap.scrollLeft = 600;
const box = wrap.getBoundingClientRect(), cell = first.getBoundingClientRect();
const hit = document.elementFromPoint(cell.left + 3, cell.top + cell.height / 2);
return {overflow: wrap.scrollWidth - wrap.clientWidth, scrolled: wrap.scrollLeft, box: box.left,
        cell: cell.left, head: head.getBoundingClientRect().left,
        moved: before - second.getBoundingClientRect().left, text: first.textContent, on_top: hit === first};
"""


def test_a_wide_tables_first_column_stays_at_the_box_edge_when_it_scrolls(browser, tmp_path: Path) -> None:
    """30 long-named sizes make the scalars table scroll inside its box; scrolled 600 px, the other
    columns move by 600 and the metric-name column (cell and header) stays at the box's left edge,
    drawn over the cells scrolled beneath it (it scrolled out of view before)."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [f"m,size-with-a-long-descriptive-name-{i:02d},main,,{1e6 * (i + 1)},{5e5 * (i + 1)},loss,loss,,,"
            f"{3 - i / 100}" for i in range(30)]
    (run / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n")
    browser.get(render_report(run, progress=False).html.resolve().as_uri())
    got = browser.execute_script(STICKY_PROBE)
    assert got["overflow"] > 600 and got["scrolled"] == 600
    assert got["moved"] == pytest.approx(600, abs=1) and got["text"] == "loss.loss"
    assert got["cell"] == pytest.approx(got["box"], abs=1) and got["head"] == pytest.approx(got["box"], abs=1)
    assert got["on_top"]
