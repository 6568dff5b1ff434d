"""Time of one sweep task (one size x one checkpoint) at real Pythia configs, by stage.

    python -m benchmarks.task_time --sizes 160m,410m,1.4b --device cuda [--json PATH]

Per size: a random-init model at the Pythia config is saved as an HF directory (float16
safetensors, with a byte-level BPE tokenizer trained on the built-in text), then timed:

* ``load``: ``load_model(dir, device, dtype)`` (what a sweep task does per checkpoint);
* each analysis of ``measure`` with its default settings (``MeasureSettings()``):
  retrieval heads (fast mode), massive activations (+ intervention), superposition,
  text dominance (x1, x5, x10).

A random-init model never passes the retrieval recall gate, so the masking ablation
(which runs only on passing tests) is not in these times; the projection adds it from
the measured cost of greedy decoding. These are the per-task times the sweep projection
(``projection.py``) scales by 154 checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scalelens.errors import ScalelensError
from scalelens.measure.run import ANALYSES, MeasureSettings, measure
from scalelens.models import load_model
from scalelens.models.load import check_device_usable, resolve_dtype
from scalelens.models.pythia import pythia_config
from scalelens.models.tokenizer import train_tokenizer
from scalelens.probes.haystack import ENGLISH_HAYSTACK, ENGLISH_NEEDLES

from .results import check_outputs, run_main
from .workload import config_name, config_problem


def save_random(size: str, directory: Path, vocab: int = 4096) -> Path:
    """Random-init Pythia ``size`` (float16) and a BPE tokenizer saved in ``directory``."""
    docs = [ENGLISH_HAYSTACK] + [f"{n.needle} {n.question} {n.answer}" for n in ENGLISH_NEEDLES]
    tok = train_tokenizer(docs, vocab)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(pythia_config(size), dtype=torch.float16)
    model.save_pretrained(directory)
    del model
    tok.save_pretrained(directory)
    return directory


def time_task(directory: Path, device: str, dtype: str, out: Path) -> dict[str, float]:
    """Seconds of loading and of each analysis of one ``measure`` task.

    The tokenizer is passed in: its small vocabulary (a few hundred merges of the built-in
    text) is one ``load_model`` rightly refuses for a 50k-row embedding.
    """
    tokenizer = AutoTokenizer.from_pretrained(directory)
    times: dict[str, float] = {}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    loaded = load_model(directory, device=device, dtype=dtype, tokenizer=tokenizer)
    sync()
    times["load"] = time.perf_counter() - t0
    for name in ANALYSES:
        t0 = time.perf_counter()
        measure(loaded, (name,), out / name, MeasureSettings(), progress=False)
        sync()
        times[name] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    return times


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options, checked before any model is built (``ap.error``: one line, exit 2)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.task_time", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="160m,410m,1.4b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                    help="default float16 on CUDA, float32 on CPU")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    try:
        check_device_usable(args.device, resolve_dtype(args.dtype))
    except ScalelensError as e:
        ap.error(str(e))
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    problems = [config_problem(s) for s in args.sizes] or ["is empty; give e.g. 160m,410m"]
    if any(problems):
        ap.error(f"--sizes: {next(p for p in problems if p)}")
    check_outputs(ap, {"--json": args.json})
    return args


def main(argv: list[str] | None = None) -> int:
    """Time one task per size; print (and optionally write) JSON."""
    args = parse(argv)
    dtype = args.dtype
    results: dict[str, Any] = {"device": args.device, "dtype": dtype, "sizes": {}}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    for i, size in enumerate(config_name(s) for s in args.sizes):
        work = Path(tempfile.mkdtemp(prefix=f"scalelens-task-{size}-"))
        try:
            model_dir = save_random(size, work / "model")
            if i == 0:  # the first task pays for lazy imports and kernel selection
                time_task(model_dir, args.device, dtype, work / "warm")
            results["sizes"][size] = time_task(model_dir, args.device, dtype, work / "timed")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(size, json.dumps(results["sizes"][size]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "task_time"))
