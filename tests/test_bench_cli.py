"""The benchmark CLIs refuse bad flags and inputs with one line (no traceback, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import capture as bench
from benchmarks import projection

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--memory-sizes", "abc"], "expected a positive integer, got 'abc'"),
    (["--retrieval-lengths", "1,x"], "got 'x'"),
    (["--n-prompts", "-3"], "got '-3'"),
    (["--batch-size", "0"], "got '0'"),
    (["--seq", "1"], "--seq must be at least 8"),
    (["--goals", "bogus"], "unknown goal(s) ['bogus']"),
    (["--model-config", "bogus"], "--model-config: unknown model config 'bogus'; use pythia-{14m,"),
    (["--memory-model", "70"], "--memory-model: unknown model config '70'"),
    (["--retrieval-model", "pythia-99m"], "unknown model config 'pythia-99m'; use pythia-{"),
    (["--json", "/nonexistent/x.json"], "--json /nonexistent/x.json: its directory /nonexistent does not"),
])
def test_capture_benchmark_bad_flags(flags, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse(["--no-record", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and needle in err[-1] and "Traceback" not in "\n".join(err)


def test_capture_benchmark_checks_the_ledger_path_when_recording(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse(["--results", "/nonexistent/R.md"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "--results /nonexistent/R.md: its directory" in err[-1]


def _one_error(capsys, exc: pytest.ExceptionInfo, prog: str) -> str:
    """The single ``prog: error:`` line of an argparse exit (exit code 2, no traceback)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"python -m benchmarks.{prog}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--device", "foo"], "unknown device 'foo'; use cpu or cuda"),
    (["--device", "mps"], "device mps: scalelens runs on cpu or cuda"),
    (["--sizes", "14m,15m"], "--sizes: unknown model config '15m'"),
    (["--sizes", ","], "--sizes: is empty"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--json", "/nonexistent/t.json"], "--json /nonexistent/t.json: its directory /nonexistent does not"),
])
def test_task_time_bad_flags(flags, needle, capsys):
    """Refused before any model is built (they raised a traceback after building it, or the
    --json path failed after the whole run)."""
    from benchmarks import task_time

    with pytest.raises(SystemExit) as exc:
        task_time.main(["--sizes", "14m", "--device", "cpu", *flags])
    assert needle in _one_error(capsys, exc, "task_time")


@pytest.mark.parametrize(("prog", "flags", "needle"), [
    ("profile_capture", ["--model-config", "bogus"], "--model-config: unknown model config 'bogus'"),
    ("profile_capture", ["--json", "/nonexistent/p.json"], "its directory /nonexistent does not exist"),
    ("cuda_check", ["--json", "/nonexistent/c.json"], "its directory /nonexistent does not exist"),
])
def test_other_benchmark_clis_bad_flags(prog, flags, needle, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"benchmarks.{prog}").main(flags)
    assert needle in _one_error(capsys, exc, prog)


def test_capture_benchmark_lists_parse(capsys):
    args = bench.parse(["--no-record", "--retrieval-lengths", "128,256", "--memory-sizes", "10,20"])
    assert args.retrieval_lengths == (128, 256) and args.memory_sizes == (10, 20)


GOOD = json.loads((ROOT / "benchmarks/gpu-runs/2026-11-28-h200/task_time.json").read_text())


def _with(**sizes):
    return {**GOOD, "sizes": sizes}


@pytest.mark.parametrize(("doc", "needle"), [
    ("{not json", "Expecting property name"),
    (_with(), "two or more measured sizes"),
    (_with(**{"160m": GOOD["sizes"]["160m"]}), "two or more measured sizes"),
    (_with(**{"15m": GOOD["sizes"]["160m"], "410m": GOOD["sizes"]["410m"]}), "unknown size '15m'"),
    (_with(**{"160m": {**GOOD["sizes"]["160m"], "superposition": 0.0}, "410m": GOOD["sizes"]["410m"]}),
     "stage superposition needs a positive time"),
    (_with(**{"160m": {**GOOD["sizes"]["160m"], "load": "fast"}, "410m": GOOD["sizes"]["410m"]}),
     "stage load needs a positive time"),
])
def test_projection_bad_inputs(doc, needle, tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    assert projection.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_projection_of_the_recorded_gpu_task_times(capsys):
    assert projection.main([str(ROOT / "benchmarks/gpu-runs/2026-11-28-h200/task_time.json")]) == 0
    assert "Ray workers" in capsys.readouterr().out


def test_reliability_record_renders_to_the_committed_markdown():
    """RELIABILITY.md is rendered from reliability.json plus hand-kept sections in the renderer:
    a --render may not roll the committed file back (it dropped a section and re-listed a fixed gap)."""
    from benchmarks.reliability import render_markdown

    record = json.loads((ROOT / "benchmarks/reliability.json").read_text())
    assert render_markdown(record) == (ROOT / "benchmarks/RELIABILITY.md").read_text()


def test_reliability_refuses_too_few_prompts(capsys):
    from benchmarks import reliability

    with pytest.raises(SystemExit) as exc:
        reliability.main(["--prompts", "0"])
    assert exc.value.code == 2 and "--prompts >= 32" in capsys.readouterr().err
