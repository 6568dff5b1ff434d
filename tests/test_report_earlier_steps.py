"""Per-size report plots "at the latest checkpoint" name the step of a size shown at an older one.

Each analysis's values of one size's last checkpoint are non-finite there (results.json holds
nulls, which metrics.csv leaves out), so the report shows that size's previous checkpoint; every
figure that does so must say which step, as the scalar table's "(step N)" does.
"""

from __future__ import annotations

import html
import json
import re

import pytest

from scalelens.reports import render_report
from scalelens.sweeps.fits import write_fits
from scalelens.sweeps.metrics import write_metrics

SIZES = {"s": 1_000_000, "m": 4_000_000, "l": 16_000_000}
STEPS = (10, 20)
LAYERS = 2
GONE = ("m", 20)  # the checkpoint whose every value is non-finite


def _value(x: float, size: str, step: int) -> float | None:
    return None if (size, step) == GONE else x


def _results(size: str, step: int) -> dict:
    """One task's results.json with every per-size analysis the report plots."""
    v = lambda x: _value(x, size, step)  # noqa: E731
    layers = range(LAYERS)
    analyses = {
        "massive_activations": {"massive": [], "per_layer": [
            {"layer": i, "ratio": v(50.0 + i), "max_abs": v(5.0), "median_abs": v(0.1)} for i in layers]},
        "superposition": {"mean_sq_overlap": v(0.02), "mean_sq_overlap_centered": v(0.01),
                          "inv_m": 0.015625, "m": 64, "n": 500},
        "text_dominance": {"per_layer": [
            {"layer": i, "mdi": v(2.0 + i), "aei_text": v(1.1), "aei_other": v(0.9)} for i in layers],
                           "groups": {"all": {"mdi": v(2.5), "aei_text": v(1.1), "aei_other": v(0.9)}}},
        "information_capacity": {"information_capacity": v(0.3), "nll_bits_per_token": v(4.0),
                                 "text_bits_per_token": 10.0, "flops_per_token": 2.0 * SIZES[size]},
        "activation_sparsity": {"measure": "hoyer", "points": {
            p: {"per_layer": [{"layer": i, "hoyer": v(0.2 + i / 10)} for i in layers], "mean_hoyer": v(0.25)}
            for p in ("resid_post", "mlp_out")}},
    }
    model = {"name": f"fam-{size}", "revision": f"step{step}", "step": step, "n_params": SIZES[size],
             "n_params_non_embedding": SIZES[size] // 2}
    return {"model": model, "analyses": analyses}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    """The HTML report of a 3-size x 2-step run written by the sweep's writers."""
    tmp = tmp_path_factory.mktemp("earlier")
    run = tmp / "run"
    run.mkdir()
    tasks = []
    for size in SIZES:
        for step in STEPS:
            path = tmp / f"{size}-{step}.json"
            path.write_text(json.dumps(_results(size, step)))
            tasks.append((size, path))
    write_metrics(run, tasks)
    write_fits(run)
    return render_report(run, progress=False).html.read_text()


def _captions(page: str, section: str) -> dict[str, str]:
    """One section's figure captions by figure title ("" for a figure without one)."""
    text = page[page.index(f'<section id="{section}">'):]
    text = text[:text.index("</section>")]
    found = re.findall(r"<figcaption><strong>(.*?)</strong>(?: — (.*?))?</figcaption>", text)
    return {html.unescape(title): html.unescape(caption) for title, caption in found}


NAMED = "shown at an earlier step, the latest checkpoint having none: m (step 10)"


@pytest.mark.parametrize(("section", "title"), [
    ("massive", "massive-activation ratio by layer"),
    ("superposition", "overlap vs 1/m"),
    ("text-dominance", "mdi by layer group"),
    ("text-dominance", "aei_text by layer group"),
    ("text-dominance", "MDI by layer"),
    ("sparsity", "Hoyer sparsity of resid_post by layer"),
    ("sparsity", "Hoyer sparsity of mlp_out by layer"),
    ("other", "massive_activations.max_abs"),
])
def test_a_size_shown_at_an_older_checkpoint_is_named_with_its_step(page, section, title):
    assert _captions(page, section)[title] == NAMED


def test_the_capacity_caption_names_the_step_beside_the_spread(page):
    assert _captions(page, "capacity") == {
        "information capacity vs FLOPs per token": f"spread over sizes: 0.3 to 0.3; {NAMED}"}


def test_a_head_heatmap_of_an_older_checkpoint_says_its_step(tmp_path):
    """An unknown per-head metric gets a generic heatmap; size m's is from step 10."""
    from scalelens.reports.metrics import parse_metrics
    from scalelens.reports.rundir import Run
    from scalelens.reports.runfiles import Fits
    from scalelens.reports.sections import plan_other
    from scalelens.sweeps.metrics import COLUMNS

    rows = [("s", 20, "attn", 0, 1, 0.5), ("m", 10, "attn", 0, 1, 0.25), ("m", 20, "loss", "", "", 3.0)]
    lines = [",".join(COLUMNS)] + [f"fam-{s},{s},step{t},{t},{SIZES[s]},1e5,x,{m},{layer},{head},{v}"
                                   for s, t, m, layer, head, v in rows]
    jobs = plan_other(Run(tmp_path, parse_metrics(lines), Fits(), None), set()).jobs
    assert {j.title: j.caption for j in jobs} == {
        "x.attn, s": "", "x.attn, m": "step 10: the latest checkpoint has none"}
