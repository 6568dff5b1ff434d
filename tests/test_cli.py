"""The CLI end to end through main(argv): capture, inspect, measure, analyze."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import prompts

from scalelens.cache.reader import CaptureFile
from scalelens.cli import main


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture()
def prompt_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(prompts(5)) + "\n")
    return p


def test_capture_then_inspect(model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "c.h5"
    code = main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes",
                 "resid,attn,massive,top1", "--layers", "0,2", "--out", str(out), "--batch-size", "2"])
    assert code == 0
    with CaptureFile(out) as f:
        assert f.complete and f.n_done == 5
        assert f.datasets("resid")["values"][0] == (5, 2, 9, 32)
        assert f.model["n_layers"] == 3
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "probe resid" in text and "layer=2" in text


def test_options_some_probes_do_not_take_are_noted_not_fatal(model_dir, prompt_file, tmp_path, capsys):
    """--layers with a logits probe, --positions with massive, --store-dtype with summaries:
    the probes that take the option get it, the others ignore it, and stderr says so."""
    out = tmp_path / "n.h5"
    code = main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes",
                 "resid,predictions,massive", "--layers", "1", "--positions", "last", "--store-dtype",
                 "float32", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: --layers does not apply to predictions" in err
    assert "note: --positions does not apply to massive" in err
    assert "note: --store-dtype does not apply to predictions, massive" in err
    with CaptureFile(out) as f:
        assert f.datasets("resid")["values"][:2] == ((5, 1, 1, 32), "float32")
        assert f.datasets("massive")["median_abs"][0] == (5, 1)
        assert f.datasets("predictions")["top1_token"][0] == (5, 1, 1)


def test_a_model_without_tokenizer_files_takes_tokenizer(model_dir, prompt_file, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    for f in bare.glob("*"):
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            f.unlink()
    argv = ["capture", "--model", str(bare), "--prompts", str(prompt_file), "--probes", "resid",
            "--out", str(tmp_path / "t.h5")]
    assert main(argv) == 2 and "no usable tokenizer" in capsys.readouterr().err
    assert main([*argv, "--tokenizer", str(model_dir)]) == 0
    with CaptureFile(tmp_path / "t.h5") as f:
        assert f.complete and f.n_done == 5


def test_capture_errors_are_one_line(model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "e.h5"
    code = main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--layers", "9",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "layer(s) [9] out of range" in err
    assert "Traceback" not in err and not out.exists()


def test_measure_and_analyze(model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["measure", "--model", str(model_dir), "--analyses", "massive_activations,superposition",
                 "--n-sequences", "2", "--seq-length", "12", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["analyses"]) == {"massive_activations", "superposition"}
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["massive.h5"]["massive_activations"]["per_layer"] == \
        results["analyses"]["massive_activations"]["per_layer"]
    # a capture no analysis reads, beside them: skipped with a note, the others still analysed
    assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "resid",
                 "--out", str(out / "resid_only.h5")]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == again
    assert "note: resid_only.h5 holds none of the probes the analyses read; skipped" in captured.err


def test_measure_reads_and_lists_only_its_own_captures(model_dir, prompt_file, tmp_path, capsys):
    """measure scanned every .h5 in --out after the work: a damaged or unrelated file there (the
    user's own, an earlier measure's with other dilutions) failed the finished measure (exit 2,
    its results.json written) or was listed among the captures it wrote."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.h5").write_bytes(b"not an HDF5 file\n" * 10)
    assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "resid",
                 "--out", str(out / "mine.h5")]) == 0
    capsys.readouterr()
    code = main(["measure", "--model", str(model_dir), "--analyses", "massive_activations,text_dominance",
                 "--n-sequences", "2", "--seq-length", "12", "--dilutions", "1,2", "--dominance-prompts", "2",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[-1] == (f"wrote {out / 'results.json'} (captures in {out}: "
                                             "dominance_x1.h5, dominance_x2.h5, massive.h5)")


def test_measure_dominance_embeds_from_the_cli(model_dir, tmp_path, capsys):
    """--dominance-modality embeds: O is a soft-token block; analyze reruns it from the files."""
    out = tmp_path / "d"
    code = main(["measure", "--model", str(model_dir), "--analyses", "text_dominance",
                 "--dominance-modality", "embeds", "--soft-tokens", "random", "--pool", "2",
                 "--dilutions", "1,2", "--dominance-prompts", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    dom = json.loads((out / "results.json").read_text())["analyses"]["text_dominance"]
    assert dom["modality"] == "embeds" and dom["embeds"]["soft_tokens"] == "random"
    assert dom["embeds"]["pool"] == 2
    assert sorted(p.name for p in out.glob("*.h5")) == ["dominance_embeds_x1.h5", "dominance_embeds_x2.h5"]
    capsys.readouterr()
    assert main(["analyze", str(out / "dominance_embeds_x1.h5")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["dominance_embeds_x1.h5"]["text_dominance"]["per_layer"]


def test_prompt_files_split_at_newlines_only(tmp_path):
    """U+2028, form feed and NEL inside a line stay in the prompt (.txt and .jsonl), CRLF works,
    and line numbers in errors are file lines."""
    from scalelens.errors import ScalelensError
    from scalelens.probes.prompts import read_prompt_file

    odd = "w1\u2028w2 w3\x0cw4\x85w5"
    txt = tmp_path / "p.txt"
    txt.write_text(f"{odd}\r\n\nw6 w7\n", encoding="utf-8", newline="")
    assert [p.text for p in read_prompt_file(txt)] == [odd, "w6 w7"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"text": odd}, ensure_ascii=False) + "\n" + '{"text": w2}\n', encoding="utf-8")
    with pytest.raises(ScalelensError, match=r"p\.jsonl:2: invalid JSON"):
        read_prompt_file(jl)
    jl.write_text(json.dumps({"text": odd}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [p.text for p in read_prompt_file(jl)] == [odd]
    upper = jl.rename(tmp_path / "P.JSONL")  # the suffix in capitals is still JSON lines
    assert [p.text for p in read_prompt_file(upper)] == [odd]


def test_measure_rerun_with_other_settings_needs_overwrite(model_dir, tmp_path, capsys):
    """A rerun into the same --out with other prompt settings is refused with the fix it names
    (--overwrite), and that fix exists."""
    out = tmp_path / "m"
    base = ["measure", "--model", str(model_dir), "--analyses", "massive_activations", "--seq-length", "8",
            "--out", str(out)]
    assert main([*base, "--n-sequences", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--n-sequences", "3"]) == 2
    err = capsys.readouterr().err
    assert "massive.h5 holds a capture with different prompts" in err and "--overwrite" in err
    assert main([*base, "--n-sequences", "3", "--overwrite"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["analyses"]["massive_activations"]["n_prompts"] == 3


UNREACHABLE_HUB = """
import sys, time
from huggingface_hub import constants
constants.ENDPOINT = "http://127.0.0.1:9"  # the discard port: connection refused
time.sleep = lambda s: None  # the hub client's waits between its five retries
from scalelens.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_unreachable_hub_is_one_line_not_its_retry_warnings(prompt_file, tmp_path):
    """The hub client retries an unreachable hub five times, warning twice per retry on
    stderr; the CLI shows only its own line (in a fresh process, as a user runs it)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    out = tmp_path / "c.h5"
    proc = subprocess.run([sys.executable, "-c", UNREACHABLE_HUB, "capture", "--model",
                           "scalelens-test/nowhere", "--prompts", str(prompt_file), "--probes", "resid",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("scalelens: error: could not load scalelens-test/nowhere")
    assert not out.exists()


def test_a_scalelens_warning_is_one_line(model_dir, prompt_file, tmp_path):
    """With the hub unreachable a cached revision loads with a warning; Python's format made it
    two lines naming a scalelens source file and repeating a line of its code."""
    import os
    import socket
    import subprocess
    import sys

    from scalelens.models.testing import write_hub_cache

    cache = tmp_path / "hub"
    write_hub_cache(cache, "scalelens-test/tiny", {"main": model_dir})
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{port}")
    out = tmp_path / "c.h5"
    proc = subprocess.run([sys.executable, "-m", "scalelens.cli", "capture", "--model", "scalelens-test/tiny",
                           "--prompts", str(prompt_file), "--probes", "resid", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("capture c.h5: ")]
    assert proc.returncode == 0 and out.exists(), proc.stderr
    assert len(lines) == 1, proc.stderr  # besides the capture's progress
    assert lines[0].startswith("scalelens: warning: the hub cannot be reached (ConnectError")
    assert lines[0].endswith(f"loading scalelens-test/tiny@main from the local cache {cache}")


def test_scalelens_warnings_are_one_line_wherever_they_point():
    """A ScalelensWarning raised with a stacklevel that points into the user's code is still
    ours; other libraries' warnings go to the previous handler (Python's format)."""
    import io

    from scalelens.cli import _one_line_warning
    from scalelens.errors import ScalelensWarning

    shown, passed_on = io.StringIO(), []
    show = _one_line_warning(lambda *a: passed_on.append(a))
    show(ScalelensWarning("ignoring unknown probe keys: ['x']\nsecond line"), ScalelensWarning,
         "/home/me/notebook.py", 3, file=shown)
    show(UserWarning("a library's note"), UserWarning, "/usr/lib/python3/site-packages/lib.py", 7,
         file=shown)
    assert shown.getvalue() == "scalelens: warning: ignoring unknown probe keys: ['x']; second line\n"
    assert [a[2:4] for a in passed_on] == [("/usr/lib/python3/site-packages/lib.py", 7)]


def test_version_prints_the_package_version(capsys):
    from scalelens import __version__
    from scalelens.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"scalelens {__version__}\n"


def test_inspect_names_the_process_still_writing_an_incomplete_capture(model_dir, prompt_file, tmp_path,
                                                                       capsys):
    """An incomplete capture whose writer is alive: inspect said "rerun the capture command",
    which that writer's lock would refuse; it names the writer (without taking the lock)."""
    import h5py
    from cli_run import held_elsewhere

    out = tmp_path / "c.h5"
    assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "resid",
                 "--out", str(out), "--batch-size", "2"]) == 0
    with h5py.File(out, "r+") as f:  # as a capture after its first batch leaves it
        f["progress"][...] = [2, 0]
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"{out}: incomplete (2/5 prompts; rerun the capture "
                                                       "command to finish it)")
    take = ("from pathlib import Path\nfrom scalelens.cache.lock import WriteLock\n"
            "lock = WriteLock(Path(sys.argv[1])).acquire()")
    with held_elsewhere(take, str(out)) as writer:
        assert main(["inspect", str(out)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{out}: being written now by process {writer} (2/5 prompts done)"


def test_inspect_does_not_offer_to_resume_an_incomplete_capture_of_an_older_schema(model_dir, prompt_file,
                                                                                     tmp_path, capsys):
    """An incomplete v1 capture: inspect said "rerun the capture command to finish it", which
    the capture command refuses (an older schema's file is read, never resumed); it names
    --overwrite, as that refusal does."""
    import h5py

    out = tmp_path / "c.h5"
    argv = ["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "resid",
            "--out", str(out), "--batch-size", "2"]
    assert main(argv) == 0
    with h5py.File(out, "r+") as f:  # as scalelens before schema v2 left it after its first batch
        f.attrs["schema_version"] = 1
        f["progress"][...] = [2, 0]
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{out}: incomplete (2/5 prompts; written by an older scalelens, schema version 1, so it is "
        "not resumed: capture it again with --overwrite)")
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_inspect_help_names_the_measure_directory_it_takes(capsys):
    """``inspect --help`` named a capture file or a run directory only; a measure output
    directory (every capture in it) is taken too, as the README's CLI table says."""
    with pytest.raises(SystemExit) as stop:
        main(["inspect", "--help"])
    assert stop.value.code == 0
    assert "a measure output directory" in " ".join(capsys.readouterr().out.split())


def test_measure_help_lists_batch_size_with_the_general_options(capsys):
    """``--batch-size`` sets the prompts per forward pass of every analysis (retrieval, massive
    activations, text dominance, capacity, sparsity), but ``measure --help`` listed it under
    "text dominance"."""
    with pytest.raises(SystemExit) as stop:
        main(["measure", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    general = text[text.index("\noptions:"):text.index("\nretrieval heads:")]
    assert "--batch-size" in general and "every analysis" in " ".join(general.split())
    dominance = text[text.index("\ntext dominance:"):text.index("\ninformation capacity:")]
    assert "--batch-size" not in dominance


def test_inspect_a_directory_inspects_each_capture_in_it(model_dir, prompt_file, tmp_path, capsys):
    """A measure output directory: every capture in it, one after the other; a directory with
    none (and no sweep) is one line naming what to give."""
    for name in ("a.h5", "b.h5"):
        assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "resid",
                     "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [ln for ln in out if ln.endswith(": complete")]
    assert heads == [f"{tmp_path / 'a.h5'}: complete", f"{tmp_path / 'b.h5'}: complete"]
    assert out.count("") == 1 and out.count("probe resid:") == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"scalelens: error: {empty} holds no .h5 captures and is not a sweep's run directory; give a "
        "capture file, a measure output directory or a run directory")


def _with_a_massive_dimension(model_dir, out):
    """``model_dir``'s model with +5000 on residual dimension 5 after layer 0 (every position):
    entries that pass Sun et al.'s rule, on every token, delimiters included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_4h_to_h.bias[5] = 5000.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_analyze_reproduces_the_measures_results(model_dir, tmp_path, capsys):
    """`analyze DIR` reruns the analyses with the settings the measure used (its results.json):
    it once took the default gate, threshold and ratio threshold, and counted no delimiters,
    so its numbers differed from results.json's for the very same captures."""
    model = _with_a_massive_dimension(model_dir, tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("".join(f"w{i} w{i + 1} w{i + 2} w{i + 3}.\n" for i in range(0, 40, 3)))
    out = tmp_path / "m"
    assert main(["measure", "--model", str(model), "--analyses", "massive_activations,retrieval_heads",
                 "--text", str(text), "--n-sequences", "3", "--seq-length", "16", "--ratio-threshold", "2",
                 "--context-lengths", "16", "--depths", "0.5", "--n-needles", "1", "--gate", "-1",
                 "--threshold", "0.05", "--ablation-k", "0", "--out", str(out)]) == 0
    measured = json.loads((out / "results.json").read_text())["analyses"]
    assert 0 < measured["massive_activations"]["share_delimiter"] < 1
    assert measured["massive_activations"]["ratio_layers"] and measured["retrieval_heads"]["n_tests_passed"]
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    for file, name in (("massive.h5", "massive_activations"), ("retrieval.h5", "retrieval_heads")):
        got = again[file][name]
        assert got == {k: v for k, v in measured[name].items() if k in got}, name
    assert main(["analyze", str(out / "retrieval.h5"), "--gate", "1"]) == 0  # given: the flag wins
    assert json.loads(capsys.readouterr().out)["retrieval.h5"]["retrieval_heads"]["n_tests_passed"] == 0


_FINALIZER_SCRIPT = """
import sys, time
from scalelens import cli
if sys.argv[1] == "kept":
    sys.unraisablehook = cli._keep_interrupts(sys.unraisablehook)

class Finalized:
    def __del__(self):  # a Ctrl-C or SIGTERM that lands while a finalizer runs raises here
        raise cli.Terminated if sys.argv[2] == "term" else KeyboardInterrupt

with cli.sigterm_as_interrupt():
    try:
        Finalized()
        for _ in range(300):
            time.sleep(0.01)
        print("ran on")
    except cli.Terminated:
        print("terminated")
    except KeyboardInterrupt:
        print("interrupted")
"""


@pytest.mark.parametrize(("kind", "expected"), [("int", "interrupted"), ("term", "terminated")])
def test_an_interrupt_raised_in_a_finalizer_still_stops_the_command(kind, expected):
    """Python only reports an exception raised in ``__del__``, so a Ctrl-C landing there was lost
    and a sweep ran on to its end (exit 0); the CLI's unraisable hook re-delivers it."""
    import subprocess
    import sys

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _FINALIZER_SCRIPT, mode, kind],
                              capture_output=True, text=True, timeout=120)
        return done.stdout.strip()

    assert run("default") == "ran on"  # the loss the hook exists for
    assert run("kept") == expected


def test_path_options_expand_a_leading_tilde(model_dir, prompt_file, tmp_path, monkeypatch, capsys):
    """'~/x' reaches scalelens unexpanded when quoted or written --out=~/x: capture refused it
    ("output directory ~ does not exist"), and a sweep or demo into '~/run' wrote part of the run
    into ./~/run and part into $HOME/run. Every path option now means the home directory."""
    import shutil

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    shutil.copytree(model_dir, home / "model")
    shutil.copy(prompt_file, home / "prompts.txt")
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["capture", "--model", "~/model", "--prompts", "~/prompts.txt", "--probes", "resid",
                 "--out=~/c.h5"]) == 0, capsys.readouterr().err
    with CaptureFile(home / "c.h5") as f:
        assert f.complete and f.n_done == 5
    capsys.readouterr()
    assert main(["inspect", "~/c.h5"]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["sweep", "--model", "a=~/model", "--analyses", "superposition", "--out=~/run"]) == 0
    assert (home / "run" / "metrics.csv").is_file()
    assert main(["report", "~/run"]) == 0
    assert (home / "run" / "report.html").is_file()
    assert list(cwd.iterdir()) == []


def test_analyze_tokenizer_expands_a_leading_tilde(model_dir, prompt_file, tmp_path, monkeypatch, capsys):
    """``analyze --tokenizer '~/tok'`` was the one path option left unexpanded (README: every path
    option expands ``~``): it failed with "no usable tokenizer at ~/tok"."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(model_dir, home / "tok")
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "c.h5"
    assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "massive",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    own = json.loads(capsys.readouterr().out)  # with the tokenizer the capture recorded: the same one
    assert main(["analyze", str(out), "--tokenizer=~/tok"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["c.h5"]["massive_activations"]["n_prompts"] == 5
    assert result == own


def test_names_with_control_characters_are_shown_escaped(model_dir, prompt_file, tmp_path, capsys):
    """A model directory named with a newline and a terminal escape was printed raw by inspect
    (its model line split in two, the terminal recoloured) and in the missing-path error (the
    newline became '; '). Such names are shown as repr now; a name with spaces and accents is not."""
    import shutil

    from cli_run import assert_one_line, run_cli

    for name, expected in (("my\nmodel\x1b[31m", r"'my\nmodel\x1b[31m'"), ("mödel ä b", "mödel ä b")):
        shutil.copytree(model_dir, tmp_path / name)
        out = tmp_path / f"{len(name)}.h5"
        rc, _, err = run_cli(capsys, ["capture", "--model", str(tmp_path / name), "--prompts",
                                      str(prompt_file), "--probes", "resid", "--out", str(out)])
        assert rc == 0, err
        rc, text, _ = run_cli(capsys, ["inspect", str(out)])
        assert rc == 0 and text.splitlines()[1].startswith(f"model: {expected} (gpt_neox, "), text
        assert "\x1b" not in text
    rc, _, err = run_cli(capsys, ["measure", "--model", str(tmp_path / "no\nsuch\tmodel"), "--out",
                                  str(tmp_path / "m")])
    line = assert_one_line(rc, err, "model path", "does not exist")
    assert repr(str(tmp_path / "no\nsuch\tmodel")) in line


def _limited_cli(argv: list[str], limit: int, stdout=None, **env: str):
    """``scalelens ARGV`` as its own process under RLIMIT_FSIZE ``limit`` (writes past it fail
    with EFBIG, as on a full disk): in-process, HDF5 may crash later closing what it left."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "scalelens.cli", *argv], preexec_fn=limit_writes,
                          stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **env}, timeout=300)


def _one_error_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert (p.returncode, len(lines)) == (2, 1), p.stderr[-2000:]
    assert lines[0].startswith("scalelens: error: ") and "Traceback" not in p.stderr
    return lines[0]


def test_a_full_disk_line_names_the_file_hdf5_failed_to_write(model_dir, prompt_file, tmp_path):
    """h5py's RuntimeError ("Set slist enabled failed (file write failed: ..., filename =
    '.../x.h5.creating', ..., errno = 27, ...)") named the file, but the line said only "the
    output file"; it names it now."""
    out = tmp_path / "x.h5"
    p = _limited_cli(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes",
                      "resid,attn", "--out", str(out), "--quiet"], 3000)  # the lock fits, the file does not
    line = _one_error_line(p)
    assert line.startswith(f"scalelens: error: cannot create {out}: "), line
    assert "reached a file-size limit" in line, line
    assert "choose another --out" in line and line.endswith("finished batches are kept and the run resumes")


@pytest.mark.parametrize("command", ["inspect", "analyze", "suite info"])
def test_a_full_disk_under_redirected_stdout_names_stdout_not_an_out_option(command, model_dir, prompt_file,
                                                                            micro_suite, tmp_path, capsys):
    """``inspect``, ``analyze`` and ``suite info`` write only to stdout: on a full disk (or past
    ``ulimit -f``) the line told them to "choose another --out", which they do not have, and
    ``suite info`` that "finished batches are kept and the run resumes" (as ``suite build``)."""
    capture = tmp_path / "c.h5"
    assert main(["capture", "--model", str(model_dir), "--prompts", str(prompt_file), "--probes", "massive",
                 "--out", str(capture), "--quiet"]) == 0
    argv = {"inspect": ["inspect", str(capture)], "analyze": ["analyze", str(capture)],
            "suite info": ["suite", "info", str(micro_suite)]}[command]
    assert main(argv) == 0 and len(capsys.readouterr().out) > 100  # what it prints does not fit
    with (tmp_path / "out.txt").open("w") as stdout:
        line = _one_error_line(_limited_cli(argv, 100, stdout=stdout))
    assert "the standard output reached a file-size limit" in line, line
    assert "redirect it to another disk" in line and "--out" not in line and "resumes" not in line, line
    assert line.endswith("and rerun the same command"), line


def test_a_demo_whose_suite_cache_is_full_is_told_to_choose_another_suite(tmp_path):
    """The demo builds its suite in the cache (or --suite), not under --out: "choose another
    --out" would not have moved it; the line names the suite's directory and --suite."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    # matplotlib's font cache, built once per home on first import, is no part of this test
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True, timeout=120)
    p = _limited_cli(["demo", "--preset", "micro", "--out", str(tmp_path / "run"), "--quiet"], 4096,
                     SCALELENS_CACHE=str(cache))  # the suite's tokenizer.json does not fit
    line = _one_error_line(p)
    assert f"a write to {cache}" in line and "choose another --suite" in line, line
    assert line.endswith("finished work is kept and the demo resumes"), line


NO_ROOM_FOR_TEMP_FILES = """
import sys
sys.path.insert(0, sys.argv[1])
from cli_run import file_size_limit
from scalelens.cli import main
with file_size_limit(0):  # no file can grow: no candidate temporary directory takes tempfile's probe
    code = main(["measure", "--model", sys.argv[2], "--out", sys.argv[3]])
sys.exit(code)
"""


def test_no_usable_temporary_directory_names_tmpdir_as_the_fix(tmp_path):
    """torch imports dill, which asks tempfile for the temporary directory at import; with /tmp
    and the others full that raised "No usable temporary directory found in [...]" inside the
    command, printed as it was. The line now says what was tried and to set TMPDIR."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cli_run import assert_one_line

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    done = subprocess.run([sys.executable, "-c", NO_ROOM_FOR_TEMP_FILES, str(Path(__file__).parent),
                           str(tmp_path / "no-model"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    line = assert_one_line(done.returncode, done.stderr, "set TMPDIR to a directory with free space")
    assert f"no usable temporary directory (tried /tmp, /var/tmp, /usr/tmp, {tmp_path}: each full" in line
    assert not out.exists()


_OUT_OF_ADDRESS_SPACE = """
import resource, sys
import torch, transformers
from scalelens.cli import main
vm = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_cpu_allocation_is_out_of_memory_not_an_internal_error(tmp_path):
    """torch's CPU allocator raises a RuntimeError, not a MemoryError: a suite size too large for
    the machine (here 18 GiB of attention weights past a 2 GiB address-space limit) was an internal
    error (exit 1, "DefaultCPUAllocator: can't allocate memory ... report it")."""
    import subprocess
    import sys

    from cli_run import assert_one_line

    p = subprocess.run([sys.executable, "-c", _OUT_OF_ADDRESS_SPACE, "suite", "build", "--out",
                        str(tmp_path / "s"), "--preset", "micro", "--sizes", "1x40000x1", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert_one_line(p.returncode, p.stderr, "out of memory (an allocation of 17.9 GiB failed)",
                    "choose smaller --sizes")
