"""What the reliability trials share: inputs, file comparisons, runners, waits and tmpfs mounts."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

PROBES = "resid,attn,massive,top1,norms"


HERE = Path(__file__).resolve().parent


def build_model_dir(path: Path, seed: int = 0, layers: int = 3, width: int = 64) -> Path:
    """A random-init GPT-NeoX (``layers`` x ``width``) and a word-level tokenizer, saved as an HF dir."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    if (path / "config.json").is_file():
        return path
    vocab = {f"w{i}": i for i in range(250)}
    vocab.update({"[UNK]": 250, "[PAD]": 251, "[BOS]": 252, "[EOS]": 253})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(  # type: ignore[call-arg]
        vocab_size=256,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * width,
        max_position_embeddings=256,
        rotary_pct=0.25,
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def write_prompts(path: Path, n: int, seed: int = 0, min_len: int = 8, max_len: int = 40) -> Path:
    """``n`` prompts of ``min_len``..``max_len`` words, one per line."""
    rng = random.Random(seed)
    lines = [
        " ".join(f"w{rng.randrange(250)}" for _ in range(rng.randint(min_len, max_len))) for _ in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str) -> list[str]:
    """argv of ``python -m scalelens.cli ARGS``."""
    return [sys.executable, "-m", "scalelens.cli", *args]


def capture_argv(
    model_dir: Path, prompts: Path, out: Path, batch_size: int = 4, probes: str = PROBES
) -> list[str]:
    """The capture command every trial runs (and reruns)."""
    return cli(
        "capture",
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--probes",
        probes,
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
    )


def quiet_env() -> dict[str, str]:
    """Environment for child processes: one thread each (2 shared cores), no progress bars."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def dataset_names(path: Path) -> list[str]:
    """Every dataset path in an HDF5 file."""
    names: list[str] = []
    with h5py.File(path, "r", locking=False) as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def read_all(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a file, in memory."""
    with h5py.File(path, "r", locking=False) as f:
        return {name: f[name][()] for name in dataset_names(path)}


def differences(ref: Path | dict[str, np.ndarray], path: Path) -> list[str]:
    """Datasets whose dtype, shape or bytes differ between ``ref`` and ``path``."""
    a = read_all(ref) if isinstance(ref, Path) else ref
    b = read_all(path)
    out = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            out.append(name)
    return out


def content_hash(path: Path) -> str:
    """SHA-256 over every dataset's name, dtype, shape and bytes (ignores HDF5 bookkeeping)."""
    h = hashlib.sha256()
    for name, arr in read_all(path).items():
        h.update(f"{name}{arr.dtype}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def file_state(out: Path) -> str:
    """``absent``, ``creating``, ``n_done/N`` or ``complete``."""
    from scalelens.cache.reader import CaptureFile
    from scalelens.errors import ScalelensError

    if not out.exists():
        return "creating" if out.with_name(out.name + ".creating").exists() else "absent"
    try:
        with CaptureFile(out) as f:
            return "complete" if f.complete else f"{f.n_done}/{f.n_prompts}"
    except ScalelensError as e:
        return f"unreadable: {e}"


class ConcurrentReader(threading.Thread):
    """Opens ``out`` repeatedly while a capture writes it; checks finished prompts against ``ref``.

    Attributes:
        reads: Snapshots read (each: every dataset of the finished prompts).
        analyses: Massive-activation analyses run on a snapshot.
        errors: Anything that went wrong (a crash, or a finished prompt differing from ``ref``).
        max_done: The most finished prompts seen.
    """

    def __init__(self, out: Path, ref: dict[str, np.ndarray], pause: float = 0.05) -> None:
        """Prepare to read ``out``; ``ref`` holds an uninterrupted run's datasets."""
        super().__init__(daemon=True)
        self.out, self.ref, self.pause = out, ref, pause
        self.ref_probes = {name.split("/")[1] for name in ref if name.startswith("probes/")}
        self.reads = self.analyses = self.max_done = 0
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Finish the current read and stop."""
        self._stop_event.set()

    def run(self) -> None:
        """Read until stopped."""
        while not self._stop_event.is_set():
            if self.out.exists():
                try:
                    self._read_once()
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    self.errors.append(f"{type(e).__name__}: {e}")
            time.sleep(self.pause)

    def _read_once(self) -> None:
        from scalelens.analyses.from_capture import MASSIVE_PROBE
        from scalelens.cache.reader import CaptureFile
        from scalelens.commands.measure import analyze_file

        with CaptureFile(self.out) as f:
            n = f.n_done
            for probe in f.probe_names:
                for name in f.datasets(probe):
                    got = f.read(name, probe).data
                    want = self.ref[f"probes/{probe}/{name}"][:n]
                    if got.tobytes() != want.tobytes():
                        self.errors.append(f"prompts < {n} of {probe}/{name} differ from the reference")
        if n and MASSIVE_PROBE in self.ref_probes and self.reads % 5 == 0:  # what `analyze` runs
            analyze_file(self.out, analyses=("massive_activations",))
            self.analyses += 1
        self.reads += 1
        self.max_done = max(self.max_done, n)


@dataclass
class Timing:
    """Wall times of an uninterrupted run: whole process, and from the output file appearing."""

    total: float
    writing: float


def wait_for(cond: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Poll ``cond`` until true, ``proc`` exits, or ``timeout``; return the time waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not cond():
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.005)
    return time.monotonic() - t0


def progress_of(out: Path) -> tuple[int, bool] | None:
    """``/progress`` of a capture file, or None while it does not exist."""
    if not out.exists():
        return None
    try:
        with h5py.File(out, "r", locking=False) as f:
            done, complete = (int(v) for v in f["progress"][()])
    except (OSError, KeyError):
        return None
    return done, bool(complete)


def wait_until(deadline: float, proc: subprocess.Popen) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` or ``proc`` exits."""
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)


def time_capture(argv: list[str], out: Path) -> Timing:
    """Run the capture uninterrupted once; measure its total and writing time."""
    creating = out.with_name(out.name + ".creating")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=quiet_env())
    wait_for(lambda: out.exists() or creating.exists(), 600, proc)
    t_file = time.monotonic() - t0
    _, err = proc.communicate()
    total = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"reference capture failed: {err.decode()[-2000:]}")
    return Timing(total, max(0.05, total - t_file))


