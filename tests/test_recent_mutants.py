"""Tests that kill the mutants that survived in the code added since the first mutation pass.

Each test pins a number or a whole line that a small change to the code (a dropped branch, a
wrong comparison, a swapped option) would alter, where the end-to-end tests only checked a
part of it: the one-line error for an OSError (os_errors.py, errors.py, output.py), the
tables' replace-unless-same, ...
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from scalelens.errors import ScalelensError, errno_of, filename_of, first_line, is_disk_full, naming
from scalelens.os_errors import command_name, os_error_line, outputs_of
from scalelens.output import one_line, printable, shown


def _err(code: int, filename: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), filename) if filename else OSError(code, os.strerror(code))


# -- os_error_line: the whole line, per command and errno ---------------------------------------

@pytest.mark.parametrize(("error", "command", "outputs", "line"), [
    (_err(errno.EFBIG, "/runs/x.h5"), "capture", {"--out": Path("/runs/x.h5")},
     "a write to /runs/x.h5 reached a file-size limit (ulimit -f, or the largest file the file system "
     "allows); raise the limit or choose another --out, and rerun the same command: finished batches are "
     "kept and the run resumes"),
    (_err(errno.ENOSPC), "measure", {"--out": Path("/runs/m")},
     "no space left on the output device; free space (or choose another --out) and rerun the same "
     "command: finished batches are kept and the run resumes"),
    (_err(errno.EDQUOT, "/runs/s/a/model.safetensors"), "suite build", {"--out": Path("/runs/s")},
     "no space left on the output device (/runs/s/a/model.safetensors); free space (or choose another "
     "--out) and rerun the same command: finished sizes are kept and the build resumes"),
    (_err(errno.ENOSPC, "/r/tasks/a/results.json"), "sweep", {"--out": Path("/r")},
     "no space left on the output device (/r/tasks/a/results.json); free space (or choose another --out) "
     "and rerun the same command: finished tasks are kept and the sweep resumes"),
    (_err(errno.EFBIG, "/r/report.html"), "report", {"--out": None},
     "a write to /r/report.html reached a file-size limit (ulimit -f, or the largest file the file "
     "system allows); raise the limit or choose another --out, and rerun the same command"),
    # the demo: a file under --suite (inside --out) is moved by --suite, one under --out by --out,
    # one under neither (the suite in the cache) by --suite
    (_err(errno.ENOSPC, "/r/suite/a/x"), "demo", {"--out": Path("/r"), "--suite": Path("/r/suite")},
     "no space left on the output device (/r/suite/a/x); free space (or choose another --suite) and rerun "
     "the same command: finished work is kept and the demo resumes"),
    (_err(errno.ENOSPC, "/r/report.html"), "demo", {"--out": Path("/r"), "--suite": Path("/r/suite")},
     "no space left on the output device (/r/report.html); free space (or choose another --out) and "
     "rerun the same command: finished work is kept and the demo resumes"),
    (_err(errno.ENOSPC, "/r/tasks/a/results.json"), "demo", {"--out": Path("/r"), "--suite": None},
     "no space left on the output device (/r/tasks/a/results.json); free space (or choose another --out) "
     "and rerun the same command: finished work is kept and the demo resumes"),
    (_err(errno.ENOSPC, "/cache/suites/micro/x"), "demo", {"--out": Path("/r"), "--suite": None},
     "no space left on the output device (/cache/suites/micro/x); free space (or choose another --suite) "
     "and rerun the same command: finished work is kept and the demo resumes"),
    # permission: the output option to change, or only the permissions for a stdout-only command
    (_err(errno.EACCES, "/ro/x.h5"), "capture", {"--out": Path("/ro/x.h5")},
     "permission denied (/ro/x.h5); choose a writable --out or fix the permissions"),
    (_err(errno.EPERM, "/ro/x.h5"), "capture", {"--out": Path("/ro/x.h5")},
     "permission denied (/ro/x.h5); choose a writable --out or fix the permissions"),
    (_err(errno.EROFS), "inspect", {}, "permission denied; fix the permissions"),
    # another errno: its text and the file
    (_err(errno.ENOENT, "/gone/x"), "capture", {"--out": None}, "No such file or directory (/gone/x)"),
])
def test_os_error_lines_in_full(error, command, outputs, line):
    assert os_error_line(error, command, outputs=outputs) == line


def test_an_os_error_line_with_no_command_is_a_captures_and_default_out():
    """No command named (an API caller): the capture's resume text and --out."""
    assert os_error_line(_err(errno.ENOSPC)) == (
        "no space left on the output device; free space (or choose another --out) and rerun the same "
        "command: finished batches are kept and the run resumes")


