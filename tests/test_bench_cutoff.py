"""The capture benchmark, stopped by SIGTERM (as ``timeout`` does), records what it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_sigterm_records_the_complete_rounds(tmp_path):
    ledger, out = tmp_path / "RESULTS.md", tmp_path / "run.json"
    argv = [sys.executable, "-u", "-m", "scalelens.benchmarks.capture", "--quick", "--model-config",
            "pythia-14m", "--repeats", "500", "--goals", "disk", "--no-stop-variants", "--results",
            str(ledger), "--json", str(out), "--workdir", str(tmp_path / "work")]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 240
    assert p.stdout is not None
    for line in p.stdout:  # wait until every probe set has one complete round
        lines.append(line)
        if "round 1/500 summary" in line or time.monotonic() > deadline:
            break
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=120)
    log = "".join(lines) + rest
    assert p.returncode == 0, log
    rows = json.loads(out.read_text())["rows"]
    for s in ("resid", "attn", "summary"):
        assert rows[f"{s}/scalelens"]["n_samples"] >= 1
        assert rows[f"{s}/floor"]["tokens_s"] > 0
    text = ledger.read_text()
    assert "timing cut off (SIGTERM); complete rounds per set" in text
    assert "| pythia-14m |" in text  # the summary row
    assert "disk:" not in rest  # the goals are skipped once the timing was cut


def test_sigterm_before_any_timing_leaves_the_ledger_alone(tmp_path):
    ledger, out = tmp_path / "RESULTS.md", tmp_path / "run.json"
    argv = [sys.executable, "-u", "-m", "scalelens.benchmarks.capture", "--quick", "--model-config",
            "pythia-14m", "--goals", "disk", "--results", str(ledger), "--json", str(out),
            "--workdir", str(tmp_path / "work")]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    first = p.stdout.readline()
    assert first.startswith("building pythia-14m"), first
    p.send_signal(signal.SIGTERM)
    rest, _ = p.communicate(timeout=120)
    assert p.returncode == 0, first + rest
    assert "Traceback" not in rest
    assert "nothing measured" in rest
    assert not ledger.exists()
    data = json.loads(out.read_text())
    assert data["rows"] == {} and "disk" not in data["extra"]


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("scalelens-"))


def test_sigterm_removes_the_task_timers_temporary_models(tmp_path):
    """task_time cut off by SIGTERM (gpu_session.sh's `timeout`) removes its temporary model
    and captures (hundreds of MB per size; SIGTERM's default action skipped the cleanup) and
    exits 143 with one line."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = [sys.executable, "-u", "-m", "scalelens.benchmarks.task_time", "--sizes", "14m,31m",
            "--device", "cpu"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 240
    while not _leftovers(tmp) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(tmp), "the task timer made no temporary directory"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert _leftovers(tmp) == []
    assert "Traceback" not in err and "task_time: cut off (SIGTERM)" in err


def test_the_profile_leaves_no_captures_behind(tmp_path):
    """profile_capture writes its captures into a temporary directory it now removes (it kept
    every run's .h5 files)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = [sys.executable, "-m", "scalelens.benchmarks.profile_capture", "--model-config", "pythia-14m",
            "--n-prompts", "4", "--seq", "16", "--batch-size", "2", "--sets", "summary", "--top", "3",
            "--json", str(tmp_path / "p.json")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads((tmp_path / "p.json").read_text())) == {"floor", "summary"}
    assert _leftovers(tmp) == []
