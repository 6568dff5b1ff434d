"""CUDA path check: GPU captures equal CPU captures, and the GPU loop makes no per-layer host syncs.

    python -m benchmarks.cuda_check [--json PATH]        (needs a CUDA device)

1. Agreement. One random-init model at the pythia-14m config (float32, TF32 off) captures
   the same prompts on the CPU and on the GPU with every probe kind: resid_post (full,
   float32), attention probabilities (full), the massive-activation summary, top-1
   attention rows at the last 4 positions and greedy predictions (logits top-1). Float
   datasets are compared by max |difference|; integer ones (positions, dims, tokens) by
   the share of equal entries (near-ties of a random model may flip a few).
2. Host syncs. ``torch.cuda.set_sync_debug_mode("warn")`` turns each synchronizing CUDA
   call into a warning; every warning raised during a capture, and during the bare forward
   pass of the same batches, is counted with the thread and the innermost scalelens frame
   that made it. The capture runs at two depths (6 and 12 layers): syncs that grow with
   depth would be per-layer syncs.

3. Embedding blocks: prompts whose document half is an ``EmbedBlock`` of the model's own
   token embeddings capture exactly what the plain tokens capture, with no extra host sync.

Exit status 1 if the captures disagree beyond tolerance, syncs grow with depth, or the
embedding-block path differs or syncs more.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.probes.embeds import token_embeddings
from scalelens.probes.prompts import EmbedBlock, Prompt
from scalelens.probes.spec import Positions, ProbeSpec, preset

from .pipelines import run_floor, scalelens_probes
from .results import check_outputs
from .workload import Loaded, build_model, make_prompts

REPO = str(Path(__file__).resolve().parents[1])
FLOAT_ATOL = 2e-3  # float32 on both devices; kernels differ (SDPA backends, reduction order)
INT_AGREE = 0.99


def probes() -> list[ProbeSpec]:
    """Every probe kind the capture engine implements."""
    last4 = Positions.parse("-4,-3,-2,-1")
    return [
        preset("resid", dtype="float32"),
        preset("attn"),
        preset("massive"),
        ProbeSpec("top1", "attn_pattern", reduction="top1", positions=last4),
        preset("predictions"),
    ]


def _on(loaded: Loaded, device: str) -> Loaded:
    return Loaded(copy.deepcopy(loaded.model).to(device).eval(), loaded.tokenizer, loaded.info)


def compare(a: Path, b: Path) -> dict[str, dict[str, float]]:
    """Per probe dataset: max |a - b| (floats) or the share of equal entries (integers)."""
    out: dict[str, dict[str, float]] = {}
    with CaptureFile(a) as fa, CaptureFile(b) as fb:
        for probe in fa.probe_names:
            for name in fa.datasets(probe):
                x, y = fa.read(name, probe).data, fb.read(name, probe).data
                key = f"{probe}/{name}"
                if x.shape != y.shape:
                    out[key] = {"shape_mismatch": 1.0}
                elif x.dtype.kind == "f":
                    both = np.isnan(x) & np.isnan(y)
                    diff = np.where(both, 0.0, np.abs(x.astype(np.float64) - y))
                    out[key] = {"max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
                                "nan_mismatch": float((np.isnan(x) != np.isnan(y)).sum())}
                else:
                    out[key] = {"equal_share": float((x == y).mean()) if x.size else 1.0}
    return out


def agreement(work: Path, n_prompts: int = 24, seq: int = 64, device: str = "cuda") -> dict[str, Any]:
    """CPU vs CUDA capture of every probe kind on one float32 model."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    base = build_model("14m", "cpu", torch.float32)
    prompts = make_prompts(n_prompts, seq, base.info.vocab_size, seed=1)
    files = {}
    for name, dev in (("cpu", "cpu"), ("other", device)):
        files[name] = capture(_on(base, dev), probes(), prompts.texts, work / f"{name}.h5",
                              batch_size=8, overwrite=True, progress=False)
    diffs = compare(files["cpu"], files["other"])
    bad = {k: v for k, v in diffs.items()
           if v.get("shape_mismatch") or v.get("nan_mismatch")
           or v.get("max_abs_diff", 0.0) > FLOAT_ATOL or v.get("equal_share", 1.0) < INT_AGREE}
    return {"datasets": diffs, "failures": bad, "ok": not bad}


class SyncLog:
    """Collects the synchronizing-CUDA-call warnings raised while active."""

    def __init__(self) -> None:
        self.where: Counter[str] = Counter()

    def _show(self, message: Any, category: Any, filename: str, lineno: int, *a: Any, **k: Any) -> None:
        text = str(message)
        if "synchroniz" not in text.lower():
            return
        frames = [f for f in traceback.extract_stack()[:-1]
                  if f.filename.startswith(REPO) and not f.filename.endswith("cuda_check.py")]
        site = f"{Path(frames[-1].filename).relative_to(REPO)}:{frames[-1].lineno} {frames[-1].name}" \
            if frames else f"{Path(filename).name}:{lineno}"
        self.where[f"{threading.current_thread().name}: {site}"] += 1

    def count(self, fn: Callable[[], object]) -> Counter[str]:
        """Run ``fn`` with sync warnings on; the sync sites it hit."""
        self.where = Counter()
        torch.cuda.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = self._show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
                torch.cuda.set_sync_debug_mode("default")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return self.where