def test_a_named_file_is_not_repeated_and_an_unnamed_output_is_the_output_file():
    """``named``: the caller's line names the file already ("cannot create X: ...")."""
    e = _err(errno.EFBIG, "/runs/x.h5.creating")
    assert os_error_line(e, "capture", named=True, outputs={"--out": Path("/runs/x.h5")}) == (
        "the output file reached a file-size limit (ulimit -f, or the largest file the file system allows); "
        "raise the limit or choose another --out, and rerun the same command: finished batches are kept "
        "and the run resumes")


def test_a_stdout_only_command_whose_stdout_is_a_pipe_is_told_of_an_output_file(monkeypatch):
    """No output option and stdout not a file: 'an output file', no option to choose."""
    read, write = os.pipe()
    try:
        with os.fdopen(write, "w") as pipe:
            monkeypatch.setattr(sys, "stdout", pipe)
            line = os_error_line(_err(errno.ENOSPC), "inspect", outputs={})
    finally:
        os.close(read)
    assert line == "no space left on the output device; free space and rerun the same command"


def test_a_closed_stdout_counts_as_no_file(monkeypatch, tmp_path):
    """A closed stdout (fileno raises ValueError) is not 'the standard output'."""
    f = (tmp_path / "o").open("w")
    f.close()
    monkeypatch.setattr(sys, "stdout", f)
    assert os_error_line(_err(errno.ENOSPC), "inspect", outputs={}) == (
        "no space left on the output device; free space and rerun the same command")


def test_hdf5s_text_gives_the_errno_and_the_file():
    e = RuntimeError("Set slist enabled failed (file write failed: time = Sun Nov 29, filename = "
                     "'/runs/x.h5.creating', file descriptor = 4, errno = 27, "
                     "error message = 'File too large')")
    assert (errno_of(e), filename_of(e)) == (27, "/runs/x.h5.creating")
    assert os_error_line(e, "capture", outputs={"--out": Path("/runs/x.h5")}).startswith(
        "a write to /runs/x.h5.creating reached a file-size limit")


def test_a_rust_librarys_text_gives_the_errno():
    """safetensors and tokenizers end theirs with '(os error N)'."""
    assert errno_of(Exception("File too large (os error 27)")) == 27
    assert errno_of(Exception("no number here")) is None


def test_a_bytes_filename_is_decoded():
    assert filename_of(OSError(28, "No space", b"/runs/\xff.h5")) == os.fsdecode(b"/runs/\xff.h5")


@pytest.mark.parametrize(("listed", "tried"), [
    ("['/tmp', '/var/tmp', '/usr/tmp', '/w']", "/tmp, /var/tmp, /usr/tmp, /w"),
    ("somewhere odd", "somewhere odd"),  # not a Python list: as written
])
def test_no_usable_temporary_directory_lists_what_was_tried(listed, tried):
    e = FileNotFoundError(errno.ENOENT, "No usable temporary directory found in " + listed)
    assert os_error_line(e, "measure") == (
        f"no usable temporary directory (tried {tried}: each full or not writable); set TMPDIR to a "
        "directory with free space and rerun")


def test_only_tempfiles_error_is_read_as_no_temporary_directory():
    e = OSError(errno.ENOTDIR, "No usable temporary directory found in ['/tmp']")
    assert os_error_line(e, "measure") == "No usable temporary directory found in ['/tmp']"


def test_an_error_without_strerror_is_its_text_on_one_line():
    e = OSError("first\n\n  second\x1b[31m ")
    assert os_error_line(e, "measure") == r"first; second\x1b[31m"


def test_command_names_and_their_output_options():
    build = argparse.Namespace(command="suite", suite_command="build", out=Path("/s"))
    assert command_name(build) == "suite build"
    assert outputs_of(build) == {"--out": Path("/s")}
    demo = argparse.Namespace(command="demo", out=Path("/r"), suite=Path("/t"))
    assert command_name(demo) == "demo"
    assert list(outputs_of(demo).items()) == [("--out", Path("/r")), ("--suite", Path("/t"))]  # --out first
    assert outputs_of(argparse.Namespace(command="inspect", path="x")) == {}


# -- errors.py -----------------------------------------------------------------------------------