def run_cli(argv: list[str], timeout: float = 600) -> tuple[int, str, str]:
    """Run a CLI command to the end; return (exit code, stdout, stderr)."""
    p = subprocess.run(argv, capture_output=True, text=True, env=quiet_env(), timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def run_in_process(argv: list[str], timeout: float = 600) -> tuple[int, str, str]:
    """Like :func:`run_cli`, but through ``scalelens.cli.main`` in this process (no startup cost)."""
    import contextlib
    import io

    import torch

    from scalelens.cli import main as cli_main

    assert argv[1:3] == ["-m", "scalelens.cli"], argv
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): float sums in the same order
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli_main(argv[3:])
            except SystemExit as e:  # argparse errors
                rc = int(e.code or 0)
    finally:
        torch.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


Runner = Callable[[list[str]], tuple[int, str, str]]


def one_error_line(stderr: str) -> str | None:
    """The single ``scalelens: error:`` line of ``stderr``; None if there are several or a traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    if len(errors) != 1 or "Traceback" in stderr:
        return None
    return errors[0]


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root on Linux)."""
    return sys.platform.startswith("linux") and os.geteuid() == 0


def mount_tmpfs(where: Path, size: str, read_only: bool = False) -> None:
    """Mount (or remount) a tmpfs of ``size`` at ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else ",rw")
    if os.path.ismount(where):
        subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)


def unmount(where: Path) -> None:
    """Unmount ``where`` if it is a mount point."""
    if os.path.ismount(where):
        subprocess.run(["umount", str(where)], check=False)
