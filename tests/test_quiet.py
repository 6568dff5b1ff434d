"""The global ``--quiet``: no progress bars and no ``note:`` lines; warnings, errors and results stay.

Run through ``main(argv)``, where stderr is not a terminal, so progress is plain log lines
(``capture out.h5: 5/5 prompts [...]``) that a quiet run must not print.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_run import assert_one_line
from cli_run import run_cli as _run
from tiny_models import prompts, tiny_model, word_tokenizer

from scalelens.output import is_quiet


@pytest.fixture()
def overflowing_model(tmp_path: Path) -> Path:
    """A tiny GPT-NeoX whose layer 1 writes inf: every capture of it warns."""
    model = tiny_model()
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.bias[3] = float("inf")
    d = tmp_path / "inf_model"
    model.save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return d


def _capture(model: Path, tmp_path: Path, *flags: str) -> list[str]:
    """A capture that makes a note (``--layers`` does not apply to predictions) and a warning."""
    (tmp_path / "p.txt").write_text("\n".join(prompts(5)) + "\n")
    return ["capture", "--model", str(model), "--prompts", str(tmp_path / "p.txt"),
            "--probes", "resid,predictions", "--layers", "0,1,2", "--out", str(tmp_path / "x.h5"),
            "--overwrite", *flags]


def test_capture_quiet_keeps_warnings_and_results_only(overflowing_model, tmp_path, capsys):
    rc, out, err = _run(capsys, _capture(overflowing_model, tmp_path))
    assert rc == 0 and "note: --layers does not apply to predictions" in err and "5/5 prompts" in err
    for argv in (_capture(overflowing_model, tmp_path, "--quiet"),
                 ["--quiet", *_capture(overflowing_model, tmp_path)]):
        rc, out, err = _run(capsys, argv)
        lines = err.splitlines()
        assert rc == 0 and out.strip() == f"wrote {tmp_path / 'x.h5'}"
        assert lines and all(line.startswith("warning:") and "NaN/inf" in line for line in lines), err
    assert not is_quiet()  # main() leaves the process as it found it


def test_quiet_errors_still_show(tmp_path, capsys, tiny_model_dir):
    rc, _, err = _run(capsys, ["--quiet", *_capture(tiny_model_dir, tmp_path, "--batch-size", "0")])
    assert_one_line(rc, err, "batch size must be >= 1")


def test_measure_quiet_prints_what_it_wrote_and_nothing_else(tiny_model_dir, tmp_path, capsys):
    argv = ["measure", "--model", str(tiny_model_dir), "--analyses", "massive_activations,text_dominance",
            "--out", str(tmp_path / "m")]
    rc, out, err = _run(capsys, argv)
    assert rc == 0 and "capture massive.h5: 10/10 prompts" in err
    rc, out, err = _run(capsys, [*argv, "--overwrite", "--quiet"])
    assert rc == 0 and err == "" and out.startswith(f"wrote {tmp_path / 'm' / 'results.json'}")


def test_analyze_quiet_drops_the_skipped_file_note(tiny_model_dir, tmp_path, capsys):
    m = tmp_path / "m"
    assert _run(capsys, ["measure", "--model", str(tiny_model_dir), "--analyses", "massive_activations",
                         "--out", str(m), "--quiet"])[0] == 0
    (tmp_path / "p.txt").write_text("\n".join(prompts(3)) + "\n")
    assert _run(capsys, ["capture", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "p.txt"),
                         "--probes", "resid", "--out", str(m / "resid_only.h5"), "--quiet"])[0] == 0
    rc, _, err = _run(capsys, ["analyze", str(m)])
    assert rc == 0 and "note: resid_only.h5 holds none of the probes" in err
    rc, out, err = _run(capsys, ["analyze", str(m), "--quiet"])
    assert rc == 0 and err == "" and "massive_activations" in out


def test_demo_quiet_builds_its_suite_and_sweeps_without_bars(tmp_path, capsys):
    """A fresh micro suite: its training bars and the sweep's bar are silenced; the lines
    naming what was written remain."""
    out = tmp_path / "demo"
    rc, stdout, err = _run(capsys, ["--quiet", "demo", "--suite", str(tmp_path / "suite"),
                                    "--preset", "micro", "--checkpoints", "final", "--out", str(out)])
    assert rc == 0 and err == "", err
    assert "4 done" in stdout and f"wrote {out / 'report.html'}" in stdout
    assert not is_quiet()


def test_suite_build_takes_the_global_flags_after_its_sub_command(tmp_path, capsys):
    """``suite build`` is a nested sub-command: ``--debug`` and ``--quiet`` after it were refused."""
    argv = ["suite", "build", "--preset", "micro", "--sizes", "16k", "--out", str(tmp_path / "s")]
    rc, out, err = _run(capsys, [*argv, "--quiet", "--debug"])
    assert rc == 0 and err == "" and "wrote the suite" in out
    rc, _, err = _run(capsys, [*argv[:-1], str(tmp_path / "t"), "--sizes", "nope", "--debug"])
    assert rc == 2 and "Traceback" in err and "unknown size 'nope'" in err


def test_main_gives_a_notebook_its_hub_settings_back(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """``main()`` in-process (a notebook's stderr is no terminal) left HF_HUB_DISABLE_PROGRESS_BARS
    and HF_HUB_VERBOSITY set, the hub client's logger at ERROR, transformers' and the hub
    client's progress bars off and stdout line-buffered: the notebook's later loads and
    downloads showed no bars and its hub warnings were lost."""
    import logging
    import os
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
    hub = logging.getLogger("huggingface_hub")
    monkeypatch.setattr(hub, "level", logging.WARNING)
    hf_logging.enable_progress_bar()
    buffering = sys.stdout.line_buffering
    for flags in ((), ("--quiet",)):
        rc, _, err = _run(capsys, ["measure", "--model", str(tiny_model_dir), "--analyses", "superposition",
                                   "--out", str(tmp_path / "m"), "--overwrite", *flags])
        assert rc == 0, err
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and "HF_HUB_VERBOSITY" not in os.environ
        assert hub.level == logging.WARNING
        assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
        assert sys.stdout.line_buffering == buffering