def test_naming_names_only_an_io_error_that_names_no_file():
    with pytest.raises(OSError) as bare, naming("/runs/metrics.csv"):
        raise _err(errno.ENOSPC)
    assert bare.value.filename == "/runs/metrics.csv"
    with pytest.raises(OSError) as named, naming("/runs/metrics.csv"):
        raise _err(errno.ENOSPC, "/runs/metrics.csv.tmp")
    assert named.value.filename == "/runs/metrics.csv.tmp"
    with pytest.raises(ValueError) as other, naming("/runs/metrics.csv"):
        raise ValueError("not an I/O error")
    assert not hasattr(other.value, "filename")


def test_a_scalelens_error_raised_from_none_over_a_full_disk_is_a_full_disk():
    """``raise ScalelensError(...) from None`` keeps the OSError as ``__context__`` only."""
    try:
        try:
            raise _err(errno.EDQUOT)
        except OSError:
            raise ScalelensError("cannot create x.h5: Disk quota exceeded") from None
    except ScalelensError as e:
        assert e.__cause__ is None and is_disk_full(e)
    assert is_disk_full(_err(errno.EDQUOT)) and not is_disk_full(_err(errno.EACCES))
    assert not is_disk_full(ScalelensError("no cause"))


def test_first_line_is_the_first_line_or_the_type():
    assert first_line(ValueError("  top\nbelow\n")) == "top"
    assert first_line(KeyError()) == "KeyError"


# -- output.py -----------------------------------------------------------------------------------

def test_names_and_lines_escape_what_does_not_print():
    assert shown("mödel ä b") == "mödel ä b"
    assert shown("my\nmodel\x1b[31m") == r"'my\nmodel\x1b[31m'"
    assert printable("a\tb\nc\x1b") == "a\\tb\nc\\x1b"
    assert one_line("one\n\n two \r\nthree\t") == "one; two; three"


# -- textfiles.py --------------------------------------------------------------------------------

def test_replace_unless_same_keeps_a_same_file_and_its_stale_ones(tmp_path):
    from scalelens.textfiles import replace_unless_same

    path, tmp, fits = tmp_path / "metrics.csv", tmp_path / "metrics.csv.tmp", tmp_path / "fits.json"
    path.write_text("a,b\n1,2\n")
    tmp.write_text("a,b\n1,2\n")
    fits.write_text("{}")
    assert replace_unless_same(tmp, path, stale=[fits]) is False
    assert not tmp.exists() and fits.read_text() == "{}" and path.read_text() == "a,b\n1,2\n"


def test_replace_unless_same_compares_bytes_not_size_and_mtime(tmp_path):
    """Other bytes of the same length and mtime (a value changed in place) are a new table."""
    from scalelens.textfiles import replace_unless_same

    path, tmp, fits = tmp_path / "metrics.csv", tmp_path / "metrics.csv.tmp", tmp_path / "fits.json"
    path.write_text("a,b\n1,2\n")
    tmp.write_text("a,b\n1,3\n")
    fits.write_text("{}")
    for p in (path, tmp):
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert replace_unless_same(tmp, path, stale=[fits]) is True
    assert path.read_text() == "a,b\n1,3\n" and not tmp.exists() and not fits.exists()


