"""Small, fast checks of sweep and report numbers, each written to catch a plausible bug
(found by mutation testing) that the larger end-to-end tests let through."""

from __future__ import annotations

import math

import pytest

from scalelens.reports.metrics import parse_metrics
from scalelens.sweeps.metrics import COLUMNS
from scalelens.sweeps.spec import select_steps


def _csv(rows: list[dict[str, object]]) -> list[str]:
    """metrics.csv lines (header first) of ``rows``; missing columns are empty cells."""
    lines = [",".join(COLUMNS)]
    lines += [",".join(str(r.get(c, "")) for c in COLUMNS) for r in rows]
    return lines


def _row(size: str, step: object, metric: str, value: float, n_params: float = 1e6,
         n_non_emb: float = 5e5, analysis: str = "superposition", **kw: object) -> dict[str, object]:
    revision = f"step{step}" if step != "" else ""
    return {"model": f"fam-{size}", "size": size, "revision": revision, "step": step,
            "n_params": n_params, "n_params_non_embedding": n_non_emb, "analysis": analysis,
            "metric": metric, "value": value, **kw}


def test_checkpoints_are_chosen_from_steps_in_any_order():
    """Step directories list as step100 < step20 by name: 'final' is still the largest step,
    and 'all' and 'log' ascend."""
    available = [100, 20, 0, 3000, 1]
    assert select_steps(available, "final") == [3000]
    assert select_steps(available, "all") == [0, 1, 20, 100, 3000]
    assert select_steps(available, "log") == [0, 1, 20, 100, 3000]


def test_a_row_without_a_step_counts_as_the_latest_checkpoint():
    """A ``main`` row (no step) is newer than any numbered checkpoint of the same size."""
    table = parse_metrics(_csv([_row("s", 100, "mean_sq_overlap", 0.5),
                                _row("s", "", "mean_sq_overlap", 0.25)]))
    (series,) = table.series()
    assert table.scalar("superposition.mean_sq_overlap", series) == 0.25
    assert [r.step for r in table.latest_rows(series)] == [None]
    assert not math.isnan(table.scalar("superposition.mean_sq_overlap", series))


def _results(step: int | None, overlap: float, n_params: int = 1000, n_non_emb: int = 600) -> dict:
    """A task's results.json with one superposition result."""
    model = {"name": "fam-s", "revision": None if step is None else f"step{step}", "step": step,
             "n_params": n_params, "n_params_non_embedding": n_non_emb}
    return {"model": model, "analyses": {"superposition": {"mean_sq_overlap": overlap, "m": 8, "n": 4}}}


def test_step_zero_stays_step_zero_from_results_to_the_report(tmp_path):
    """Step 0 (the first log checkpoint) is a step, not a missing one: read as missing, the
    report took it for ``main``, the newest checkpoint."""
    import json

    from scalelens.reports.metrics import load_metrics
    from scalelens.sweeps.metrics import rows_of, write_metrics

    assert {r["step"] for r in rows_of(_results(0, 0.5), "s")} == {0}
    tasks = []
    for step, overlap in ((0, 0.5), (1000, 0.125)):
        path = tmp_path / f"step{step}.json"
        path.write_text(json.dumps(_results(step, overlap)))
        tasks.append(("s", path))
    table = load_metrics(write_metrics(tmp_path, tasks))
    (series,) = table.series()
    assert table.steps(series) == [0, 1000]
    assert table.scalar("superposition.mean_sq_overlap", series) == 0.125


def _run(tmp_path, rows: list[dict[str, object]], fits=None):
    """A report's Run of metrics ``rows`` (and ``fits``), without files."""
    from scalelens.reports.rundir import Run
    from scalelens.reports.runfiles import Fits

    return Run(tmp_path, parse_metrics(_csv(rows)), fits or Fits(), None)


