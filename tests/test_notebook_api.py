"""The Python API as a notebook calls it: lists, numpy ints and paths; the model left as found."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from scalelens.errors import ScalelensError
from scalelens.models.suite import read_manifest
from scalelens.sweeps.spec import SweepSpec, expand


def test_sweep_spec_takes_lists_numpy_steps_and_paths(micro_suite: Path) -> None:
    """A list of steps was silently swept as ``log``; lists of analyses and Path sources were refused."""
    steps = read_manifest(micro_suite).steps
    size = read_manifest(micro_suite).sizes[0]
    chosen = [steps[-1], steps[0]]
    spec = SweepSpec(suite=micro_suite, sizes=[size], checkpoints=np.array(chosen),
                     analyses=["superposition"])
    assert [t.step for t in expand(spec)] == sorted(chosen)
    assert spec.checkpoints == tuple(sorted(chosen)) and spec.analyses == ("superposition",)
    assert all(type(s) is int for s in spec.checkpoints)
    own = SweepSpec(models={size: micro_suite / size}, checkpoints=chosen)
    assert own.models == {size: str((micro_suite / size).resolve())}
    assert [t.step for t in expand(own)] == sorted(chosen)


def test_sweep_spec_takes_one_step_a_set_and_one_size_alone(micro_suite: Path) -> None:
    """A lone step or a set of steps was swept as ``log`` (every checkpoint), silently; a lone
    size string was split into its characters ("unknown size(s) s, m, ...")."""
    manifest = read_manifest(micro_suite)
    size, steps = manifest.sizes[0], manifest.steps
    one = SweepSpec(suite=micro_suite, sizes=size, checkpoints=np.int64(steps[-1]),
                    analyses="superposition")
    assert [t.key for t in expand(one)] == [f"{size}/step{steps[-1]}"]
    assert one.analyses == ("superposition",)
    chosen = {steps[0], steps[-1]}
    assert [t.step for t in expand(SweepSpec(suite=micro_suite, sizes={size}, checkpoints=chosen))] \
        == sorted(chosen)
    with pytest.raises(ScalelensError, match="checkpoints must be 'log', 'all', 'final' or a list of steps"):
        SweepSpec(suite=micro_suite, checkpoints=None)


def test_sweep_spec_errors_name_python_arguments(micro_suite: Path) -> None:
    with pytest.raises(ScalelensError, match=r"suite=DIR, family='pythia' or models=\{size: source\}"):
        SweepSpec()
    with pytest.raises(ScalelensError, match="checkpoint steps must be integers >= 0, got 1.5"):
        SweepSpec(suite=micro_suite, checkpoints=[0, 1.5])


def _last(suite: Path) -> tuple[str, int]:
    manifest = read_manifest(suite)
    return manifest.sizes[-1], manifest.steps[-1]


def test_load_model_takes_a_numpy_step(micro_suite: Path) -> None:
    from scalelens.models import load_model

    size, step = _last(micro_suite)
    lm = load_model(micro_suite / size, checkpoint=np.asarray(read_manifest(micro_suite).steps)[-1])
    assert lm.info.revision == f"step{step}" and lm.info.step == step


def test_probes_by_name_and_python_values(micro_suite: Path, tmp_path: Path) -> None:
    """Preset names, one probe alone, a position string, one layer index and numpy ints."""
    from scalelens.cache.reader import CaptureFile
    from scalelens.capture import capture
    from scalelens.models import load_model
    from scalelens.probes.spec import Positions, ProbeSpec, preset

    lm = load_model(micro_suite / _last(micro_suite)[0])
    spec = ProbeSpec("last", "resid_post", layers=np.int64(1), positions="last")
    assert spec.layers == (1,) and spec.positions == Positions.parse("last")
    assert preset("resid", positions="0,-1").positions == Positions.parse("0,-1")
    prompts = ["a b c", "d e f g"]
    capture(lm, ["resid", "massive", spec], prompts, tmp_path / "a.h5", batch_size=np.int64(2),
            progress=False)
    capture(lm, spec, prompts, tmp_path / "b.h5", progress=False)
    with CaptureFile(tmp_path / "a.h5") as f, CaptureFile(tmp_path / "b.h5") as g:
        assert f.probe_names == ["last", "massive", "resid"] and g.probe_names == ["last"]
        assert f.read("values", probe="last").data.shape[:3] == (2, 1, 1)
        last = f.read("values", probe="last").data
        np.testing.assert_array_equal(last, g.read("values", probe="last").data)


def test_wrong_python_types_say_what_to_pass(micro_suite: Path, tmp_path: Path) -> None:
    from scalelens.capture import capture
    from scalelens.models import load_model
    from scalelens.probes.spec import ProbeSpec

    lm = load_model(micro_suite / _last(micro_suite)[0])
    with pytest.raises(ScalelensError, match="batch_size must be an integer, got 2.5"):
        capture(lm, ["resid"], ["a b"], tmp_path / "a.h5", batch_size=2.5)
    with pytest.raises(ScalelensError, match="probe 0 is a dict; pass ProbeSpec objects or preset names"):
        capture(lm, [{"name": "resid"}], ["a b"], tmp_path / "a.h5")
    with pytest.raises(ScalelensError, match="positions must be a Positions or a string"):
        ProbeSpec("x", "resid_post", positions=-1)
    with pytest.raises(ScalelensError, match="layers must be integer indices"):
        ProbeSpec("x", "resid_post", layers=[0.5])


def test_capture_and_measure_run_without_dropout_and_restore_the_mode(micro_suite: Path,
                                                                     tmp_path: Path) -> None:
    """A model left in training mode captured with dropout on: two captures differed."""
    from transformers import AutoModelForCausalLM

    from scalelens.cache.reader import CaptureFile
    from scalelens.capture import capture
    from scalelens.measure.run import measure
    from scalelens.models import load_model

    size, step = _last(micro_suite)
    own = load_model(micro_suite / size)
    hf = AutoModelForCausalLM.from_pretrained(micro_suite / size / f"step{step}", hidden_dropout=0.5,
                                              attention_dropout=0.5)
    lm = load_model(hf, tokenizer=own.tokenizer)
    lm.model.train()
    lm.model.gpt_neox.layers[0].eval()  # a mixed state, given back as it was
    for name in ("a", "b"):
        capture(lm, ["resid"], ["a b c d", "e f"], tmp_path / f"{name}.h5", progress=False)
    with CaptureFile(tmp_path / "a.h5") as a, CaptureFile(tmp_path / "b.h5") as b:
        first_values = a.read("values", probe="resid").data
        np.testing.assert_array_equal(first_values, b.read("values", probe="resid").data)
    first = measure(lm, "information_capacity", tmp_path / "m1", progress=False)
    again = measure(lm, "information_capacity", tmp_path / "m2", progress=False)
    assert first["analyses"] == again["analyses"]
    assert lm.model.training and not lm.model.gpt_neox.layers[0].training
    assert lm.model.gpt_neox.layers[1].training


def test_measure_takes_a_path_and_refuses_a_settings_dict(micro_suite: Path, tmp_path: Path) -> None:
    from scalelens.measure.run import measure

    size, step = _last(micro_suite)
    data = measure(str(micro_suite / size), ["superposition"], tmp_path / "m", progress=False)
    assert data["model"]["step"] == step and (tmp_path / "m" / "results.json").is_file()
    with pytest.raises(ScalelensError, match="settings must be a MeasureSettings"):
        measure(str(micro_suite / size), ["superposition"], tmp_path / "n", settings={"massive": {}})
    assert not (tmp_path / "n").exists()


def test_a_meta_model_is_refused_in_one_line(micro_suite: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scalelens.capture import capture
    from scalelens.models import load_model

    size, step = _last(micro_suite)
    own = load_model(micro_suite / size)
    with torch.device("meta"):
        config = AutoConfig.from_pretrained(micro_suite / size / f"step{step}")
        empty = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ScalelensError, match="weights are on the meta device"):
        capture(load_model(empty, tokenizer=own.tokenizer), ["resid"], ["a b"], tmp_path / "a.h5")
    assert not list(tmp_path.iterdir())


def test_micro_context_error_names_the_setting(micro_suite: Path, tmp_path: Path) -> None:
    """The Python setting the error names works when given (it named 16, and 16 did not fit)."""
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import MeasureSettings, measure

    model = str(micro_suite / _last(micro_suite)[0])
    with pytest.raises(ScalelensError, match=r"RetrievalSettings\(context_lengths=\((\d+),\)\)") as e:
        measure(model, ["retrieval_heads"], tmp_path / "m")
    size = int(re.search(r"context_lengths=\((\d+),\)", str(e.value)).group(1))  # type: ignore[union-attr]
    settings = MeasureSettings(retrieval=RetrievalSettings(context_lengths=(size,), ablation_k=0))
    data = measure(model, ["retrieval_heads"], tmp_path / "m", settings, progress=False)
    assert data["analyses"]["retrieval_heads"]["n_tests"] > 0


def test_rerunning_a_cell_with_other_probes_names_the_python_fix(micro_suite: Path, tmp_path: Path) -> None:
    from scalelens.capture import capture
    from scalelens.models import load_model

    lm = load_model(micro_suite / _last(micro_suite)[0])
    capture(lm, ["resid"], ["a b"], tmp_path / "a.h5", progress=False)
    with pytest.raises(ScalelensError, match=r"different probe.*another out= or overwrite=True"):
        capture(lm, ["massive"], ["a b"], tmp_path / "a.h5", progress=False)
    capture(lm, ["massive"], ["a b"], tmp_path / "a.h5", progress=False, overwrite=True)


def test_the_top_level_api_runs_the_readme_flow(micro_suite: Path, tmp_path: Path) -> None:
    """`import scalelens` (light: no torch) then scalelens.load_model / attach / CaptureFile /
    SweepSpec / sweep / render_report, as the README's Python section uses them."""
    import subprocess
    import sys

    import scalelens

    light = subprocess.run([sys.executable, "-c", "import sys, scalelens; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=120)
    assert light.stdout.strip() == "False", light.stderr
    assert set(scalelens.__all__) <= set(dir(scalelens))
    manifest = read_manifest(micro_suite)
    lm = scalelens.load_model(micro_suite / manifest.sizes[0], checkpoint=manifest.steps[-1])
    with scalelens.attach(lm, [scalelens.preset("resid")], out=tmp_path / "c.h5") as run:
        run.feed(["the code of Bako is 4821 .", "w1 w2"])
    with scalelens.CaptureFile(tmp_path / "c.h5") as f:
        assert f.complete and f.read("values", probe="resid").data.shape[:2] == (2, lm.info.n_layers)
    spec = scalelens.SweepSpec(suite=str(micro_suite), sizes=tuple(manifest.sizes[:3]),
                               checkpoints=(manifest.steps[-1],), analyses=("superposition",))
    summary = scalelens.sweep(spec, tmp_path / "run")
    assert summary.count("done") == 3 and not summary.failed
    paths = scalelens.render_report(tmp_path / "run", progress=False)
    assert paths.html.is_file() and paths.html.parent == tmp_path / "run"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        scalelens.nothing  # noqa: B018


_FULL_DISK_AT_CREATION = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from cli_run import file_size_limit
from tiny_models import prompts, tiny_model, word_tokenizer
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
out, model, tok = Path(sys.argv[1]), tiny_model(), word_tokenizer()
for limit in (4096, 16384):  # each cuts the new file's header short
    with file_size_limit(limit):
        try:
            capture(model, ["resid"], prompts(64), out, tokenizer=tok, batch_size=4, progress=False)
        except ScalelensError as e:
            print(e)
capture(model, ["resid"], prompts(64), out, tokenizer=tok, batch_size=4, progress=False)
with CaptureFile(out) as f:
    print(f.n_done, f.complete)
"""


def test_a_capture_that_finds_the_disk_full_leaves_the_interpreter_exiting_cleanly(tmp_path: Path) -> None:
    """A capture (the API, so no CLI hard exit) whose new file's header write failed on a full disk
    (a file-size limit) raised its error, but HDF5 had held that write back to a dataset close that
    then failed, and closed the half-closed dataset again as the interpreter exited: a segfault
    (exit -11) after the error, and h5py 'Exception ignored' noise on stderr. Now each try raises
    its error, leaves no file, a retry in the same process completes, and the interpreter exits 0.
    The error is one ScalelensError line (it was h5py's RuntimeError under 4096 bytes, HDF5's
    multi-line message under 16384)."""
    import subprocess
    import sys

    out = tmp_path / "c.h5"
    p = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_CREATION, str(out), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert p.stdout.splitlines() == [f"cannot create {out}: File too large"] * 2 + ["64 True"], p.stdout
    assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.h5"]


@pytest.mark.parametrize("spec", [{"suite": "runs/suite"}, "sweep.toml"])
def test_sweep_refuses_a_spec_that_is_no_sweepspec_before_creating_anything(spec, tmp_path: Path) -> None:
    """sweep(dict or TOML path) raised AttributeError: 'dict' object has no attribute 'to_dict',
    after creating the run directory."""
    from scalelens.sweeps.run import sweep

    with pytest.raises(ScalelensError, match=rf"spec must be a SweepSpec .*read_spec\(PATH\).*, got a "
                                             rf"{type(spec).__name__}$"):
        sweep(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()
