"""The capture benchmark, stopped by SIGTERM (as ``timeout`` does), records what it finished."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time


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