def test_user_source_expands_a_leading_tilde_only(monkeypatch, tmp_path):
    from scalelens.textfiles import user_source

    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_source("~/models/a") == f"{tmp_path}/models/a"
    assert user_source("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert user_source("a/~b") == "a/~b"


# -- reports/plots.py: the legend below the axes -------------------------------------------------

def _legend_of(labels: list[str]):
    from matplotlib.figure import Figure

    from scalelens.reports import plots

    lines = {label: (np.arange(3.0), 1.0 + np.arange(3.0) + i) for i, label in enumerate(labels)}
    fig = plots.per_layer_plot(lines, plots.palette(labels), y_label="ratio")
    assert isinstance(fig, Figure) and len(fig.legends) == 1
    fig.canvas.draw()
    return fig, fig.legends[0], fig.legends[0].get_window_extent(fig.canvas.get_renderer())


def test_a_legend_whose_one_label_is_wider_than_the_figure_is_wrapped_into_it():
    """One column still too wide: the labels are wrapped, and that legend is the one drawn."""
    fig, legend, box = _legend_of(["EleutherAI/" + "a-very-long-experimental-model-name-" * 4 + "70m", "b"])
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    assert "\n" in legend.get_texts()[0].get_text()


def test_a_legend_of_six_short_names_takes_two_balanced_rows():
    """Six one-letter entries would fit one row, but a legend holds four columns at most, in
    balanced rows: two rows of three (not 4 + 2, nor one row of six)."""
    _, legend, _ = _legend_of(list("abcdef"))
    assert legend._ncols == 3


def test_the_overlap_plots_log_axes_are_labelled_in_plain_numbers():
    """Both log axes of overlap-vs-1/m use the report's plain tick labels (0.02, 0.05, 0.1, ...),
    not matplotlib's mathtext powers of ten (10^-2 and 2x10^-2, 3x10^-2 on minor ticks)."""
    from scalelens.reports import plots

    points = {"16k": (1 / 16, 0.057, 0.061), "37k": (1 / 32, 0.033, 0.038), "94k": (1 / 48, 0.021, 0.022)}
    fig = plots.overlap_plot(points, plots.palette(list(points)))
    fig.canvas.draw()
    ax = fig.axes[0]
    for axis in (ax.xaxis, ax.yaxis):
        low, high = sorted(axis.get_view_interval())
        shown = [t.label1.get_text() for t in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
                 if low <= t.get_loc() <= high and t.label1.get_visible() and t.label1.get_text()]
        assert len(shown) >= 2 and all(float(text) > 0 for text in shown), shown


@pytest.mark.parametrize("name", ["text_dominance.mdi_middle_layer_at_dilution_level_16",
                                  "massive_activations.first_token_share_of_massive_acts"])
def test_a_title_a_little_narrower_than_the_figure_stays_inside_it(name):
    """A title of 80-100% of the figure's width is centred on the axes, which the y label moves
    right of the figure's centre: such a title ran off the right edge unless wrapped too."""
    from scalelens.reports import plots

    fig = plots.per_layer_plot({"a": (np.arange(3.0), np.arange(3.0) + 1)}, plots.palette(["a"]),
                               y_label=name)
    plots.to_data_uri(fig)
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)


def test_wrapping_a_long_word_never_splits_an_escaped_dollar():
    r"""A word longer than a line is broken inside; a break between ``\`` and ``$`` would leave a
    bare ``$`` (mathtext) on the next line, so the ``\`` moves down with it."""
    from scalelens.reports.plots import _wrap

    assert _wrap("aaaaaaa\\$bbbbbbbbbb", 8) == "aaaaaaa\n\\$bbbbbbb\nbbb"


# -- models/manifest.staged_dir ------------------------------------------------------------------

def test_staged_dir_replaces_the_final_directory_whole_and_clears_a_killed_builds_leftover(tmp_path):
    from scalelens.models.manifest import staged_dir

    final = tmp_path / "tokenizer"
    final.mkdir()
    (final / "old.json").write_text("old")
    leftover = tmp_path / ".tmp-tokenizer"
    leftover.mkdir()
    (leftover / "half.json").write_text("half")  # a killed build's
    with staged_dir(final) as tmp:
        assert tmp == leftover and not tmp.exists()  # the caller makes it
        tmp.mkdir()
        (tmp / "new.json").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.json"] and not leftover.exists()


def test_staged_dir_that_fails_leaves_the_final_directory_and_names_it(tmp_path):
    from scalelens.models.manifest import staged_dir

    final = tmp_path / "tokenizer"
    final.mkdir()
    (final / "old.json").write_text("old")
    with pytest.raises(OSError) as failed, staged_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "new.json").write_text("new")
        raise _err(errno.ENOSPC)
    assert failed.value.filename == str(final)
    assert sorted(p.name for p in final.iterdir()) == ["old.json"]
    assert not (tmp_path / ".tmp-tokenizer").exists()



# -- cache/writer.py: the new capture file's layout ----------------------------------------------

def test_a_capture_file_is_laid_out_as_h5py_lays_out_a_new_file(tmp_path):
    """Created through the low-level API (raw-data buffers off), the file keeps h5py's defaults:
    the earliest superblock version (readable by older HDF5) and no object timestamps."""
    import h5py
    from tiny_models import prompts, tiny_model, word_tokenizer

    from scalelens.capture import capture
    from scalelens.models.load import load_model
    from scalelens.probes.spec import preset

    lm = load_model(tiny_model(), tokenizer=word_tokenizer())
    out = capture(lm, [preset("resid")], prompts(2), tmp_path / "c.h5", progress=False)
    assert out.read_bytes()[8] == 0  # superblock version 0, as h5py.File(path, "w") writes
    with h5py.File(out, "r") as f:
        times = [h5py.h5o.get_info(f[name].id).ctime for name in ("/", "tokens")]
    assert times == [0, 0]


