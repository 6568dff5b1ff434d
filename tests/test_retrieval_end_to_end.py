"""The retrieval pipeline end to end, through the CLI, on models that do retrieve.

``tests/copy_model.py`` hand-sets GPT-2s that answer every needle through one known head, so
every number past scoring is known in advance: that head's score is 1 and every other head's
0, the retrieval fraction is 1 / (layers x heads), and the ablation's arms recall 1 (nothing
masked), 0 (the top head, the copy head, masked) and 1 (a random other head masked). The
micro-suite models never retrieve, so there ``results.json``, ``metrics.csv``, ``fits.json`` and
the report only ever carry nulls, dashes and zeros.
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_cli
from copy_model import COPY_HEAD, N_HEADS, N_LAYERS, copy_model, save_copy_model
from tiny_models import word_tokenizer

from scalelens.cli import main
from scalelens.reports.analysis_sections import plan_retrieval
from scalelens.reports.rundir import load_run

# size -> (layers, heads, copy head); more layers, more parameters, a smaller fraction
SIZES = {"a": (N_LAYERS, N_HEADS, COPY_HEAD), "b": (3, 8, (2, 5)), "c": (4, 8, (0, 7))}
LENGTHS, DEPTHS = (12, 48), (0.0, 0.5, 1.0)
N_TESTS = 3 * len(LENGTHS) * len(DEPTHS)  # copy_model.NEEDLES x lengths x depths
ABLATION = {"k": 1, "seed": 0, "n_tests": 8, "recall_unmasked": 1.0, "recall_top_masked": 0.0,
            "recall_random_masked": 1.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One saved copy model per size; the needles and haystack beside size a's."""
    root = tmp_path_factory.mktemp("copy_models")
    return {size: save_copy_model(root / size, layers, heads, head)
            for size, (layers, heads, head) in SIZES.items()}


def _needle_files(models: dict[str, Path]) -> tuple[Path, Path]:
    return models["a"].parent / "needles.jsonl", models["a"].parent / "haystack.txt"


def _expected_scores(size: str) -> list[list[float]]:
    layers, heads, (layer, head) = SIZES[size]
    scores = np.zeros((layers, heads))
    scores[layer, head] = 1.0
    return scores.tolist()


def _measure(capsys, models, out: Path, *extra: str) -> dict:
    needles, haystack = _needle_files(models)
    rc, _, err = run_cli(capsys, [
        "measure", "--quiet", "--model", str(models["a"]), "--analyses", "retrieval_heads",
        "--needles", str(needles), "--haystack", str(haystack), "--ablation-k", "1",
        "--context-lengths", ",".join(map(str, LENGTHS)), "--depths", ",".join(map(str, DEPTHS)),
        "--out", str(out), *extra])
    assert rc == 0, err
    return json.loads((out / "results.json").read_text())["analyses"]["retrieval_heads"]


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_measure_finds_the_copy_head_and_its_ablation(capsys, models, tmp_path, mode):
    got = _measure(capsys, models, tmp_path / mode, "--retrieval-mode", mode)
    assert got["mode"] == mode and got["n_tests"] == got["n_tests_passed"] == N_TESTS
    assert got["scores"] == _expected_scores("a")
    assert got["retrieval_heads"] == [list(COPY_HEAD)]
    assert got["fraction"] == 1 / 8 and got["fraction_zero"] == 7 / 8
    ablation = got["ablation"]
    assert ablation["top_heads"] == [list(COPY_HEAD)] and len(ablation["random_heads"]) == 1
    assert ablation["random_heads"][0] != list(COPY_HEAD)
    assert {k: ablation[k] for k in ABLATION} == ABLATION


def test_analyze_reproduces_the_measure_from_the_capture(capsys, models, tmp_path):
    """``analyze DIR`` rescores the fast capture with the measure's bar and gate; ``--threshold 1``
    leaves no head above it (the copy head scores exactly 1), ``--gate 1`` no test passing."""
    measured = _measure(capsys, models, tmp_path)
    rc, out, err = run_cli(capsys, ["analyze", str(tmp_path)])
    assert rc == 0, err
    again = json.loads(out)["retrieval.h5"]["retrieval_heads"]
    assert again == {k: v for k, v in measured.items() if k not in ("mode", "ablation")}
    rc, out, err = run_cli(capsys, ["analyze", str(tmp_path), "--threshold", "1"])
    strict = json.loads(out)["retrieval.h5"]["retrieval_heads"]
    assert rc == 0 and strict["scores"] == _expected_scores("a"), err
    assert strict["retrieval_heads"] == [] and strict["fraction"] == 0.0 and strict["threshold"] == 1.0
    rc, out, err = run_cli(capsys, ["analyze", str(tmp_path), "--gate", "1"])
    gated = json.loads(out)["retrieval.h5"]["retrieval_heads"]
    assert rc == 0 and gated["n_tests_passed"] == 0 and gated["fraction"] is None, err


