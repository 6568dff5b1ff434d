"""Projection of a full sweep: Pythia 70m-12b x 154 checkpoints x the four analyses.

Work per (size, checkpoint) task comes from the default measurement settings
(``measure.run.MeasureSettings``), counted in forward FLOPs:

* retrieval heads (fast mode): 2 needles x 10 depths x 3 context lengths (661, 1322,
  1984 tokens at Pythia's 2048 context), one teacher-forced pass with top-1 attention
  rows and the LM head on every position (the ``logits`` probe); the masking ablation
  (3 conditions x 60 greedy generations of ~12 tokens: prefill + decode steps) runs only
  when tests pass the recall gate, i.e. on trained checkpoints;
* massive activations: 10 x 256 tokens captured + 3 x 10 x 256 tokens with logits
  (zero / mean intervention losses);
* superposition: weights only, the m x m Gram of the n x m unembedding (2 n m^2 FLOPs);
* text dominance: 3 dilutions (x1 x5 x10 of 198 tokens) x 8 prompts.

Forward FLOPs per token = 2 N_non-embedding + 2 n_layers T d (causal attention at mean
context T) + 2 V d where logits are computed. Prefill time = FLOPs / (device FLOP/s x
capture efficiency); decode steps are bandwidth- and launch-bound; checkpoint loading
reads 2 bytes per parameter.

Device rates: on the device the benchmark ran on they come from the measured floor
(achieved FLOP/s of the bare forward pass of the benchmark model) and the measured
scalelens/floor ratio. The H100 column is an ASSUMPTION wherever the H100 was not
measured: dense bf16 peak 989 TFLOP/s at a model-fraction utilisation that grows with
size, 3.35 TB/s HBM, ~0.15 ms per layer per decode step of HF eager overhead, 2 GB/s
checkpoint reads from local NVMe (hub downloads, ~7.6 TB in all, are not included).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelens.models.params import count_parameters
from scalelens.models.pythia import pythia_config

SWEEP_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
N_CHECKPOINTS = 154
CONTEXT_LENGTHS = (661, 1322, 1984)  # default_context_lengths(2048)
RETRIEVAL_OVERHEAD = 40  # needle, question and answer tokens around the haystack
ANSWER_TOKENS = 12

# Utilisation of H100 dense bf16 peak assumed for the forward pass, by size (not measured).
H100_PEAK_FLOPS = 989e12
H100_MFU = {
    "70m": 0.05,
    "160m": 0.10,
    "410m": 0.20,
    "1b": 0.35,
    "1.4b": 0.38,
    "2.8b": 0.42,
    "6.9b": 0.45,
    "12b": 0.45,
}
H100_HBM = 3.35e12
H100_LAYER_LAUNCH_S = 0.15e-3
NVME_BYTES_S = 2e9


@dataclass(frozen=True)
class Shape:
    """What the FLOP model needs of one Pythia size."""

    size: str
    n_layers: int
    d_model: int
    vocab: int
    n_params: int
    non_embedding: int

    @classmethod
    def of(cls, size: str) -> Shape:
        """Shape of Pythia ``size`` (parameter counts from the config, no weights)."""
        cfg = pythia_config(size)
        total, non_emb = count_parameters(cfg)
        return cls(size, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, total, non_emb)

    def flops_per_token(self, mean_ctx: float, logits: bool) -> float:
        """Forward FLOPs of one token at mean causal context ``mean_ctx``."""
        f = 2 * self.non_embedding + 2 * self.n_layers * mean_ctx * self.d_model
        return f + (2 * self.vocab * self.d_model if logits else 0)


def task_work(shape: Shape, trained: bool = True) -> dict[str, float]:
    """Forward FLOPs, decode steps and Gram FLOPs of one (size, checkpoint) task."""
    flops = 0.0
    per_len = 2 * 10  # needles x depths per context length
    for n in CONTEXT_LENGTHS:
        t = n + RETRIEVAL_OVERHEAD
        flops += per_len * t * shape.flops_per_token(t / 2, logits=True)  # fast retrieval
        if trained:  # ablation prefill, logits of the last position only
            flops += 3 * per_len * t * shape.flops_per_token(t / 2, logits=False)
    flops += 10 * 256 * shape.flops_per_token(128, logits=False)  # massive capture
    flops += 3 * 10 * 256 * shape.flops_per_token(128, logits=True)  # intervention losses
    for f in (1, 5, 10):
        t = 198 * f + RETRIEVAL_OVERHEAD
        flops += 8 * t * shape.flops_per_token(t / 2, logits=False)  # dominance
    decode = 3 * per_len * len(CONTEXT_LENGTHS) * ANSWER_TOKENS if trained else 0
    gram = 2 * shape.vocab * shape.d_model**2
    return {"flops": flops, "decode_steps": decode, "gram_flops": gram, "load_bytes": 2 * shape.n_params}


def h100_task_seconds(shape: Shape, capture_efficiency: float, trained: bool = True) -> dict[str, float]:
    """Seconds of one task on one H100 under the module's stated assumptions."""
    w = task_work(shape, trained)
    rate = H100_PEAK_FLOPS * H100_MFU[shape.size]
    compute = w["flops"] / (rate * capture_efficiency) + w["gram_flops"] / (0.5 * H100_PEAK_FLOPS)
    decode = w["decode_steps"] * (2 * shape.n_params / H100_HBM + shape.n_layers * H100_LAYER_LAUNCH_S)
    load = w["load_bytes"] / NVME_BYTES_S
    return {"compute": compute, "decode": decode, "load": load, "total": compute + decode + load}


