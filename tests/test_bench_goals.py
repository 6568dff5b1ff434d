"""A goals-only benchmark run (``--sets ''``) records the goal it measured and nothing it did not."""

from __future__ import annotations

import json
import subprocess
import sys


def test_goals_only_run_records_retrieval_without_a_timing_table(tmp_path):
    ledger, out = tmp_path / "RESULTS.md", tmp_path / "run.json"
    argv = [sys.executable, "-m", "scalelens.benchmarks.capture", "--quick", "--sets", "", "--goals",
            "retrieval", "--results", str(ledger), "--json", str(out), "--workdir", str(tmp_path / "w")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["rows"] == {}
    ret = data["extra"]["retrieval"]
    assert ret["step0_agree"] == ret["n_tests"] >= 1  # both modes see the same prefix at step 0
    assert ret["ratio"] == ret["reference_s"] / ret["fast_s"] > 0
    assert "projection" not in data["extra"]  # it scales by a capture efficiency not measured here
    section = ledger.read_text().split("## ")[-1]
    assert "| retrieval fast >= 10x reference |" in section
    assert "| probe set | pipeline |" not in section and "- workload:" not in section
    row = next(line for line in ledger.read_text().splitlines() if "--sets ''" in line)
    assert f"| {ret['ratio']:.1f}x |" in row and "| - | - | - |" in row
