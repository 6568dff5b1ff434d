"""What a researcher sees while commands run: progress in a terminal and in a log, final lines.

Each command runs as its own process with stdout and stderr in files (a job log, ``nohup``,
CI), or with stderr on a pseudo-terminal, as a user at a shell has it.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from tiny_models import prompts

from scalelens.models.manifest import read_manifest
from scalelens.progress import LogBar, progress_bar

# the smallest settings the micro suite's context of 64 positions takes (as the demo's)
FAST = ["--context-lengths", "16", "--n-needles", "1", "--seq-length", "32", "--dilutions", "1,2",
        "--n-sequences", "2"]
CONTROL = ("\r", "\x1b[")


def _env(**extra: str) -> dict[str, str]:
    """This process's environment for a CLI process, with stdout buffered as a file's is by default."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, **extra}


def _cli(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``scalelens ARGV`` with stdout and stderr captured to pipes (not a terminal).

    Decoded here: text mode would turn each carriage return into a newline.
    """
    r = subprocess.run([sys.executable, "-m", "scalelens.cli", *argv], cwd=cwd, env=_env(**env),
                       capture_output=True, timeout=600)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def _in_one_log(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``scalelens ARGV > log 2>&1``: the exit code and the log."""
    log = cwd / "run.log"
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "scalelens.cli", *argv], cwd=cwd, env=_env(),
                            stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode
    return rc, log.read_bytes().decode()  # not read_text(): it turns each \r into \n


def _on_a_terminal(argv: list[str], cwd: Path, **env: str) -> str:
    """``scalelens ARGV`` with stderr on a pseudo-terminal; what the terminal received."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "scalelens.cli", *argv], cwd=cwd, env=_env(**env),
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=600) == 0
    return b"".join(chunks).decode()


def _no_control(text: str) -> None:
    for code in CONTROL:
        assert code not in text, f"{code!r} in:\n{text}"


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts(12)) + "\n")
    return path


def test_capture_to_a_log_shows_its_start_and_end_as_plain_lines(tiny_model_dir, prompt_file, tmp_path):
    """A redirected capture wrote nothing while it ran (measure: one line of ``\\r`` redraws)."""
    r = _cli(["capture", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--probes", "resid",
              "--batch-size", "4", "--out", "x.h5"], tmp_path)
    assert r.returncode == 0, r.stderr
    _no_control(r.stderr + r.stdout)
    lines = r.stderr.splitlines()
    assert lines and all(re.match(r"capture x\.h5: \d+/12 prompts \[", ln) for ln in lines), r.stderr
    assert lines[-1].startswith("capture x.h5: 12/12 prompts")
    assert r.stdout.splitlines()[-1] == "wrote x.h5"


def test_a_terminal_gets_the_live_bar_and_a_dumb_one_plain_lines(tiny_model_dir, prompt_file, tmp_path):
    argv = ["capture", "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--probes", "resid",
            "--batch-size", "4", "--out", "x.h5", "--overwrite"]
    live = _on_a_terminal(argv, tmp_path, TERM="xterm")
    assert "\r" in live and "12/12" in live
    dumb = _on_a_terminal(argv, tmp_path, TERM="dumb")
    assert "\x1b[" not in dumb and "\r\n" in dumb  # the terminal itself turns \n into \r\n
    assert "\r" not in dumb.replace("\r\n", "\n")
    assert "capture x.h5: 12/12 prompts" in dumb


def test_measure_to_a_log_names_each_capture_and_what_it_wrote(tiny_model_dir, tmp_path):
    r = _cli(["measure", "--model", str(tiny_model_dir), "--analyses", "massive_activations,superposition",
              "--out", "m", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    _no_control(r.stderr + r.stdout)
    assert r.stderr.splitlines()[-1].startswith("capture massive.h5: 2/2 prompts")
    assert r.stdout.splitlines()[-1] == "wrote m/results.json (captures in m: massive.h5)"


@pytest.fixture(scope="module")
def broken_suite(micro_suite, tmp_path_factory) -> Path:
    """A copy of the micro suite whose smallest size's last checkpoint does not load."""
    dst = tmp_path_factory.mktemp("suite") / "micro"
    shutil.copytree(micro_suite, dst)
    manifest = read_manifest(dst)
    (dst / manifest.sizes[0] / f"step{manifest.steps[-1]}" / "config.json").write_text("{not json")
    return dst


def _sweep_argv(suite: Path) -> list[str]:
    m = read_manifest(suite)
    return ["sweep", "--suite", str(suite), "--sizes", ",".join(m.sizes[:2]),
            "--checkpoints", f"{m.steps[0]},{m.steps[-1]}", "--analyses", "superposition",
            "--out", "run"]