def _spec(path: Path, models: dict[str, Path], files: Path, checkpoints: str = "final", **settings) -> Path:
    """A TOML sweep spec measuring retrieval heads with the needles and haystack in ``files``."""
    lines = [f"models = {{ {', '.join(f'{k} = {json.dumps(str(v))}' for k, v in models.items())} }}",
             f'checkpoints = "{checkpoints}"', 'analyses = ["retrieval_heads"]', "[settings]",
             f"needles = {json.dumps(str(files / 'needles.jsonl'))}",
             f"haystack = {json.dumps(str(files / 'haystack.txt'))}",
             f"context_lengths = {list(LENGTHS)}", f"depths = {list(DEPTHS)}", "ablation_k = 1",
             *(f"{k} = {v}" for k, v in settings.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _sweep_and_report(run: Path, spec: Path) -> tuple[list[dict[str, str]], str, str]:
    """Sweep ``spec`` into ``run`` and report it: metrics.csv rows, report.html, report.md."""
    assert main(["sweep", "--quiet", "--spec", str(spec), "--out", str(run)]) == 0
    assert main(["report", "--quiet", str(run)]) == 0
    with (run / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, (run / "report.html").read_text(), (run / "report.md").read_text()


def _captions(page: str) -> dict[str, str]:
    """The retrieval section's figure captions by size, as text."""
    section = page[page.index('<section id="retrieval">'):]
    section = section[:section.index("</section>")]
    found = re.findall(r"<figcaption><strong>retrieval scores, (\w+)</strong> — (.*?)</figcaption>", section)
    return {size: html.unescape(text) for size, text in found}


def _markdown_row(md: str, metric: str) -> list[str]:
    """One metric's cells in the Markdown table of scalars at the latest checkpoint."""
    scalars = md[md.index("## Scalar metrics at the latest checkpoint"):]
    (line,) = [ln for ln in scalars.splitlines() if ln.startswith(f"| {metric} |")]
    return [c.strip() for c in line.strip("|").split("|")][1:]


def _heads_table(md: str) -> list[list[str]]:
    """The rows of the Markdown table of retrieval heads (size, checkpoint, count, top heads)."""
    section = md[md.index("## Retrieval heads at the latest checkpoint"):]
    lines = [ln for ln in section.splitlines()[6:] if ln.startswith("|")]  # past the note and header
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _heatmaps(run: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Each size's drawn retrieval heatmap: its title and the matrix it shows."""
    out = {}
    for job in plan_retrieval(load_run(run)).jobs:
        ax = job.make().axes[0]
        out[job.title.rsplit(", ", 1)[1]] = (ax.get_title(), np.ma.filled(ax.images[0].get_array(), np.nan))
    return out


@pytest.fixture(scope="module")
def swept(models, tmp_path_factory):
    """A sweep over the three copy-model sizes, reported."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = _spec(tmp / "spec.toml", models, models["a"].parent)
    return tmp / "run", _sweep_and_report(tmp / "run", spec)


def test_sweep_metrics_hold_each_size_fraction_scores_and_ablation(swept, models):
    run, (rows, _, _) = swept
    retrieval = [r for r in rows if r["analysis"] == "retrieval_heads"]
    scalars = {(r["size"], r["metric"]): float(r["value"]) for r in retrieval if r["layer"] == ""}
    for size, (layers, heads, _) in SIZES.items():
        assert scalars[size, "fraction"] == pytest.approx(1 / (layers * heads), abs=1e-15)
        assert scalars[size, "fraction_zero"] == pytest.approx(1 - 1 / (layers * heads), abs=1e-15)
        assert scalars[size, "n_tests_passed"] == N_TESTS
        for key in ("recall_unmasked", "recall_top_masked", "recall_random_masked"):
            assert scalars[size, key] == ABLATION[key]
        scores = np.zeros((layers, heads))
        for r in retrieval:
            if r["size"] == size and r["metric"] == "score":
                scores[int(r["layer"]), int(r["head"])] = float(r["value"])
        assert scores.tolist() == _expected_scores(size)
        assert sum(r["size"] == size and r["metric"] == "score" for r in retrieval) == layers * heads
    params = {r["size"]: int(r["n_params"]) for r in rows}
    assert params == {s: sum(p.numel() for p in copy_model(*SIZES[s]).parameters()) for s in SIZES}
    assert params["a"] < params["b"] < params["c"]


def test_sweep_fits_the_fraction_against_parameters(swept):
    run, (rows, _, _) = swept
    fits = {(f["metric"], f["x_name"]): f for f in json.loads((run / "fits.json").read_text())["fits"]}
    params = {r["size"]: int(r["n_params"]) for r in rows}
    fit = fits["retrieval_heads.fraction", "n_params"]
    fractions = [1 / (layers * heads) for layers, heads, _ in SIZES.values()]
    assert fit["y"] == pytest.approx(fractions) and fit["x"] == [params[s] for s in SIZES]
    slope, intercept = np.polyfit(np.log(fit["x"]), np.log(fractions), 1)
    assert fit["params"]["b"] == pytest.approx(slope)
    assert fit["params"]["a"] == pytest.approx(np.exp(intercept))
    assert fits["retrieval_heads.recall_unmasked", "n_params"]["params"] == {"a": 1.0, "b": 0.0}
    top_masked = fits["retrieval_heads.recall_top_masked", "n_params"]  # all zeros: no log-log fit
    assert top_masked["params"] == {} and "y > 0" in top_masked["note"]
    assert ("retrieval_heads.n_tests_passed", "n_params") not in fits


def test_report_shows_each_size_fraction_heads_and_ablation(swept):
    run, (_, page, md) = swept
    heads = "heads > 0.1, layer.head (score)"
    assert _captions(page) == {"a": f"fraction > 0.1: 12.5%; exactly 0: 87.5%; {heads}: 1.2 (1)",
                               "b": f"fraction > 0.1: 4.2%; exactly 0: 95.8%; {heads}: 2.5 (1)",
                               "c": f"fraction > 0.1: 3.1%; exactly 0: 96.9%; {heads}: 0.7 (1)"}
    assert "Heads scoring above the run's threshold 0.1 (Wu et al. 2024 use 0.1)" in md
    assert _heads_table(md) == [["a", "final model", "1 of 8", "1.2 (1)"],
                                ["b", "final model", "1 of 24", "2.5 (1)"],
                                ["c", "final model", "1 of 32", "0.7 (1)"]]
    assert _markdown_row(md, "retrieval_heads.fraction") == ["0.125", "0.04167", "0.03125"]
    assert _markdown_row(md, "retrieval_heads.n_tests_passed") == [str(N_TESTS)] * 3
    assert _markdown_row(md, "retrieval_heads.recall_unmasked") == ["1", "1", "1"]
    assert _markdown_row(md, "retrieval_heads.recall_top_masked") == ["0", "0", "0"]
    assert _markdown_row(md, "retrieval_heads.recall_random_masked") == ["1", "1", "1"]
    for size, (title, matrix) in _heatmaps(run).items():  # the copy head lit, at (layer, head)
        layers, heads, _ = SIZES[size]
        assert title == f"{size}: 1/{layers * heads} heads > 0.1"
        assert matrix.tolist() == _expected_scores(size)


def test_report_names_the_runs_own_retrieval_threshold(models, tmp_path):
    """With ``threshold = 1`` the copy head (score exactly 1) is not above it: the fraction is 0,
    and the report says "> 1", not the default "> 0.1" that the copy head is above."""
    spec = _spec(tmp_path / "spec.toml", {"a": models["a"]}, models["a"].parent, threshold=1.0)
    rows, page, md = _sweep_and_report(tmp_path / "run", spec)
    assert {r["metric"]: r["value"] for r in rows if r["layer"] == ""}["fraction"] == "0.0"
    assert _captions(page) == {"a": "fraction > 1: 0.0%; exactly 0: 87.5%; "
                                    "heads > 1, layer.head (score): none"}
    assert _heads_table(md) == [["a", "final model", "0 of 8", "none"]]
    ((title, matrix),) = _heatmaps(tmp_path / "run").values()
    assert title == "a: 0/8 heads > 1" and matrix.tolist() == _expected_scores("a")


def test_report_names_the_step_of_scores_older_than_the_latest_checkpoint(models, tmp_path):
    """A size that retrieves at step 10 and not at step 20 (no test passes: no scores there):
    its heatmap is step 10's, and the caption and the scalar table say so."""
    family = tmp_path / "family"
    for step, head in ((10, COPY_HEAD), (20, None)):
        copy_model(copy_head=head).save_pretrained(family / f"step{step}")
        word_tokenizer().save_pretrained(family / f"step{step}")
    spec = _spec(tmp_path / "spec.toml", {"a": family}, models["a"].parent, checkpoints="all")
    rows, page, md = _sweep_and_report(tmp_path / "run", spec)
    passed = {r["step"]: float(r["value"]) for r in rows if r["metric"] == "n_tests_passed"}
    assert passed == {"10": N_TESTS, "20": 0.0}
    assert _captions(page) == {"a": "step 10: the latest checkpoint has no scores; fraction > 0.1: 12.5%; "
                                    "exactly 0: 87.5%; heads > 0.1, layer.head (score): 1.2 (1)"}
    assert _heads_table(md) == [["a", "step 10 (the latest checkpoint has no scores)", "1 of 8", "1.2 (1)"]]
    assert _markdown_row(md, "retrieval_heads.fraction") == ["0.125 (step 10)"]
    assert _markdown_row(md, "retrieval_heads.n_tests_passed") == ["0"]
    ((_, matrix),) = _heatmaps(tmp_path / "run").values()
    assert matrix.tolist() == _expected_scores("a")


def test_final_models_beside_a_training_step_are_compared_as_final_models_not_step_0(models, tmp_path):
    """Sizes a and b are plain model directories (no training step, metrics.csv's step empty), f a
    step10 checkpoint: fits.json compares a and b at their final model (null, not step 0), its
    notes say "final model", and the report's scaling plot shows all three fitted sizes (it
    looked for a and b at step 0 and left them out)."""
    from scalelens.reports.sections import plan_scaling

    family = tmp_path / "family"
    copy_model(*SIZES["c"]).save_pretrained(family / "step10")
    word_tokenizer().save_pretrained(family / "step10")
    sizes = {"a": models["a"], "b": models["b"], "f": family}
    spec = _spec(tmp_path / "spec.toml", sizes, models["a"].parent)
    rows, _, md = _sweep_and_report(tmp_path / "run", spec)
    assert {(r["size"], r["revision"], r["step"]) for r in rows} == {("a", "", ""), ("b", "", ""),
                                                                   ("f", "step10", "10")}
    fits = json.loads((tmp_path / "run" / "fits.json").read_text())
    assert fits["last_steps"] == {"a": None, "b": None, "f": 10}
    (fit,) = [f for f in fits["fits"]
              if f["metric"] == "retrieval_heads.fraction" and f["x_name"] == "n_params"]
    assert fit["n_points"] == 3 and fit["note"] == (
        "sizes compared at their own last checkpoint (a: final model, b: final model, f: 10)")
    assert "step 0" not in md and "a: 0" not in md
    (job,) = [j for j in plan_scaling(load_run(tmp_path / "run")).jobs
              if j.title == "retrieval_heads.fraction vs n_params"]
    assert sorted(t.get_text() for t in job.make().axes[0].texts) == ["a", "b", "f"]


def test_the_retrieval_heads_listed_are_the_top_ten_above_the_bar_highest_first(tmp_path):
    """13 heads above 0.1 (scores 0.2 to 0.75; the tie at 0.5 in layer then head order), 3 at or
    below it (0.1 is not above): the table counts 13 of 16, lists the top 10 and says 3 more; a
    size without retrieval scores has no row."""
    from scalelens.reports.analysis_sections import retrieval_heads_table
    from scalelens.reports.metrics import parse_metrics
    from scalelens.reports.rundir import Run
    from scalelens.reports.runfiles import Fits
    from scalelens.sweeps.metrics import COLUMNS

    scores = np.array([[0.05, 0.75, 0.1, 0.3], [0.2, 0.5, 0.0, 0.35], [0.4, 0.6, 0.45, 0.25],
                       [0.55, 0.65, 0.7, 0.5]])
    lines = [",".join(COLUMNS)] + [f"m,s,step5,5,1e6,1e5,retrieval_heads,score,{i},{j},{v}"
                                   for (i, j), v in np.ndenumerate(scores)]
    lines.append("m2,t,step5,5,2e6,1e5,superposition,m,,,8")
    table = retrieval_heads_table(Run(tmp_path, parse_metrics(lines), Fits(), None))
    top = ("0.1 (0.75), 3.2 (0.7), 3.1 (0.65), 2.1 (0.6), 3.0 (0.55), 1.1 (0.5), 3.3 (0.5), 2.2 (0.45), "
           "2.0 (0.4), 1.3 (0.35), and 3 more")
    assert table.rows == (("s", "step 5", "13 of 16", top),)
