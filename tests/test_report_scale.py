"""A sweep's size does not change what the fits compute, and the report's tables stay readable
when a full sweep makes them long (hundreds of trends and dynamics fits, ~1,500 tasks)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_report import write_run_dir

from scalelens.reports import render_report, tables
from scalelens.sweeps import fits
from scalelens.sweeps.metrics import COLUMNS, write_metrics


def _all_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_fits_read_only_the_rows_they_use_and_compute_the_same(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run")
    full, kept = _all_rows(run / "metrics.csv"), fits._read(run / "metrics.csv")
    assert len(kept) < len(full) / 2  # the per-head retrieval scores and per-layer rows are left out
    assert [f.to_dict() for f in fits.scaling_fits(kept)] == [
        f.to_dict() for f in fits.scaling_fits(full)]
    assert [f.to_dict() for f in fits.dynamics_fits(kept)] == [f.to_dict() for f in fits.dynamics_fits(full)]
    assert fits.step_trends(kept) == fits.step_trends(full)


def test_a_last_step_seen_only_in_per_layer_rows_still_is_the_sweeps_last(tmp_path: Path) -> None:
    def row(size: str, step: int, metric: str, layer: str = "") -> dict[str, str]:
        return {"model": "m", "size": size, "revision": f"step{step}", "step": str(step), "n_params": "1000",
                "n_params_non_embedding": "500", "analysis": "superposition", "metric": metric,
                "layer": layer, "head": "", "value": "1.5"}

    rows = [row(s, 10, "mean_sq_overlap") for s in "abc"] + [row("c", 20, "per_layer", "0")]
    with (tmp_path / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    kept = fits._read(tmp_path / "metrics.csv")
    assert kept == rows
    assert fits.scaling_fits(kept) == []  # no size has a value at step 20, the last
    assert fits.scaling_fits(rows[:3]) != []  # had step 20 been dropped, step 10 would be fitted


def test_an_unreadable_task_leaves_the_old_metrics_and_no_temporary_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    model = {"name": "m", "step": 1, "n_params": 10, "n_params_non_embedding": 5}
    analyses = {"superposition": {"m": 4, "mean_sq_overlap": 0.25}}
    good.write_text(json.dumps({"model": model, "analyses": analyses}))
    bad.write_text("{")
    write_metrics(tmp_path, [("s", good)])
    before = (tmp_path / "metrics.csv").read_text()
    assert before.count("\n") == 3  # header, m, mean_sq_overlap
    with pytest.raises(Exception, match="bad.json is unreadable"):
        write_metrics(tmp_path, [("s", good), ("s", bad)])
    assert (tmp_path / "metrics.csv").read_text() == before
    assert not (tmp_path / "metrics.csv.tmp").exists()


def test_many_trends_and_dynamics_fits_are_tabled_as_digests(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_run_dir(tmp_path / "run")
    doc = json.loads((run / "fits.json").read_text())
    n_trends, n_dynamics = len(doc["step_trends"]), len(doc["dynamics"])
    monkeypatch.setattr(tables, "MAX_TREND_ROWS", n_trends - 1)
    monkeypatch.setattr(tables, "MAX_DYNAMICS_ROWS", n_dynamics - 1)
    md = render_report(run, progress=False).markdown.read_text()

    trends = md.split("## Trends over training")[1].split("\n## ")[0]
    assert f"This run has {n_trends:,} trends (metric x size)" in trends
    assert "fits.json (step_trends)" in trends
    key = "| superposition.mean_sq_overlap |"
    rows = [line.split(" | ") for line in trends.splitlines() if line.startswith(key)]
    assert len(rows) == 1 and rows[0][1] == "4 (14m–410m)"
    rising, falling, neither = (int(v) for v in rows[0][2].split(" / "))
    assert rising + falling + neither == 4
    assert len([ln for ln in trends.splitlines() if ln.startswith("| ")]) == 1 + len(
        {t["metric"] for t in doc["step_trends"]})  # header and one row per metric

    dynamics = md.split("## Training-dynamics fits")[1].split("\n## ")[0]
    cells = [ln.split(" | ") for ln in dynamics.splitlines() if ln.startswith("| ")][1:]
    expected: dict[str, int] = {}
    for d in doc["dynamics"]:
        expected[d["size"]] = expected.get(d["size"], 0) + 1
    assert {c[0].strip("| "): int(c[2]) for c in cells} == expected and len(cells) == len(expected)
    assert f"{n_dynamics:,} fits (size x layer)" in dynamics


def test_run_json_tasks_are_counted_not_dumped() -> None:
    tasks = [{"key": f"70m/step{i}", "status": "done", "attempts": 1, "error": None} for i in range(1500)]
    tasks += [{"key": f"12b/step{i}", "status": "failed", "attempts": 2, "error": "CUDA out of memory"}
              for i in range(12)]
    cell = dict(tables.info_table({"tasks": tasks}).rows)["tasks"]
    assert cell.startswith("1,512 tasks: 1,500 done, 12 failed. Failed: 12b/step0 (CUDA out of memory); ")
    assert cell.endswith("12b/step9 (CUDA out of memory); and 2 more (run.json)")
    assert dict(tables.info_table({"tasks": tasks[:1]}).rows)["tasks"] == "1 task: 1 done"
    assert dict(tables.info_table({"tasks": ["odd"]}).rows)["tasks"] == "odd"  # not task objects: as it is


def test_run_settings_show_unicode_names_as_written() -> None:
    # a size label or path in é, 中文 or an emoji is the user's own text, not a JSON \u escape
    info = {"settings": {"models": {"aé": "/runs/中文 😀"}, "sizes": ["aé"]}}
    rows = dict(tables.info_table(info).rows)
    assert rows["settings.models"] == '{"aé": "/runs/中文 😀"}'
    assert rows["settings.sizes"] == "aé"