@pytest.fixture(scope="module")
def partly_failed(broken_suite, tmp_path_factory) -> tuple[Path, int, str]:
    """The broken suite's sweep run once into ``DIR/run`` as ``> log 2>&1``: DIR, exit code, log.

    Read-only: a test that reruns it copies ``DIR/run`` first.
    """
    cwd = tmp_path_factory.mktemp("partly_failed")
    rc, log = _in_one_log(_sweep_argv(broken_suite), cwd)
    return cwd, rc, log


def test_a_partly_failed_sweep_logs_each_task_and_exits_1(broken_suite, partly_failed):
    """In one log (``> log 2>&1``) the outcome line came after the failures it introduces, and
    the log held carriage returns."""
    m = read_manifest(broken_suite)
    _, rc, log = partly_failed
    assert rc == 1, log
    _no_control(log)
    lines = log.splitlines()
    bad = f"{m.sizes[0]}/step{m.steps[-1]}"
    assert [ln for ln in lines if ln.startswith("sweep: ") and "/4 tasks" in ln] == [
        ln for ln in lines if ln.startswith("sweep: ") and ln.endswith((" done]", " failed]"))]
    assert sum(ln.endswith(f"{bad} failed]") for ln in lines) == 1
    outcome = lines.index("sweep: 3 done, 0 skipped, 1 failed")
    assert lines[outcome + 1].startswith(f"  failed {bad}: ")
    assert lines[-1] == "wrote run/metrics.csv, " + ("run/metrics.parquet, " if "parquet" in log else "") \
        + "run/fits.json"


def test_a_rerun_logs_no_line_per_skipped_task(broken_suite, partly_failed, tmp_path):
    """A rerun logged one line per finished task (28 for the demo), each 'skipped'."""
    shutil.copytree(partly_failed[0] / "run", tmp_path / "run")  # the first run, in a copy
    r = _cli(_sweep_argv(broken_suite), tmp_path)
    assert r.returncode == 1
    bars = [ln for ln in r.stderr.splitlines() if ln.startswith("sweep: ")]
    assert len(bars) == 1 and bars[0].startswith("sweep: 4/4 tasks"), r.stderr
    assert "skipped]" not in r.stderr
    assert r.stdout.splitlines()[0] == "sweep: 0 done, 3 skipped, 1 failed"


def test_building_a_suite_to_a_log_has_no_cursor_codes(tmp_path):
    """Four bars, one per size, moved the cursor up and down with escape codes in the log."""
    r = _cli(["suite", "build", "--preset", "micro", "--out", "suite"], tmp_path)
    assert r.returncode == 0, r.stderr
    _no_control(r.stderr + r.stdout)
    m = read_manifest(tmp_path / "suite")
    steps = m.steps[-1]  # a checkpoint at the last training step
    for size in m.sizes:
        assert sum(ln.startswith(f"suite {size}: {steps}/{steps} steps") for ln in r.stderr.splitlines()) == 1
    assert r.stdout.splitlines()[-1].startswith("wrote the suite to suite in ")


def test_a_ray_sweep_prints_no_ray_banner(micro_suite, tmp_path):
    """Ray's 'Started a local Ray instance' and token-authentication notice reached stderr."""
    m = read_manifest(micro_suite)
    r = _cli(["sweep", "--suite", str(micro_suite), "--sizes", m.sizes[0], "--checkpoints", str(m.steps[-1]),
              "--analyses", "superposition", "--executor", "ray", "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    _no_control(r.stderr)
    assert "Started a local Ray" not in r.stderr and "authentication" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("note: sweeping on a local Ray started by this process ("), lines[0]
    assert all(ln.startswith("sweep (ray): ") for ln in lines[1:]), r.stderr


def test_a_log_bar_writes_its_last_state_only_within_its_interval():
    buf = io.StringIO()
    with progress_bar(total=500, desc="step", unit="item", file=buf, log_every=float("inf")) as bar:
        assert isinstance(bar, LogBar)
        for _ in range(500):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["step: 500/500 items"]
    _no_control(buf.getvalue())


def test_a_log_bar_with_no_interval_writes_every_update_once():
    buf = io.StringIO()
    bar = progress_bar(total=3, desc="sweep", unit="task", file=buf, log_every=0.0)
    for key in ("a", "b", "c"):
        bar.set_postfix_str(key, refresh=False)
        bar.update(1)
    bar.close()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == [f"sweep: {n}/3 tasks" for n in (1, 2, 3)]
    assert lines[-1].endswith(", c]")


def test_a_log_bar_stopped_unfinished_writes_nothing_after_the_error():
    """Ctrl-C in a capture: its bar, closed after the error line, wrote its state below it."""
    buf = io.StringIO()
    bar = progress_bar(total=10, desc="capture x.h5", unit="prompt", file=buf, log_every=float("inf"))
    bar.close()  # failed before its first batch
    assert buf.getvalue() == ""
    bar = progress_bar(total=10, desc="capture x.h5", unit="prompt", file=buf, log_every=float("inf"))
    bar.update(4)
    bar.close()  # interrupted
    assert buf.getvalue() == ""