def sweep(capture_efficiency: float, workers: tuple[int, ...] = (1, 8, 32, 64)) -> dict[str, Any]:
    """Per-size and total sweep hours on H100s (assumed rates, measured capture efficiency)."""
    rows = []
    total = 0.0
    longest = 0.0
    for size in SWEEP_SIZES:
        shape = Shape.of(size)
        t = h100_task_seconds(shape, capture_efficiency)
        hours = N_CHECKPOINTS * t["total"] / 3600
        total += hours
        longest = max(longest, t["total"])
        rows.append(
            {
                "size": size,
                "tflop_per_task": task_work(shape)["flops"] / 1e12,
                "compute_s": t["compute"],
                "decode_s": t["decode"],
                "load_s": t["load"],
                "task_s": t["total"],
                "hours_154": hours,
            }
        )
    ray = {n: max(total / n, longest / 3600) for n in workers}
    return {"rows": rows, "total_hours": total, "ray_hours": ray, "capture_efficiency": capture_efficiency}


def measured_rate(floor_tokens_s: float, shape: Shape, seq_mean: float) -> float:
    """Achieved FLOP/s of the measured floor (decoder stack, no LM head)."""
    return floor_tokens_s * shape.flops_per_token(seq_mean / 2, logits=False)


def markdown(result: dict[str, Any], device_note: str) -> str:
    """The projection as Markdown."""
    lines = [
        f"Projection ({device_note}); capture efficiency (scalelens / floor throughput) "
        f"{result['capture_efficiency']:.2f} from this run.",
        "",
        "| size | TFLOP / task | compute s | decode s | load s | task s | 154 checkpoints (h) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['tflop_per_task']:.1f} | {r['compute_s']:.1f} | {r['decode_s']:.1f} "
            f"| {r['load_s']:.1f} | {r['task_s']:.1f} | {r['hours_154']:.2f} |"
        )
    lines.append(f"| **all** | | | | | | **{result['total_hours']:.1f}** |")
    lines.append("")
    ray = ", ".join(f"{n} workers: {h:.1f} h" for n, h in result["ray_hours"].items())
    lines.append(f"On N Ray workers (one H100 each; 1,232 independent tasks, makespan ~ total / N): {ray}.")
    return "\n".join(lines)


# -- projection from measured per-task times (benchmarks/task_time.py) ----------------------
STAGES = ("retrieval_heads", "massive_activations", "superposition", "text_dominance")