# -- hooks/tlens_backend.py: the bridge stops after the last wanted layer ------------------------

def test_the_transformer_lens_bridge_runs_no_layer_past_the_last_wanted_one(tmp_path):
    """resid of layers 0-1 of a 3-layer model, in two batches: each batch's pass stops after
    layer 1; layer 2 and the LM head run once only, in the bridge's two-token check run."""
    from test_backends import loaded
    from tiny_models import prompts

    from scalelens.capture import capture
    from scalelens.probes.spec import preset

    lm = loaded("llama")
    model = lm.model
    calls: list[str] = []
    modules = {**{f"layer{i}": layer for i, layer in enumerate(model.model.layers)}, "head": model.lm_head}
    handles = [m.register_forward_hook(lambda *_, name=name: calls.append(name))
               for name, m in modules.items()]
    try:
        capture(lm, [preset("resid", dtype="float32", layers=(0, 1))], prompts(6), tmp_path / "t.h5",
                backend="transformer-lens", batch_size=3, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(model.model.layers) == 3
    assert {name: calls.count(name) for name in modules} == {"layer0": 3, "layer1": 3, "layer2": 1, "head": 1}


# -- sweeps/tasks.attempt: a full disk stops only a sweep that asks for it ------------------------

@pytest.fixture
def disk_full_llama(tmp_path):
    """A model directory whose model finds the disk full on every pass (a real Llama class with a
    pre-hook on its decoder stack, registered for Llama configs while the test runs)."""
    import transformers
    from tiny_models import tiny_model, word_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    class DiskFullLlama(transformers.LlamaForCausalLM):
        def __init__(self, config: LlamaConfig) -> None:
            super().__init__(config)
            self.model.register_forward_pre_hook(self._full)

        @staticmethod
        def _full(module, args) -> None:  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device", "/scratch/x.bin")

    path = tmp_path / "llama"
    tiny_model("llama").save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    AutoModelForCausalLM.register(LlamaConfig, DiskFullLlama, exist_ok=True)
    try:
        yield path
    finally:
        AutoModelForCausalLM.register(LlamaConfig, transformers.LlamaForCausalLM, exist_ok=True)


def test_a_full_disk_fails_a_task_unless_the_sweep_stops_on_it(tmp_path, disk_full_llama):
    """Without ``stop_on_full_disk`` (a Ray worker's task) a full disk is that task's failure,
    retried once and logged; with it (the local sweep) it is raised as it came, with no log."""
    from scalelens.sweeps.spec import SweepSpec, expand
    from scalelens.sweeps.tasks import attempt, task_dir

    spec = SweepSpec(models={"tiny": str(disk_full_llama)}, checkpoints="final",
                     analyses=("massive_activations",), settings={"n_sequences": 2})
    (task,) = expand(spec)
    outcome = attempt(task, spec, tmp_path / "run")
    assert (outcome.status, outcome.attempts) == ("failed", 2)
    assert outcome.error.startswith("OSError: [Errno 28] No space left on device"), outcome.error
    assert (task_dir(tmp_path / "run", task) / "error.log").is_file()
    with pytest.raises(OSError, match="No space left"):
        attempt(task, spec, tmp_path / "stopping", stop_on_full_disk=True)
    assert not (task_dir(tmp_path / "stopping", task) / "error.log").exists()


def test_a_metrics_table_that_does_not_fit_names_metrics_csv(tmp_path):
    """A write's EFBIG names no file; the error names the table (the CLI's line shows it), and
    no temporary is left."""
    from cli_run import file_size_limit

    from scalelens.sweeps.metrics import write_metrics

    with file_size_limit(16), pytest.raises(OSError) as failed:
        write_metrics(tmp_path, [])
    assert (failed.value.errno, failed.value.filename) == (errno.EFBIG, str(tmp_path / "metrics.csv"))
    assert list(tmp_path.iterdir()) == []


def test_make_dirs_that_fails_two_levels_down_removes_both_levels(tmp_path):
    """``x/y/<too long>/z``: x and y were made before the long name failed; both are removed,
    the deepest first (x is not empty until y is gone)."""
    from scalelens.textfiles import make_dirs

    with pytest.raises(OSError, match="too long"):
        make_dirs(tmp_path / "x" / "y" / ("a" * 300) / "z")
    assert list(tmp_path.iterdir()) == []
