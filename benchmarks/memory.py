"""Peak memory of one capture in a fresh process (run by the harness once per prompt count).

``python -m benchmarks.memory --n 10000 --model-config pythia-14m --seq 16 --out X.h5``
captures the resid + summary probe sets (resid_post fp16, massive summary, top-1 rows)
of ``n`` short prompts and prints one JSON line: prompt count, seconds, peak RSS of the
process (``VmHWM``) and, on CUDA, peak GPU memory allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .pipelines import scalelens_probes
from .workload import build_model, config_name, make_prompts


def _peak_rss_kb() -> int:
    """This process's peak RSS: VmHWM (per address space, so fresh after exec); else ru_maxrss.

    ``ru_maxrss`` alone is wrong here: Linux carries it across ``execve``, so a child of a
    large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one capture and report its peak memory."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--model-config", default="pythia-14m")
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from scalelens.capture import capture

    dtype = torch.float16 if args.device == "cuda" else torch.float32
    loaded = build_model(config_name(args.model_config), args.device, dtype)
    prompts = make_prompts(args.n, args.seq, loaded.info.vocab_size, seed=1)
    probes = scalelens_probes("resid") + scalelens_probes("summary")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    capture(
        loaded, probes, prompts.texts, args.out, batch_size=args.batch_size, overwrite=True, progress=False
    )
    seconds = time.perf_counter() - t0
    peak_kb = _peak_rss_kb()
    out = {
        "n": args.n,
        "tokens": prompts.n_tokens,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "file_mb": args.out.stat().st_size / 2**20,
    }
    if args.device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.out.unlink(missing_ok=True)
    return out


def flat_memory(
    sizes: tuple[int, ...], directory: Path, model_config: str, seq: int, batch_size: int, device: str
) -> list[dict[str, Any]]:
    """Run :func:`child` in a fresh interpreter per prompt count, one after the other."""
    rows = []
    for n in sizes:
        cmd = [
            sys.executable,
            "-m",
            f"{__package__}.memory",
            "--n",
            str(n),
            "--model-config",
            model_config,
            "--seq",
            str(seq),
            "--batch-size",
            str(batch_size),
            "--device",
            device,
            "--out",
            str(directory / f"memory_{n}.h5"),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def _needle_prompts(n: int) -> list[Any]:
    """``n`` prompts segmented as the needle and dominance tests are (about 75 tokens each)."""
    import numpy as np

    from scalelens.probes.prompts import Prompt

    rng = np.random.default_rng(0)

    def words(k: int) -> str:
        return " ".join(f"t{i}" for i in rng.integers(2, 500, k)) + " "

    out = []
    for _ in range(n):
        answer, length = words(4), 50 + int(rng.integers(0, 20))
        depth = int(rng.integers(10, length - 10))
        out.append(Prompt((("haystack", words(depth)), ("needle", words(3)), ("needle_answer", answer),
                           ("haystack", words(length - depth)), ("question", words(6)),
                           ("answer", answer.strip()))))
    return out


def build_analysis_capture(n: int, out: Path) -> Path:
    """Capture ``n`` prompts with the probes ``scalelens analyze`` reads (see the module doc)."""
    from transformers import AutoModelForCausalLM

    from scalelens.capture import capture
    from scalelens.measure.dominance import dominance_probe
    from scalelens.measure.retrieval import retrieval_probes
    from scalelens.models.load import load_model
    from scalelens.models.testing import tiny_config
    from scalelens.probes.spec import preset

    from .workload import word_tokenizer

    torch.manual_seed(0)
    config = tiny_config("gpt_neox", 512, hidden_size=64, num_hidden_layers=6, num_attention_heads=8,
                         intermediate_size=128, max_position_embeddings=512)
    lm = load_model(AutoModelForCausalLM.from_config(config), tokenizer=word_tokenizer(512))
    probes = [dominance_probe(), *retrieval_probes(), preset("massive")]
    return capture(lm, probes, _needle_prompts(n), out, batch_size=32, overwrite=True, progress=False)


def analyze_child(path: Path, analysis: str) -> dict[str, Any]:
    """Run one analysis of ``scalelens analyze`` on ``path``: its peak RSS and seconds."""
    import warnings

    from scalelens.commands.measure import analyze_file
    from scalelens.measure import dominance  # noqa: F401 - imported by the analysis; not its memory

    warnings.simplefilter("ignore")  # no tokenizer on disk: the gate uses token ids, and says so
    imports = _peak_rss_kb() / 1024
    t0 = time.perf_counter()
    analyze_file(path, analyses=(analysis,))
    return {"analysis": analysis, "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(_peak_rss_kb() / 1024), "imports_mib": round(imports)}


ANALYZED = ("text_dominance", "massive_activations", "retrieval_heads")


def analysis_memory(n: int, directory: Path) -> list[dict[str, Any]]:
    """Build an ``n``-prompt capture, then run each analysis on it in a fresh interpreter."""
    path = build_analysis_capture(n, directory / f"analyze_{n}.h5")
    rows = []
    try:
        for analysis in ANALYZED:
            cmd = [sys.executable, "-m", f"{__package__}.memory", "--analyze-file", str(path), analysis]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"analyze child failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
            rows.append({"n": n, "file_mb": round(path.stat().st_size / 2**20),
                         **json.loads(done.stdout.strip().splitlines()[-1])})
    finally:
        path.unlink(missing_ok=True)
    return rows


def main(argv: list[str]) -> None:
    """``--analyze-file PATH ANALYSIS`` (a child), ``--analyze --n N --out DIR``, or a capture child."""
    if argv[:1] == ["--analyze-file"]:
        print(json.dumps(analyze_child(Path(argv[1]), argv[2])))
    elif argv[:1] == ["--analyze"]:
        ap = argparse.ArgumentParser(prog="python -m benchmarks.memory --analyze")
        ap.add_argument("--n", type=int, required=True)
        ap.add_argument("--out", type=Path, required=True, help="directory for the capture (deleted after)")
        args = ap.parse_args(argv[1:])
        args.out.mkdir(parents=True, exist_ok=True)
        for row in analysis_memory(args.n, args.out):
            print(json.dumps(row))
    else:
        print(json.dumps(child(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