def test_sizes_table_shows_each_count_in_its_column(tmp_path):
    """Total and non-embedding parameters, checkpoints and the latest step, per size."""
    from scalelens.reports.tables import sizes_table

    rows = [_row(s, step, "mean_sq_overlap", 0.1, n_params=n, n_non_emb=n // 4)
            for s, n in (("big", 9_000_000), ("small", 1_000_000)) for step in (10, 300, 20)]
    table = sizes_table(_run(tmp_path, rows))
    assert table.rows == (("fam-small", "small", "1M", "250k", "3", "300"),
                          ("fam-big", "big", "9M", "2.25M", "3", "300"))
    t = parse_metrics(_csv(rows))
    small = t.series()[0]
    assert t.n_params(small, "n_params_non_embedding") == 250_000 and t.n_params(small) == 1_000_000


def test_sizes_table_counts_share_one_format_across_scales(tmp_path):
    """Parameter counts were written with .4g: 3312 beside 3.734e+04 in one column. Now each
    is 4 significant digits with a k/M/B/T suffix, in HTML and Markdown alike (one Table)."""
    from scalelens.reports.tables import sizes_table

    counts = {"a": 512, "b": 3312, "c": 37_340, "d": 999_950, "e": 70_426_624, "f": 1_207_000_000_000}
    rows = [_row(s, 10, "mean_sq_overlap", 0.1, n_params=n, n_non_emb=n // 2) for s, n in counts.items()]
    table = sizes_table(_run(tmp_path, rows))
    assert [r[2:4] for r in table.rows] == [("512", "256"), ("3.312k", "1.656k"), ("37.34k", "18.67k"),
                                            ("1M", "500k"), ("70.43M", "35.21M"), ("1.207T", "603.5B")]


def _scaling_fit(r2: float, loo: float, ci: tuple[float, float]):
    from scalelens.reports.runfiles import ScalingFit

    return ScalingFit("superposition.mean_sq_overlap", "n_params", "power_law", {"a": 2.0, "b": -0.5},
                      {"b": ci}, r2, loo, 4, ci_method="ols_t")


def test_fits_table_keeps_r2_loo_error_and_ci_bounds_apart():
    from scalelens.reports.tables import fits_table

    (row,) = fits_table([_scaling_fit(0.9876, 0.0123, (-0.75, -0.25))]).rows
    cells = dict(zip(fits_table([]).columns, row, strict=True))
    assert cells["R²"] == "0.9876" and cells["LOO rel. error"] == "0.0123"
    assert cells["CI"] == "b ∈ [-0.75, -0.25] (OLS t)" and cells["n"] == "4"
    assert cells["params"] == "a=2, b=-0.5"


def _dyn(size: str, layer: int, r2: float, peak: float):
    from scalelens.reports.runfiles import DynamicsFit

    return DynamicsFit(size, layer, {"A": 1.0, "lambda": 0.1, "gamma": 1.0, "t0": 1.0, "K": 0.0}, r2, peak)


def test_dynamics_digest_gives_the_median_and_range_of_each_column():
    """R² and peak step of each size's layers: median [min, max], not the mean."""
    from scalelens.reports.tables import dynamics_digest

    fits = [_dyn("s", i, r2, peak) for i, (r2, peak) in
            enumerate(((0.1, 100.0), (0.8, 200.0), (0.9, 9000.0)))] + [_dyn("t", 0, 0.5, 50.0)]
    rows = dynamics_digest(fits).rows
    assert rows[0] == ("s", "massive_activations.ratio", "3", "0.8 [0.1, 0.9]", "200 [100, 9000]")
    assert rows[1] == ("t", "massive_activations.ratio", "1", "0.5 [0.5, 0.5]", "50 [50, 50]")


def _trend(size: str, slope: float, rho: float, p: float):
    from scalelens.analyses.trends import StepTrend

    return StepTrend("m.x", size, 5, 0, 100, 1.0, 2.0, slope, (slope - 1, slope + 1), 0.5, rho, p)


def test_trends_digest_counts_only_significant_trends_and_names_first_and_last_size():
    """Rising / falling need Spearman p < 0.05; the slopes quoted are the first and last size's."""
    from scalelens.reports.tables import trends_digest

    ts = [_trend("a", 1.0, 0.9, 0.01), _trend("b", 2.0, -0.9, 0.01), _trend("c", 4.0, 0.3, 0.5),
          _trend("d", 8.0, -0.2, 0.4), _trend("e", 16.0, 0.99, 0.001)]
    (row,) = trends_digest(ts).rows
    assert row == ("m.x", "5 (a–e)", "2 / 1 / 2", "a: 1; median 4; e: 16")


def _flat(analyses: dict) -> dict[tuple[str, object, object], float]:
    """metrics.csv rows of one task as {(metric, layer, head): value}."""
    from scalelens.sweeps.metrics import rows_of

    model = {"name": "m", "n_params": 10, "n_params_non_embedding": 5, "step": 3}
    return {(r["metric"], r["layer"], r["head"]): r["value"]
            for r in rows_of({"model": model, "analyses": analyses}, "s")}


def test_flattened_results_keep_layer_head_and_their_own_values():
    """Retrieval scores by (layer, head), counts of massive activations, dilution MDIs; an
    infinite value is left out as a NaN is."""
    rows = _flat({
        "retrieval_heads": {"fraction": float("inf"), "fraction_zero": 0.5,
                            "scores": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]},
        "massive_activations": {"per_layer": [{"layer": i, "ratio": 2.0 + i, "max_abs": 1.0,
                                               "median_abs": 0.5} for i in range(4)],
                                "massive": [{"layer": 1}, {"layer": 2}]},
        "text_dominance": {"per_layer": [], "groups": {"middle": {"mdi": 1.5}},
                           "dilution": [{"factor": 2, "mdi_middle": 0.75, "mdi": 9.0}]},
    })
    assert rows[("score", 0, 2)] == 0.3 and rows[("score", 1, 0)] == 0.4
    assert rows[("n_massive", "", "")] == 2 and rows[("max_ratio", "", "")] == 5.0
    assert rows[("mdi_middle_x2", "", "")] == 0.75 and rows[("mdi_middle", "", "")] == 1.5
    assert ("fraction", "", "") not in rows and rows[("fraction_zero", "", "")] == 0.5


def _fit_rows(per_size: dict[str, tuple[float, float, float]], metric: str = "mean_sq_overlap",
              analysis: str = "superposition", step: int = 9) -> list[dict[str, str]]:
    """Rows as the fits read metrics.csv: {size: (n_params, non-embedding params, value)}."""
    return [{"model": s, "size": s, "revision": f"step{step}", "step": str(step), "n_params": str(n),
             "n_params_non_embedding": str(ne), "analysis": analysis, "metric": metric, "layer": "",
             "head": "", "value": str(v)} for s, (n, ne, v) in per_size.items()]


def test_each_fit_is_made_against_its_own_x():
    """The non-embedding fit's points are the non-embedding counts, not the totals."""
    from scalelens.sweeps.fits import scaling_fits

    per_size = {"s1": (1e6, 2e5, 0.4), "s2": (4e6, 1.5e6, 0.3), "s3": (1.6e7, 9e6, 0.2)}
    fits = {f.x_name: f for f in scaling_fits(_fit_rows(per_size))}
    assert fits["n_params"].x == [1e6, 4e6, 1.6e7]
    assert fits["n_params_non_embedding"].x == [2e5, 1.5e6, 9e6]
    assert fits["n_params_non_embedding"].y == [0.4, 0.3, 0.2]


def test_the_loss_is_paired_with_its_own_sizes_width():
    """Widths listed in another order than the losses, and a size without one, still pair up."""
    from scalelens.sweeps.fits import scaling_fits

    widths = {"s4": 256, "s3": 128, "s2": 64, "s1": 32}  # s5 has no width
    loss = {s: 40.0 / m ** 0.9 + 2.5 for s, m in widths.items()}
    rows = _fit_rows({s: (m ** 2, m ** 2, m) for s, m in widths.items()}, "m")
    rows += _fit_rows({s: (m ** 2, m ** 2, loss[s]) for s, m in sorted(widths.items())},
                      "nll_bits_per_token", "information_capacity")
    rows += _fit_rows({"s5": (1e6, 1e6, 2.6)}, "nll_bits_per_token", "information_capacity")
    (fit,) = [f for f in scaling_fits(rows) if f.x_name == "superposition.m"]
    assert dict(zip(fit.x, fit.y, strict=True)) == pytest.approx({m: loss[s] for s, m in widths.items()})


def test_each_sizes_last_planned_step_is_its_largest():
    from scalelens.sweeps.run import _last_steps
    from scalelens.sweeps.spec import Task

    tasks = [Task(s, "src", f"step{t}", t) for s, steps in (("a", (5, 10)), ("b", (0, 20, 40)))
             for t in steps]
    assert _last_steps(tasks) == {"a": 10, "b": 40}



def test_a_final_model_is_named_as_such_and_step_0_stays_step_0():
    """A size measured without a training step (metrics.csv's step empty) is compared at its final
    model, not "step 0"; a size whose only checkpoint is step 0 (Pythia's step0) is at step 0."""
    from scalelens.sweeps.fits import scaling_fits, unfitted_note
    from scalelens.sweeps.run import _last_steps
    from scalelens.sweeps.spec import Task

    tasks = [Task("a", "src", None, None), Task("z", "src", "step0", 0), Task("b", "src", "step0", 0),
             Task("b", "src", "step20", 20)]
    assert _last_steps(tasks) == {"a": None, "z": 0, "b": 20}
    final = [{**r, "revision": "", "step": ""} for r in _fit_rows({"a": (1e6, 5e5, 0.4)})]
    rows = final + _fit_rows({"z": (4e6, 2e6, 0.3)}, step=0)
    assert unfitted_note(rows, last_steps={"a": None, "z": 0}) == (
        "a fit needs 3 sizes with values at their last checkpoint, and only a (final model), "
        "z (step 0) have them")
    assert unfitted_note(final) == (
        "a fit needs 3 sizes with values at their last checkpoint, and only a (final model) has them")
    plain = [{**r, "revision": "", "step": ""} for r in _fit_rows({"b": (2e6, 1e6, 0.5)})]
    (fit, *_) = scaling_fits(rows + plain + _fit_rows({"c": (8e6, 4e6, 0.2)}, step=0),
                             last_steps={"a": None, "b": None, "z": 0, "c": 0})
    assert fit.n_points == 4 and fit.note == (
        "sizes compared at their own last checkpoint (a: final model, z: 0, b: final model, c: 0)")


def test_trends_are_tabled_smallest_size_first_not_by_label(tmp_path):
    """'160m' sorts before '70m' as text; the table orders sizes by parameter count."""
    from scalelens.reports.runfiles import Fits
    from scalelens.reports.tables import trends_table

    rows = [_row(s, 10, "mean_sq_overlap", 0.1, n_params=n) for s, n in (("70m", 7e7), ("160m", 1.6e8))]
    fits = Fits(trends=(_trend("160m", 2.0, 0.5, 0.1), _trend("70m", 1.0, 0.5, 0.1)))
    assert [r[1] for r in trends_table(_run(tmp_path, rows, fits)).rows] == ["70m", "160m"]


def test_each_scaling_plot_gets_its_own_xs_fits_and_only_finite_points(tmp_path):
    """The plot against non-embedding parameters draws that fit alone, at the non-embedding
    counts; a size whose value is not a number is left out of the points."""
    from scalelens.reports.runfiles import Fits, ScalingFit
    from scalelens.reports.sections import plan_scaling

    rows = [_row(s, 10, "mean_sq_overlap", v, n_params=n, n_non_emb=n / 10)
            for s, n, v in (("a", 1e6, 0.4), ("b", 1e7, "nan"), ("c", 1e8, 0.1))]
    fits = tuple(ScalingFit("superposition.mean_sq_overlap", x, "power_law", {"a": 1.0, "b": -0.1})
                 for x in ("n_params", "n_params_non_embedding"))
    jobs = {j.title: j.make for j in plan_scaling(_run(tmp_path, rows, Fits(scaling=fits))).jobs}
    make = jobs["superposition.mean_sq_overlap vs n_params_non_embedding"]
    points, drawn = make.args
    (family,) = points.values()
    assert list(family.x) == [1e5, 1e7] and list(family.y) == [0.4, 0.1] and family.labels == ["a", "c"]
    assert [f.x_name for f in drawn] == ["n_params_non_embedding"]


def test_up_to_max_dynamics_rows_are_tabled_one_by_one():
    from scalelens.reports.tables import MAX_DYNAMICS_ROWS, dynamics_table

    fits = [_dyn("s", i, 0.5, 10.0) for i in range(MAX_DYNAMICS_ROWS)]
    assert len(dynamics_table(fits).rows) == MAX_DYNAMICS_ROWS
    assert len(dynamics_table([*fits, _dyn("s", MAX_DYNAMICS_ROWS, 0.5, 10.0)]).rows) == 1


def _own_run(tmp_path, steps=(5, 40)):
    """A training run directory with ``checkpoint-N`` saves (config and a weights file each)."""
    run = tmp_path / "train"
    for n in steps:
        (run / f"checkpoint-{n}").mkdir(parents=True)
        (run / f"checkpoint-{n}" / "config.json").write_text("{}")
        (run / f"checkpoint-{n}" / "model.safetensors").write_bytes(b"")
    return str(run)


def test_own_checkpoints_keep_their_names_and_sizes_their_order(tmp_path):
    """Tasks load ``checkpoint-N`` as it is named; sizes run in the order asked; a repeated
    step is one task."""
    from scalelens.sweeps.spec import SweepSpec, expand

    run = _own_run(tmp_path)
    spec = SweepSpec(models={"a": run, "b": run}, sizes=("b", "a"), checkpoints=(40, 5, 40),
                     analyses=("superposition",))
    assert [(t.size, t.revision, t.step) for t in expand(spec)] == [
        ("b", "checkpoint-5", 5), ("b", "checkpoint-40", 40),
        ("a", "checkpoint-5", 5), ("a", "checkpoint-40", 40)]
    final = SweepSpec(models={"a": run}, checkpoints="final", analyses=("superposition",))
    assert [t.key for t in expand(final)] == ["a/checkpoint-40"]


def test_a_run_directory_is_not_resumed_with_another_dtype_or_setting(tmp_path):
    """dtype and analysis settings change what finished tasks mean; the batch size does not."""
    from scalelens.errors import ScalelensError
    from scalelens.sweeps.rundir import check_run_dir
    from scalelens.sweeps.spec import SweepSpec

    run = _own_run(tmp_path)

    def spec(**kw):
        return SweepSpec(models={"a": run}, analyses=("retrieval_heads",), **kw)

    out = tmp_path / "out"
    check_run_dir(out, spec(settings={"n_needles": 1, "batch_size": 4}), overwrite=False)
    check_run_dir(out, spec(settings={"n_needles": 1, "batch_size": 2}), overwrite=False)
    with pytest.raises(ScalelensError, match="different settings"):
        check_run_dir(out, spec(settings={"n_needles": 2, "batch_size": 4}), overwrite=False)
    with pytest.raises(ScalelensError, match="different dtype"):
        check_run_dir(out, spec(settings={"n_needles": 1}, dtype="float16"), overwrite=False)


def test_latest_values_are_the_last_checkpoints(tmp_path):
    """Scalars, per-layer values and head matrices of a size are those of its last step."""
    from scalelens.reports.tables import latest_scalars_table

    rows = []
    for step, scale in ((100, 1.0), (20, 10.0)):
        rows += [_row("s", step, "mean_sq_overlap", 0.5 * scale),
                 _row("s", step, "ratio", 3.0 * scale, analysis="massive_activations", layer=0),
                 _row("s", step, "ratio", 4.0 * scale, analysis="massive_activations", layer=1),
                 _row("s", step, "score", 0.25 * scale, analysis="retrieval_heads", layer=0, head=1)]
    run = _run(tmp_path, rows)
    (series,) = run.series()
    assert latest_scalars_table(run).rows == (("superposition.mean_sq_overlap", "0.5"),)
    layers, values = run.table.by_layer("massive_activations.ratio", series)
    assert list(layers) == [0, 1] and list(values) == [3.0, 4.0]
    matrix = run.table.head_matrix("retrieval_heads.score", series)
    assert matrix.shape == (1, 2) and matrix[0, 1] == 0.25 and math.isnan(matrix[0, 0])


def test_no_unfitted_note_when_some_metric_has_enough_sizes():
    """fits.json says why nothing was fitted only when nothing was: one metric measured on
    two sizes beside one fitted on three is no reason for the note."""
    from scalelens.sweeps.fits import scaling_fits, unfitted_note

    rows = _fit_rows({"s1": (1e6, 5e5, 0.4), "s2": (4e6, 2e6, 0.3), "s3": (1.6e7, 8e6, 0.2)})
    rows += _fit_rows({"s1": (1e6, 5e5, 1.0), "s2": (4e6, 2e6, 2.0)}, "loss", "massive_activations")
    assert unfitted_note(rows) == ""
    assert {f.metric for f in scaling_fits(rows)} == {"superposition.mean_sq_overlap"}
    assert "only s1 (step 9), s2 (step 9) have them" in unfitted_note(rows[3:])


def test_dynamics_fits_take_numbered_checkpoints_only():
    """A ``main`` row (no step) has no place on the step axis: it is left out, not read as 0."""
    from scalelens.sweeps.fits import MIN_DYNAMICS_POINTS, dynamics_fits

    steps = [10 * 2 ** i for i in range(MIN_DYNAMICS_POINTS)]
    rows = [{"size": "s", "step": str(t), "analysis": "massive_activations", "metric": "ratio",
             "layer": "1", "head": "", "value": str(5.0 + 40.0 * math.exp(-t / 300) * math.log(t))}
            for t in steps]
    rows.append({**rows[0], "step": "", "value": "99"})
    (fit,) = dynamics_fits(rows)
    assert (fit.size, fit.layer, fit.n_points) == ("s", 1, MIN_DYNAMICS_POINTS)
    assert dynamics_fits(rows[1:]) == []  # one checkpoint short


def test_inspect_counts_a_task_with_results_as_done_whatever_its_old_error_log(tmp_path):
    """results.json is written last: a task holding it is done, even beside an error.log left
    by an earlier attempt (which ``inspect`` would otherwise report as its failure)."""
    import json

    from scalelens.sweeps.status import run_status

    (tmp_path / "run.json").write_text(json.dumps({"finished": True, "tasks": [
        {"key": "a/step1"}, {"key": "a/step2"}, {"key": "a/step3"}]}))
    for name, files in (("step1", ("results.json", "error.log")), ("step2", ("error.log",)),
                        ("step3", ("partial.h5",))):
        folder = tmp_path / "tasks" / "a" / name
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_text("boom\n" if f == "error.log" else "{}")
    status = run_status(tmp_path)
    assert status.state == {"a/step1": "done", "a/step2": "failed", "a/step3": "unfinished"}
    assert status.errors == {"a/step2": "boom"}


def test_the_massive_activation_loss_gets_a_saturating_fit_too():
    """A loss has a floor: it is fitted with the saturating form beside the power law."""
    from scalelens.sweeps.fits import scaling_fits

    per_size = {f"s{i}": (n, n / 2, 20.0 * n ** -0.3 + 2.0) for i, n in enumerate((1e5, 1e6, 1e7, 1e8))}
    fits = scaling_fits(_fit_rows(per_size, "loss", "massive_activations"))
    assert sorted((f.x_name, f.form) for f in fits) == [
        ("n_params", "power_law"), ("n_params", "saturating"),
        ("n_params_non_embedding", "power_law"), ("n_params_non_embedding", "saturating")]


def test_a_sweep_that_finishes_no_task_leaves_no_earlier_tables(micro_suite, tmp_path):
    """Tables of an earlier run must not pass for this one's when none of its tasks finished."""
    import shutil

    from scalelens.models.suite import read_manifest
    from scalelens.sweeps.run import sweep
    from scalelens.sweeps.spec import SweepSpec

    suite = tmp_path / "suite"
    shutil.copytree(micro_suite, suite)
    manifest = read_manifest(suite)
    size, step = manifest.sizes[0], manifest.steps[-1]
    (suite / size / f"step{step}" / "config.json").write_text("{not json")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.csv", "fits.json"):
        (run / name).write_text("stale\n")
    spec = SweepSpec(suite=str(suite), sizes=(size,), checkpoints=(step,), analyses=("superposition",))
    summary = sweep(spec, run)
    assert summary.count("failed") == 1
    assert not (run / "metrics.csv").exists() and not (run / "fits.json").exists()


def test_the_saturating_curve_falls_to_its_floor():
    """y = C N^-alpha + y_inf: the report's curve at N = 1 and N = 100 for C=10, alpha=0.5, y_inf=1."""
    import numpy as np

    from scalelens.reports.curves import evaluate
    from scalelens.reports.runfiles import ScalingFit

    fit = ScalingFit("m.x", "n_params", "saturating", {"C": 10.0, "alpha": 0.5, "y_inf": 1.0})
    assert list(evaluate(fit, np.array([1.0, 100.0]))) == pytest.approx([11.0, 2.0])


def test_run_json_lists_sizes_in_the_sweeps_order(tmp_path):
    from scalelens.sweeps.run import _run_info
    from scalelens.sweeps.spec import SweepSpec, expand

    run = _own_run(tmp_path)
    spec = SweepSpec(models={"a": run, "b": run}, sizes=("b", "a"), checkpoints="final",
                     analyses=("superposition",))
    assert _run_info(spec, expand(spec), [], "now", finished=False)["sizes"] == ["b", "a"]


def test_run_json_lists_models_in_the_sweeps_order_not_alphabetically(tmp_path):
    """The Run table of the report shows run.json's models: Pythia's 70m, 160m, 1.4b in that order
    (sorted by name, 1.4b came first and 70m last); own models in the order of their sizes."""
    from scalelens.sweeps.run import _run_info
    from scalelens.sweeps.spec import SweepSpec, expand

    def models(spec: SweepSpec) -> list[str]:
        return _run_info(spec, expand(spec), [], "now", finished=False)["models"]

    pythia = SweepSpec(family="pythia", sizes=("70m", "160m", "1.4b"), checkpoints=(143000,),
                       analyses=("superposition",))
    assert models(pythia) == ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-1.4b"]
    small, big = _own_run(tmp_path / "z"), _own_run(tmp_path / "a")
    own = SweepSpec(models={"small": small, "big": big}, checkpoints="final", analyses=("superposition",))
    assert models(own) == [small, big]
