"""Crash safety with real faults: SIGKILLed captures and sweeps, concurrent readers, full disks.

Every trial runs the real CLI in a subprocess (``python -m scalelens.cli``) on a real HF
model saved to disk and kills it with SIGKILL; the checks are those of
``benchmarks/reliability.py`` (which runs more trials and writes RELIABILITY.md):
``inspect`` reads what is left, the same command completes it, and the result equals an
uninterrupted run bit for bit. Reruns go through ``main()`` in this process to save the
interpreter start-up; the killed runs never do.
"""

from __future__ import annotations

import random
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from scalelens.benchmarks import reliability as rel
from scalelens.cache.reader import CaptureFile
from scalelens.capture import Capture

N_PROMPTS = 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved model, a prompt file and an uninterrupted reference capture."""
    work = tmp_path_factory.mktemp("reliability")
    model = rel.build_model_dir(work / "model")
    prompts = rel.write_prompts(work / "prompts.txt", N_PROMPTS)
    ref = work / "reference.h5"
    rc, _, err = rel.run_in_process(rel.capture_argv(model, prompts, ref))
    assert rc == 0, err
    return work, model, prompts, ref, rel.read_all(ref)


def _raw_ranges(path) -> list[tuple[int, int]]:
    """Byte ranges of raw data (chunks and contiguous storage) of every dataset."""
    ranges: list[tuple[int, int]] = []
    with h5py.File(path, "r", locking=False) as f:

        def visit(_name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    ranges.append((info.byte_offset, info.size))
            else:
                ranges.append((obj.id.get_offset(), obj.id.get_storage_size()))

        f.visititems(visit)
    return ranges


SUPERBLOCK_FLAGS = slice(20, 24)  # superblock v0: file consistency flags


def _metadata(raw: bytes, ranges: list[tuple[int, int]]) -> bytes:
    b = bytearray(raw)
    for off, size in ranges:
        b[off : off + size] = bytes(size)
    b[SUPERBLOCK_FLAGS] = bytes(4)
    return bytes(b)


def test_a_running_capture_changes_raw_data_only(setup, tmp_path):
    """The design claim, byte for byte: while a capture writes, every byte outside the
    datasets' raw storage (all HDF5 metadata) stays as it was created, except the v0
    superblock's consistency flag, which HDF5 ignores when reopening."""
    _, model, prompts, _, _ = setup
    out = tmp_path / "c.h5"
    proc = subprocess.Popen(rel.capture_argv(model, prompts, out), env=rel.quiet_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rel.wait_for(out.exists, 120, proc)
    ranges = _raw_ranges(out)
    seen, progress = set(), set()
    while proc.poll() is None:
        raw = out.read_bytes()
        seen.add(_metadata(raw, ranges))
        got = rel.progress_of(out)
        if got:
            progress.add(got[0])
        time.sleep(0.01)
    assert proc.wait() == 0
    final = out.read_bytes()
    assert final[SUPERBLOCK_FLAGS] == bytes(4)  # cleared again at close
    want = _metadata(final, ranges)
    changed = {int(i) for m in seen - {want} if len(m) == len(want)
               for i in np.flatnonzero(np.frombuffer(m, np.uint8) != np.frombuffer(want, np.uint8))[:20]}
    assert seen == {want}, f"HDF5 metadata changed while batches were written: bytes {sorted(changed)}"
    assert len(progress) >= 2, progress  # the snapshots really were taken mid-capture
    with h5py.File(out, "r") as f:
        assert f.id.get_create_plist().get_version()[0] == 0  # superblock v0: no SWMR flags to clear


def test_kill_9_capture_trials(setup):
    work, model, prompts, _, ref = setup
    rng = random.Random(20261128)
    timing = rel.Timing(total=7.0, writing=2.0)  # only scales the random kill moments
    trials = [rel.capture_trial(i, rng, work, model, prompts, ref, timing, mode,
                                runner=rel.run_in_process)
              for i, mode in enumerate(("writing", "any", "writing", "writing", "writing"))]
    for t in trials:
        assert t.survived, t
    mid = [t for t in trials if "/" in t.state_at_kill]
    assert len(mid) >= 2, [t.state_at_kill for t in trials]  # most kills landed mid-write
    assert sum(t.reader_reads for t in trials) > 0
    for t in mid:  # killed mid-write: the rerun resumed it, and it was readable in between
        assert t.rerun_rc == 0 and "incomplete" in t.inspect_note and t.inspect_note.startswith(str(work))


def _signal_after_8_prompts(argv: list[str], out, sig: int) -> tuple[int, str]:
    """Run a capture, send ``sig`` once 8 prompts are written; its exit code and stderr."""
    proc = subprocess.Popen(argv, env=rel.quiet_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    rel.wait_for(lambda: rel._done_at_least(out, 8), 120, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.fail(f"the capture finished before signal {sig} landed")
    return proc.returncode, err


def test_ctrl_c_during_an_overwrite_then_resume(setup, tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) of a run with --overwrite: the message says to rerun WITHOUT it, and
    that rerun resumes (rerunning with --overwrite would throw the finished prompts away)."""
    _, model, prompts, _, ref = setup
    out = tmp_path / "c.h5"
    argv = rel.capture_argv(model, prompts, out)
    returncode, err = _signal_after_8_prompts([*argv, "--overwrite"], out, signal.SIGINT)
    done = rel.progress_of(out)
    assert returncode == 130 and err.strip().splitlines()[-1] == (
        "scalelens: interrupted; rerun it without --overwrite to resume"), err
    assert done is not None and 8 <= done[0] < N_PROMPTS and not done[1], done
    calls = []
    real = Capture._run_batches

    def spy(self, writer, tok, rows):
        calls.append(writer.n_done)
        return real(self, writer, tok, rows)

    monkeypatch.setattr(Capture, "_run_batches", spy)
    rc, _, err2 = rel.run_in_process(argv)
    assert rc == 0, err2
    assert calls == [done[0]]  # resumed where the interrupted run stopped
    assert not rel.differences(ref, out)


def test_sigterm_stops_a_capture_like_ctrl_c(setup, tmp_path):
    """SIGTERM (a scheduler's stop, ``timeout``) runs the same cleanup as Ctrl-C: one line,
    exit 143, the lock file gone; the rerun resumes to the uninterrupted result."""
    _, model, prompts, _, ref = setup
    out = tmp_path / "t.h5"
    argv = rel.capture_argv(model, prompts, out)
    returncode, err = _signal_after_8_prompts(argv, out, signal.SIGTERM)
    assert returncode == 143, err
    assert err.strip().splitlines() == ["scalelens: terminated (SIGTERM); rerun the same command to resume"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]
    done = rel.progress_of(out)
    assert done is not None and 8 <= done[0] < N_PROMPTS and not done[1], done
    rc, _, err2 = rel.run_in_process(argv)
    assert rc == 0, err2
    assert not rel.differences(ref, out)


KILL_WHILE_CREATING = """
import os, signal, sys
import scalelens.cache.writer as w
real, calls = w._create_dataset, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # SIGKILL half-way through creating the file
    return real(*args, **kwargs)
w._create_dataset = dying
from scalelens.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("at_dataset", [2, 9])
def test_kill_9_while_the_file_is_created(setup, tmp_path, at_dataset):
    """The write-then-rename window, hit exactly: SIGKILL after some datasets exist."""
    _, model, prompts, _, ref = setup
    out = tmp_path / "c.h5"
    argv = rel.capture_argv(model, prompts, out)
    p = subprocess.run([sys.executable, "-c", KILL_WHILE_CREATING, str(at_dataset), *argv[3:]],
                       env=rel.quiet_env(), capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and out.with_name("c.h5.creating").exists()  # nothing half-written at --out
    rc, _, err = rel.run_in_process(rel.cli("inspect", str(out)))
    assert rc == 2 and "interrupted while creating" in (rel.one_error_line(err) or "")
    rc, _, err = rel.run_in_process(argv)
    assert rc == 0, err
    assert not out.with_name("c.h5.creating").exists() and not rel.differences(ref, out)


def test_kill_9_while_an_overwrite_is_created_leaves_the_old_file_and_no_temp(setup, tmp_path):
    """SIGKILL while --overwrite builds the new file aside: the old file stays whole, and the
    next capture of that path (even one refused as complete) clears the killed one's temp file."""
    _, model, prompts, ref_path, ref = setup
    out = tmp_path / "c.h5"
    argv = rel.capture_argv(model, prompts, out)
    assert rel.run_in_process(argv)[0] == 0
    p = subprocess.run([sys.executable, "-c", KILL_WHILE_CREATING, "3", *argv[3:], "--overwrite"],
                       env=rel.quiet_env(), capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL and out.with_name("c.h5.creating").exists()
    rc, _, err = rel.run_in_process(argv)
    assert rc == 2 and "already complete" in err
    assert not out.with_name("c.h5.creating").exists() and not rel.differences(ref, out)


def test_reader_snapshot_stays_consistent_while_the_writer_moves_on(setup, tmp_path):
    _, model, prompts, ref_path, ref = setup
    out = tmp_path / "w.h5"
    rc, _, _ = rel.run_in_process(rel.capture_argv(model, prompts, out))
    assert rc == 0
    _set_progress(out, 8)  # rewind: as if only 8 prompts were done
    reader = CaptureFile(out)
    assert (reader.n_done, reader.complete) == (8, False)
    _set_progress(out, 16)  # the writer (another process) moves on
    a = reader.read("values", "resid").data
    b = reader.read("tokens").data
    assert len(a) == len(b) == 8  # one snapshot: arrays agree in length
    np.testing.assert_array_equal(a, ref["probes/resid/values"][:8])
    reader.refresh()
    assert reader.n_done == 16 and len(reader.read("lengths").data) == 16
    reader.close()


def _set_progress(path, n_done: int) -> None:
    """Write /progress from another process (HDF5 will not open a file read-write in a
    process that already has it open read-only)."""
    code = (f"import h5py; f = h5py.File({str(path)!r}, 'r+', locking=False); "
            f"f['progress'][...] = [{n_done}, 0]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _needs_mount():
    if not rel.can_mount():
        pytest.skip("needs root to mount a small tmpfs")


@pytest.mark.parametrize("fraction", [0.4])
def test_disk_full_mid_capture_then_resume(setup, fraction):
    _needs_mount()
    work, model, prompts, ref_path, ref = setup
    t = rel.disk_full_trial(work, model, prompts, ref, ref_path.stat().st_size, fraction,
                            runner=rel.run_in_process)
    assert t.first_rc == 2 and "no space left" in t.first_error and "rerun" in t.first_error, t
    assert "/" in t.state_after_error and not t.state_after_error.startswith("0/"), t  # kept batches
    assert t.survived, t


def test_disk_full_in_a_subprocess_exits_cleanly(setup, tmp_path):
    """The real command on a full disk: exit 2, one line, no h5py tracebacks, no crash at exit."""
    _needs_mount()
    work, model, prompts, ref_path, ref = setup
    mnt = tmp_path / "mnt"
    rel.mount_tmpfs(mnt, f"{ref_path.stat().st_size // 2 // 1024}k")
    try:
        rc, _, err = rel.run_cli(rel.capture_argv(model, prompts, mnt / "c.h5"))
        assert rc == 2, err
        assert rel.one_error_line(err) is not None and "no space left" in err, err
        assert "Traceback" not in err and "Exception ignored" not in err
        with CaptureFile(mnt / "c.h5") as f:
            assert 0 < f.n_done < N_PROMPTS
    finally:
        rel.unmount(mnt)


def test_file_size_limit_at_creation_leaves_nothing(setup, tmp_path):
    """RLIMIT_FSIZE (works without root): creating the file fails; one line, no file, no temp file."""
    _, model, prompts, _, _ = setup
    out = tmp_path / "c.h5"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run(rel.capture_argv(model, prompts, out), capture_output=True, text=True,
                       env=rel.quiet_env(), preexec_fn=limit, timeout=300)
    assert p.returncode == 2, p.stderr
    assert rel.one_error_line(p.stderr) is not None and "file-size limit" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def test_read_only_output_after_a_kill(setup):
    _needs_mount()
    work, model, prompts, ref_path, ref = setup
    t = rel.read_only_trial(work, model, prompts, ref, ref_path.stat().st_size, runner=rel.run_in_process)
    assert t.first_rc == 2 and "not writable" in t.first_error and "resume" in t.first_error, t
    assert t.survived, t


def test_kill_9_sweep_trials(micro_suite, tmp_path):
    from scalelens.models.suite import read_manifest

    manifest = read_manifest(micro_suite)
    spec = rel.write_sweep_spec(tmp_path / "sweep.toml", micro_suite, list(manifest.sizes[:2]),
                                list(manifest.steps[-2:]))
    ref_run = tmp_path / "reference"
    timing = rel.time_sweep(rel.sweep_argv(spec, ref_run), runner=rel.run_in_process)
    timing = rel.Timing(total=timing.total + 4.0, writing=timing.total)  # + interpreter start-up
    rng = random.Random(7)
    plans = (["capture"], ["tasks", "capture"])
    trials = [rel.sweep_trial(i, rng, tmp_path, spec, ref_run, timing, n_kills=len(plan), n_tasks=4,
                              runner=rel.run_in_process, modes_wanted=plan) for i, plan in enumerate(plans)]
    for t in trials:
        assert t.survived, t  # nothing finished was redone or rewritten; metrics and fits equal
    assert sum(t.partial_captures_left_by_kills for t in trials) >= 1, trials  # and resumed, not redone
    assert sum(t.captures_complete_before_rerun for t in trials) >= 1, trials


def test_the_benchmark_writes_its_record(tmp_path):
    """benchmarks/reliability.py renders what it measured (format check on a tiny record)."""
    trial = rel.CaptureTrial(0, "writing", 1.5, "12/40", True, "x.h5: incomplete", 3, 1, [], 0,
                             "completed", True, True, 2.0)
    text = rel.render_markdown({"capture_trials": [vars(trial)], "fault_trials": [], "sweep_trials": [],
                                "capture_timing": {"total": 5.0, "writing": 1.0}, "seconds": 9,
                                "seed": 0, "prompts": 40})
    assert "| capture killed with SIGKILL | 1 | 1 | 0 |" in text
    assert "12/40" in text and "| 0 | writing | 1.5 | 12/40 |" in text