def fit_power(sizes: list[str], seconds: list[float]) -> tuple[float, float]:
    """``(a, b)`` of ``seconds ~ a * N^b`` over non-embedding parameter counts (log-log least squares)."""
    x = np.log([Shape.of(s).non_embedding for s in sizes])
    b, log_a = np.polyfit(x, np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def measured_sweep(task_times: dict[str, Any], workers: tuple[int, ...] = (1, 8, 32, 64)) -> dict[str, Any]:
    """Sweep hours from measured per-task stage times, extrapolated to unmeasured sizes.

    ``task_times`` is the JSON of ``benchmarks.task_time`` (``sizes`` -> stage -> seconds).
    Below the largest measured size a stage follows the power law fitted over the measured
    sizes; above it, it grows linearly in non-embedding parameters from the largest one
    (the compute-bound limit: the measured exponents are below 1 because small models are
    launch-bound, and would underestimate the big ones).
    Loading is ``max(measured, 2 bytes/parameter at NVMe speed)`` (the measured load read
    a just-written file from the page cache); the retrieval ablation, which runs only on
    trained checkpoints and never ran on the random-init models, is the assumed decode model
    of :func:`h100_task_seconds`.
    """
    measured = task_times["sizes"]
    names = list(measured)
    fits = {st: fit_power(names, [measured[s][st] for s in names]) for st in STAGES}
    top = max(names, key=lambda s: Shape.of(s).non_embedding)
    rows, total, longest = [], 0.0, 0.0
    for size in SWEEP_SIZES:
        shape = Shape.of(size)
        if size in measured:
            stages = {st: measured[size][st] for st in STAGES}
        elif shape.non_embedding > Shape.of(top).non_embedding:
            scale = shape.non_embedding / Shape.of(top).non_embedding
            stages = {st: measured[top][st] * scale for st in STAGES}
        else:
            stages = {st: a * shape.non_embedding**b for st, (a, b) in fits.items()}
        load = max(measured.get(size, {}).get("load", 0.0), 2 * shape.n_params / NVME_BYTES_S)
        ablation = h100_task_seconds(shape, 1.0)["decode"]
        task = sum(stages.values()) + load + ablation
        total += N_CHECKPOINTS * task / 3600
        longest = max(longest, task)
        rows.append({"size": size, "measured": size in measured, **stages, "load": load,
                     "ablation": ablation, "task_s": task, "hours_154": N_CHECKPOINTS * task / 3600})
    ray = {n: max(total / n, longest / 3600) for n in workers}
    return {"rows": rows, "fits": fits, "total_hours": total, "ray_hours": ray,
            "device": task_times.get("gpu") or task_times.get("device")}


def measured_markdown(result: dict[str, Any]) -> str:
    """The measured projection as Markdown."""
    lines = [
        f"| size | measured on {result['device']}? | retrieval s | massive s | superposition s | dominance s "
        "| load s | ablation s (assumed) | task s | 154 checkpoints (h) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {'yes' if r['measured'] else 'extrapolated'} | {r['retrieval_heads']:.1f} "
            f"| {r['massive_activations']:.1f} | {r['superposition']:.1f} | {r['text_dominance']:.1f} "
            f"| {r['load']:.1f} | {r['ablation']:.1f} | {r['task_s']:.1f} | {r['hours_154']:.2f} |"
        )
    lines.append(f"| **all** | | | | | | | | | **{result['total_hours']:.1f}** |")
    fits = "; ".join(f"{st} ~ N^{b:.2f}" for st, (_, b) in result["fits"].items())
    fits += "; above the largest measured size: linear in N from it"
    ray = ", ".join(f"{n} workers: {h:.1f} h" for n, h in result["ray_hours"].items())
    lines += ["", f"Extrapolation over non-embedding parameters N: {fits}.",
              f"On N Ray workers (one GPU each; 1,232 independent tasks, makespan ~ max(total / N, "
              f"longest task)): {ray}."]
    return "\n".join(lines)


def check_task_times(doc: Any) -> None:
    """Raise ValueError naming what a task-time document lacks for a projection.

    It needs two or more known Pythia sizes (a power law through one point says nothing),
    each with a positive time for every stage.
    """
    sizes = doc.get("sizes") if isinstance(doc, dict) else None
    if not isinstance(sizes, dict) or len(sizes) < 2:
        raise ValueError("needs 'sizes' with two or more measured sizes (benchmarks.task_time writes it)")
    for size, stages in sizes.items():
        try:
            Shape.of(size)
        except Exception:  # noqa: BLE001 - any failure means the size is not a Pythia size
            raise ValueError(f"unknown size {size!r}; use Pythia sizes such as 160m, 1.4b") from None
        if not isinstance(stages, dict):
            raise ValueError(f"size {size}: needs a table of stage times, got {stages!r}")
        for st in (*STAGES, "load"):
            value = stages.get(st, 1.0 if st == "load" else None)  # load is optional
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"size {size}: stage {st} needs a positive time in seconds, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.projection TASK_TIME.json``: print the measured projection."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m benchmarks.projection", description=main.__doc__)
    ap.add_argument("task_times", type=Path, help="JSON written by python -m benchmarks.task_time")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.task_times.read_text())
        check_task_times(doc)
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        print(f"{ap.prog}: error: {args.task_times}: {e}", file=sys.stderr)
        return 2
    print(measured_markdown(measured_sweep(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