def syncs(work: Path, n_prompts: int = 64, seq: int = 128, batch_size: int = 8) -> dict[str, Any]:
    """Host syncs per batch of a capture (summary and resid probes) and of the floor, at 6 and 12 layers."""
    out: dict[str, Any] = {}
    for layers in (6, 12):
        out.update(_syncs_at(layers, work, n_prompts, seq, batch_size))
    grows = any(out[f"12L/{s}"]["per_batch"] > out[f"6L/{s}"]["per_batch"] for s in ("summary", "resid"))
    return {"runs": out, "grows_with_depth": grows}


def _syncs_at(layers: int, work: Path, n_prompts: int, seq: int, batch_size: int) -> dict[str, Any]:
    loaded = _model(layers)
    prompts = make_prompts(n_prompts, seq, loaded.info.vocab_size, seed=2)
    n_batches = -(-n_prompts // batch_size)
    sets = {name: scalelens_probes(name) for name in ("summary", "resid")}
    runs: dict[str, Callable[[], object]] = {
        name: partial(capture, loaded, ps, prompts.texts, work / f"sync_{name}.h5", batch_size=batch_size,
                      overwrite=True, progress=False)
        for name, ps in sets.items()
    }
    runs["floor"] = partial(run_floor, loaded, prompts, batch_size)
    log, out = SyncLog(), {}
    for name, run in runs.items():
        run()  # warm-up: lazy imports, kernel selection
        where = log.count(run)
        out[f"{layers}L/{name}"] = {"per_batch": sum(where.values()) / n_batches, "sites": dict(where)}
    return out


def embeds(work: Path, device: str = "cuda", n_prompts: int = 16, seq: int = 64) -> dict[str, Any]:
    """Prompts whose second half is an ``EmbedBlock`` of the model's own token embeddings.

    The capture must equal the plain-token capture exactly (float32), and feeding the
    block through ``inputs_embeds`` must add no host sync per batch over the ids path.
    """
    loaded = _on(build_model("14m", "cpu", torch.float32), device)
    prompts = make_prompts(n_prompts, seq, loaded.info.vocab_size, seed=3)
    plain, blocks = [], []
    for text, ids, n in zip(prompts.texts, prompts.ids, prompts.lengths, strict=True):
        words, half = text.split(), int(n) // 2
        plain.append(Prompt((("text", " ".join(words[:half])), ("doc", " ".join(words[half:])))))
        own = EmbedBlock(token_embeddings(loaded.model, ids[half:n]))
        blocks.append(Prompt((("text", " ".join(words[:half])), ("doc", own))))
    ps = [preset("resid", dtype="float32"), preset("attn")]
    files, syncs_per_batch = {}, {}
    for name, prompt_set in (("ids", plain), ("embeds", blocks)):
        run = partial(capture, loaded, ps, prompt_set, work / f"embeds_{name}.h5", batch_size=8,
                      overwrite=True, progress=False)
        files[name] = run()
        if device == "cuda":
            syncs_per_batch[name] = sum(SyncLog().count(run).values()) / -(-n_prompts // 8)
    diffs = compare(files["ids"], files["embeds"])
    identical = all(v.get("max_abs_diff", 0.0) == 0.0 and v.get("equal_share", 1.0) == 1.0
                    and not v.get("shape_mismatch") for v in diffs.values())
    ok = identical and syncs_per_batch.get("embeds", 0) <= syncs_per_batch.get("ids", 0)
    return {"identical": identical, "syncs_per_batch": syncs_per_batch, "datasets": diffs, "ok": ok}


def _model(layers: int) -> Loaded:
    """pythia-14m's width at ``layers`` layers (float16, CUDA, random init)."""
    from transformers import AutoModelForCausalLM

    from scalelens.models.pythia import pythia_config

    small = build_model("14m", "cpu", torch.float16)
    cfg = pythia_config("14m")
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float16)
    return Loaded(model.to("cuda").eval(), small.tokenizer, dataclasses.replace(small.info, n_layers=layers))


def main(argv: list[str] | None = None) -> int:
    """Run both checks, print them, optionally write JSON; 1 if either fails."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cuda_check", description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cpu-dry-run", action="store_true", help="agreement check CPU vs CPU only (no GPU)")
    args = ap.parse_args(argv)
    check_outputs(ap, {"--json": args.json})
    if args.cpu_dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            dry = agreement(Path(tmp), device="cpu")
            dry["embeds"] = embeds(Path(tmp), device="cpu")
            dry["ok"] = dry["ok"] and dry["embeds"]["ok"]
        print(json.dumps(dry, indent=1))
        if args.json:
            args.json.write_text(json.dumps(dry, indent=1))
        return 0 if dry["ok"] else 1
    if not torch.cuda.is_available():
        print("benchmarks.cuda_check: torch sees no CUDA device", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "agreement": agreement(Path(tmp)), "syncs": syncs(Path(tmp)),
                  "embeds": embeds(Path(tmp))}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    ok = result["agreement"]["ok"] and not result["syncs"]["grows_with_depth"] and result["embeds"]["ok"]
    print("cuda_check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
