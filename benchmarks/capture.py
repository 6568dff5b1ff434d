"""Capture benchmark: scalelens against TransformerLens, nnsight and the bare forward pass.

    python -m benchmarks.capture [--quick] [--device cpu|cuda] [--model-config pythia-70m]

In ONE process, on one random-init model at a real Pythia config and one prompt set, for
each probe set (``resid``, ``attn``, ``summary``; see ``pipelines.py``) it times:

1. ``floor``: the bare forward pass (SDPA, decoder stack, pre-tokenized batches);
2. ``transformer-lens``: ``TransformerBridge.run_with_cache(names_filter=...)`` + h5py,
   and ``transformer-lens (no LM head)`` that also stops before the final norm / LM head;
3. ``nnsight``: ``trace`` + ``nnsight.save`` + h5py, and ``nnsight (no LM head)`` with
   ``tracer.stop()`` after the last layer;
4. ``scalelens``: ``scalelens.capture`` from the prompt strings to HDF5;

plus ``floor + LM head`` (``model(...)`` with logits) for reference. Rounds rotate the
order; a ratio is the median over rounds of the per-round ratio against the floor run
in the same block. Peak RSS per run is exact (``/proc/self/clear_refs`` resets the
high-water mark); on CUDA the peak allocated GPU memory is reported too.

Then the goals that need their own measurement: peak memory of a fresh process at two
prompt counts (``memory.py``), HDF5 write speed against a raw write to the same disk
(``disk.py``), retrieval scoring fast vs reference (``retrieval.py``); and the sweep
projection (``projection.py``). Results go to stdout and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import projection
from .pipelines import (
    PROBE_SETS,
    NNsightPipeline,
    TransformerLensPipeline,
    run_floor,
    run_scalelens,
)
from .results import check_outputs, loadavg, machine, record
from .workload import Loaded, Prompts, build_model, config_name, config_problem, make_prompts

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FLOOR, FLOOR_HEAD, SCALELENS = "floor", "floor + LM head", "scalelens"
TL, TL_STOP, NN, NN_STOP = (
    "transformer-lens",
    "transformer-lens (no LM head)",
    "nnsight",
    "nnsight (no LM head)",
)
COMPETITORS = (TL, TL_STOP, NN, NN_STOP)


GOAL_NAMES = ("memory", "disk", "retrieval")
MIN_SEQ = 8  # prompt lengths lie in [3/4 seq, seq]; the summary probes read several positions


def _count(text: str) -> int:
    """A positive integer, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, for argparse."""
    return tuple(_count(t.strip()) for t in text.split(","))


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks every size for a smoke run."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model-config", default="pythia-70m", help="pythia-14m ... pythia-12b")
    ap.add_argument("--n-prompts", type=_count, help="default 128 (quick: 16)")
    ap.add_argument(
        "--seq", type=_count,
        help="longest prompt in tokens, lengths in [3/4 seq, seq]; default 128 (quick: 32)",
    )
    ap.add_argument("--batch-size", type=_count, default=8)
    ap.add_argument("--threads", type=_count, default=None,
                    help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=_count, help="rounds; default 3 (quick: 1)")
    ap.add_argument("--chunk", type=_count, help="prompts per timed run (default 4 batches)")
    ap.add_argument(
        "--sets", default=",".join(PROBE_SETS), help="probe sets to time ('' for the goals alone)"
    )
    ap.add_argument(
        "--no-stop-variants",
        action="store_true",
        help="skip the TransformerLens / nnsight variants that stop before the LM head",
    )
    ap.add_argument("--goals", default="memory,disk,retrieval", help="extra goal measurements ('' for none)")
    ap.add_argument(
        "--retrieval-model", default="tiny", help="tiny (2x64x4 GPT-NeoX) or a Pythia config (pythia-160m)"
    )
    ap.add_argument("--retrieval-lengths", type=_counts, default=(256, 512),
                    help="needle context lengths in tokens")
    ap.add_argument("--memory-sizes", type=_counts, default=None,
                    help="prompt counts, default 1000,10000 (quick: 100,300)")
    ap.add_argument("--memory-model", default="pythia-14m")
    ap.add_argument("--disk-mb", type=float, default=None, help="MiB per file, default 512 (quick: 32)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where files are written (default: a temp dir)"
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="Markdown ledger to append to")
    ap.add_argument("--no-record", action="store_true", help="print only; do not touch the ledger")
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers as JSON here")
    args = ap.parse_args(argv)
    quick = args.quick
    args.n_prompts = args.n_prompts or (16 if quick else 128)
    args.seq = args.seq or (32 if quick else 128)
    args.repeats = args.repeats or (1 if quick else 3)
    args.chunk = args.chunk or 4 * args.batch_size
    args.memory_sizes = args.memory_sizes or ((100, 300) if quick else (1000, 10000))
    args.disk_mb = args.disk_mb or (32 if quick else 512)
    args.sets = tuple(s for s in args.sets.split(",") if s)
    args.goals = tuple(g for g in args.goals.split(",") if g)
    args.notes = []
    bad = [s for s in args.sets if s not in PROBE_SETS]
    if bad:
        ap.error(f"unknown probe set(s) {bad}; choose from {PROBE_SETS}")
    bad = [g for g in args.goals if g not in GOAL_NAMES]
    if bad:
        ap.error(f"unknown goal(s) {bad}; choose from {GOAL_NAMES}")
    if args.seq < MIN_SEQ:
        ap.error(f"--seq must be at least {MIN_SEQ}, got {args.seq}")
    if args.disk_mb <= 0:
        ap.error(f"--disk-mb must be positive, got {args.disk_mb}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    _check_models(ap, args)
    check_outputs(ap, {"--json": args.json, "--results": None if args.no_record else args.results})
    return args


def _check_models(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``ap.error`` for a model flag naming no Pythia config (it raised at the first model built)."""
    models = {"--model-config": args.model_config, "--memory-model": args.memory_model,
              "--retrieval-model": None if args.retrieval_model == "tiny" else args.retrieval_model}
    for flag, name in models.items():
        problem = config_problem(name) if name is not None else None
        if problem:
            ap.error(f"{flag}: {problem}" + (" or tiny" if flag == "--retrieval-model" else ""))


# -- measuring one run --------------------------------------------------------------------
def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def timed(fn: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Wall and CPU seconds of ``fn``, its peak RSS above the start, and peak GPU memory."""
    gc.collect()
    exact = _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        gpu0 = torch.cuda.memory_allocated(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = {
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "peak_rss_mb": (_status_kb("VmHWM") - rss0) / 1024 if exact else float("nan"),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = (torch.cuda.max_memory_allocated(device) - gpu0) / 2**20
    return out


# -- the timed pipelines ----------------------------------------------------------------
Runner = Callable[[Prompts, str], None]


def runners(loaded: Loaded, args: argparse.Namespace, work: Path) -> dict[str, Runner]:
    """Pipeline name -> run(prompts, probe_set) writing into ``work``."""
    bs = args.batch_size
    tl = TransformerLensPipeline(loaded)
    nn = NNsightPipeline(loaded)
    out: dict[str, Runner] = {
        FLOOR: lambda p, s: run_floor(loaded, p, bs),
        FLOOR_HEAD: lambda p, s: run_floor(loaded, p, bs, lm_head=True),
        SCALELENS: lambda p, s: run_scalelens(loaded, p, bs, s, work / f"scalelens_{s}.h5"),
        TL: lambda p, s: tl.run(p, bs, s, work / f"tl_{s}.h5"),
        NN: lambda p, s: nn.run(p, bs, s, work / f"nnsight_{s}.h5"),
    }
    if not args.no_stop_variants:
        tl_stop = TransformerLensPipeline(loaded, stop_early=True)
        nn_stop = NNsightPipeline(loaded, stop_early=True)
        out[TL_STOP] = lambda p, s: tl_stop.run(p, bs, s, work / f"tl_stop_{s}.h5")
        out[NN_STOP] = lambda p, s: nn_stop.run(p, bs, s, work / f"nnsight_stop_{s}.h5")
    return out


class CutOff(Exception):
    """The run was told to stop (SIGTERM, e.g. from ``timeout``): record what is complete."""


_STOP_REQUESTED: list[int] = []


def _cut_off(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise ``CutOff`` now, and again at the next run boundary in case
    this one is swallowed (a signal can land in a weakref callback, where exceptions are
    only printed)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills
    _STOP_REQUESTED.append(signum)
    raise CutOff(f"signal {signum}")


def _check_stop() -> None:
    if _STOP_REQUESTED:
        raise CutOff(f"signal {_STOP_REQUESTED[0]}")


def time_pipelines(loaded: Loaded, prompts: Prompts, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every (probe set, pipeline) over ``args.repeats`` rounds, each bracketed by floor runs.

    Other jobs on a shared machine change its speed from minute to minute, so pipelines are
    timed on chunks of ``args.chunk`` prompts, in the order floor, A, B, floor, C, D, floor, ...
    (rotated per chunk), and each run is compared with the mean of the floor runs just before
    and just after it, seconds apart. A ``CutOff`` keeps every (round, probe set) block that
    finished and notes the cut in ``args.notes``.
    """
    device = loaded.model.device
    run = runners(loaded, args, work)
    n = len(prompts.texts)
    chunks = [prompts.part(a, min(n, a + args.chunk)) for a in range(0, n, args.chunk)]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        _warm_up(run, prompts.part(0, 2 * args.batch_size), args.sets, work)
        for r in range(args.repeats):
            for s in args.sets:
                block = _time_block(run, chunks, r, s, args, work, device)
                for name, ms in block.items():
                    samples.setdefault((s, name), []).extend(ms)
                _print_round(block, r, s, args)
    except CutOff:
        rounds = {s: len({m["round"] for m in samples.get((s, FLOOR), [])}) for s in args.sets}
        args.notes.append(f"timing cut off (SIGTERM); complete rounds per set: {rounds}")
        print(f"  {args.notes[-1]}", flush=True)
    return _summarise(samples, prompts.n_tokens)


def _warm_up(run: dict[str, Runner], warm: Prompts, sets: tuple[str, ...], work: Path) -> None:
    """Every pipeline once per set: first calls pay for lazy imports, kernel selection, tracing."""
    t0 = time.perf_counter()
    for s in sets:
        for fn in run.values():
            _check_stop()
            fn(warm, s)
    _clean(work)
    print(f"  warm-up (every pipeline once per set): {time.perf_counter() - t0:.1f}s", flush=True)


def _print_round(block: dict[str, list[dict[str, float]]], r: int, s: str, args: argparse.Namespace) -> None:
    """One line per (round, set): seconds of one pass over the prompts per pipeline."""
    totals = ", ".join(f"{name} {_round_seconds(ms, r):.1f}s" for name, ms in block.items())
    print(f"  round {r + 1}/{args.repeats} {s}: {totals}", flush=True)


def _time_block(
    run: dict[str, Runner],
    chunks: list[Prompts],
    r: int,
    s: str,
    args: argparse.Namespace,
    work: Path,
    device: torch.device,
) -> dict[str, list[dict[str, float]]]:
    """Round ``r`` of probe set ``s``: every chunk, every pipeline, bracketed by floor runs."""
    names = [x for x in run if x != FLOOR]
    block: dict[str, list[dict[str, float]]] = {}
    for c, chunk in enumerate(chunks):
        rot = (r * len(chunks) + c) % len(names)
        order = [x for x in names[rot:] + names[:rot] if x != FLOOR_HEAD or s == args.sets[0]]
        seq = [FLOOR]
        for i, name in enumerate(order):
            seq.append(name)
            if i % 2 == 1 or i == len(order) - 1:
                seq.append(FLOOR)
        done = []
        for name in seq:
            _check_stop()
            m = timed(partial(run[name], chunk, s), device)
            m["bytes"] = sum(p.stat().st_size for p in work.glob("*.h5"))
            done.append((name, m))
            _clean(work)
        floors = [i for i, (x, _) in enumerate(done) if x == FLOOR]
        for i, (name, m) in enumerate(done):
            before = max(j for j in floors if j <= i)
            after = min(j for j in floors if j >= i)
            m["ref_wall"] = (done[before][1]["wall"] + done[after][1]["wall"]) / 2
            m["ref_cpu"] = (done[before][1]["cpu"] + done[after][1]["cpu"]) / 2
            m["round"], m["chunk"] = r, c
            block.setdefault(name, []).append(m)
    return block


def _clean(work: Path) -> None:
    for p in work.glob("*.h5"):
        p.unlink()


def _summarise(
    samples: dict[tuple[str, str], list[dict[str, float]]], tokens: int
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for (s, name), ms in samples.items():
        per_round = [_round_seconds(ms, r) for r in sorted({int(m["round"]) for m in ms})]
        ratios = [m["ref_wall"] / m["wall"] for m in ms]
        row = {
            "set": s,
            "pipeline": name,
            "tokens_s": tokens / statistics.median(per_round),
            "x_floor": statistics.median(ratios),
            "x_floor_lo": _quantile(ratios, 0.1),
            "x_floor_hi": _quantile(ratios, 0.9),
            "x_floor_cpu": statistics.median([m["ref_cpu"] / m["cpu"] for m in ms]),
            "x_floor_total": sum(m["ref_wall"] for m in ms) / sum(m["wall"] for m in ms),
            "n_samples": len(ms),
            "round_seconds": per_round,
            "peak_rss_mb": max(m["peak_rss_mb"] for m in ms),
            "written_mb_s": sum(m["bytes"] for m in ms) / sum(m["wall"] for m in ms) / 1e6,
        }
        if "peak_gpu_mb" in ms[0]:
            row["peak_gpu_mb"] = max(m["peak_gpu_mb"] for m in ms)
        if name in COMPETITORS and (s, SCALELENS) in samples:
            sl = samples[(s, SCALELENS)]  # same chunks, same rounds, same order of samples
            row["scalelens_speedup"] = statistics.median(
                [
                    (x["ref_wall"] / x["wall"]) / (m["ref_wall"] / m["wall"])
                    for m, x in zip(ms, sl, strict=True)
                ]
            )
        rows[f"{s}/{name}"] = row
    return rows


def _round_seconds(ms: list[dict[str, float]], r: int) -> float:
    """Seconds of one pass over all prompts in round ``r`` (the floor runs several times per chunk)."""
    per_chunk: dict[float, list[float]] = {}
    for m in ms:
        if m["round"] == r:
            per_chunk.setdefault(m["chunk"], []).append(m["wall"])
    return sum(statistics.mean(w) for w in per_chunk.values())


def _quantile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, round(q * (len(ys) - 1))))]


# -- report -------------------------------------------------------------------------------
ORDER = (FLOOR, FLOOR_HEAD, SCALELENS, TL, TL_STOP, NN, NN_STOP)


def table(rows: dict[str, Any], gpu: bool) -> str:
    """The main table as Markdown."""
    head = (
        "| probe set | pipeline | tokens/s | x floor: median [p10, p90] of bracketed runs "
        "| x floor, CPU time "
        "| scalelens speed-up over it | HDF5 written (MB/s) | peak RSS above start (MB) |"
        + (" peak GPU (MB) |" if gpu else "")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in PROBE_SETS:
        for name in ORDER:
            r = rows.get(f"{s}/{name}")
            if r is None:
                continue
            speed = f"{r['scalelens_speedup']:.2f}x" if "scalelens_speedup" in r else ""
            line = (
                f"| {s} | {name} | {r['tokens_s']:,.0f} | {r['x_floor']:.2f} [{r['x_floor_lo']:.2f}, "
                f"{r['x_floor_hi']:.2f}] | {r['x_floor_cpu']:.2f} | {speed} "
                f"| {r['written_mb_s']:,.0f} | {r['peak_rss_mb']:,.0f} |"
            )
            if gpu:
                line += f" {r.get('peak_gpu_mb', float('nan')):,.0f} |"
            lines.append(line)
    return "\n".join(lines)


def goals(
    rows: dict[str, Any], extra: dict[str, Any], args: argparse.Namespace
) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) per goal."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    for s in ("resid", "summary"):
        r = rows.get(f"{s}/{SCALELENS}")
        if r:
            out.append(
                (f"scalelens >= 0.8x floor ({s})", f"{r['x_floor']:.2f}x", verdict(r["x_floor"] >= 0.8))
            )
    for s in args.sets:
        for name in COMPETITORS:
            r = rows.get(f"{s}/{name}")
            if r and "scalelens_speedup" in r:
                sp = r["scalelens_speedup"]
                out.append((f"scalelens >= 2x {name} ({s})", f"{sp:.2f}x", verdict(sp >= 2)))
    if "memory" in extra:
        m = extra["memory"]
        lo, hi = m[0], m[-1]
        growth = hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1
        out.append(
            (
                f"peak RSS flat: {lo['n']:,} vs {hi['n']:,} prompts within 10%",
                f"{lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB ({growth:+.1%})",
                verdict(abs(growth) <= 0.10),
            )
        )
        if "peak_gpu_mb" in lo:
            g = hi["peak_gpu_mb"] / lo["peak_gpu_mb"] - 1
            out.append(
                (
                    "peak GPU memory flat within 10%",
                    f"{lo['peak_gpu_mb']:.0f} -> {hi['peak_gpu_mb']:.0f} MB ({g:+.1%})",
                    verdict(abs(g) <= 0.10),
                )
            )
    if "disk" in extra:
        d = extra["disk"]
        out.append(
            (
                "HDF5 write >= 50% of raw sequential write (fsync both)",
                f"{d['hdf5_mb_s']:.0f} vs {d['raw_mb_s']:.0f} MB/s ({d['ratio']:.0%})",
                verdict(d["ratio"] >= 0.5),
            )
        )
    if "retrieval" in extra:
        rr = extra["retrieval"]
        out.append(
            (
                "retrieval fast >= 10x reference",
                f"{rr['ratio']:.1f}x ({rr['fast_s']:.2f} s vs {rr['reference_s']:.2f} s)",
                verdict(rr["ratio"] >= 10),
            )
        )
        eq = rr["scores_equal_where_greedy_equals_needle"]
        out.append(
            (
                "equal scores where greedy answer == needle",
                f"{rr['greedy_equals_needle']} such tests of {rr['n_tests']}; step-0 top-1 rows and tokens "
                f"agree in {rr['step0_agree']}/{rr['n_tests']}",
                verdict(eq),
            )
        )
    return out


def run_goals(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The goal measurements that need their own setup; a ``CutOff`` keeps those done."""
    extra: dict[str, Any] = {}
    try:
        _goals(args, work, extra)
    except CutOff:
        args.notes.append(f"goal measurements cut off (SIGTERM); done: {sorted(extra) or 'none'}")
        print(f"  {args.notes[-1]}", flush=True)
    return extra


def _goals(args: argparse.Namespace, work: Path, extra: dict[str, Any]) -> None:
    from .disk import write_speed
    from .memory import flat_memory
    from .retrieval import fast_vs_reference, retrieval_model

    _check_stop()
    if "memory" in args.goals:
        print(f"memory: fresh process per prompt count {args.memory_sizes}", flush=True)
        extra["memory"] = flat_memory(args.memory_sizes, work, args.memory_model, 16, 32, args.device)
    _check_stop()
    if "disk" in args.goals:
        print(f"disk: HDF5 writer vs raw write, {args.disk_mb:.0f} MiB", flush=True)
        cfg = projection.Shape.of(config_name(args.model_config))
        extra["disk"] = write_speed(
            work,
            (cfg.n_layers, args.seq, cfg.d_model),
            args.batch_size,
            args.disk_mb,
            repeats=3 if args.quick else 5,
        )
    _check_stop()
    if "retrieval" in args.goals:
        from scalelens.measure.retrieval import RetrievalSettings

        print(f"retrieval: fast vs reference on {args.retrieval_model}", flush=True)
        loaded = retrieval_model(args.device, args.retrieval_model)
        lengths = (128,) if args.quick else args.retrieval_lengths
        depths = (0.0, 0.5, 1.0) if args.quick else tuple(i / 9 for i in range(10))
        settings = RetrievalSettings(
            context_lengths=lengths, depths=depths, n_needles=2, batch_size=4, ablation_k=0
        )
        fast_vs_reference(
            loaded,
            RetrievalSettings(context_lengths=(64,), depths=(0.5,), n_needles=1, ablation_k=0),
            work,
            repeats=1,
        )  # warm-up
        result = fast_vs_reference(loaded, settings, work, repeats=1 if args.quick else 3)
        extra["retrieval"] = {**result, "model": loaded.info.name}


def _summary_row(
    env: dict[str, Any], args: argparse.Namespace, rows: dict[str, Any], extra: dict[str, Any], command: str
) -> str:
    def x(key: str) -> str:
        r = rows.get(key)
        return f"{r['x_floor']:.2f}" if r else "-"

    speedups = []
    for s in PROBE_SETS:
        sp = [rows[f"{s}/{n}"]["scalelens_speedup"] for n in COMPETITORS if f"{s}/{n}" in rows]
        speedups.append(f"{min(sp):.2f}" if sp else "-")
    mem = "-"
    if "memory" in extra:
        lo, hi = extra["memory"][0], extra["memory"][-1]
        mem = f"{hi['peak_rss_mb'] / lo['peak_rss_mb'] - 1:+.1%}"
    disk = f"{extra['disk']['ratio']:.0%}" if "disk" in extra else "-"
    ret = f"{extra['retrieval']['ratio']:.1f}x" if "retrieval" in extra else "-"
    device = env.get("gpu") or env["cpu"]
    return (
        f"| {env['date']} | {device} ({env['cores']} cores) | {args.model_config} "
        f"| {f'{args.n_prompts} x <={args.seq}' if rows else '-'} "
        f"| {x(f'resid/{SCALELENS}')} | {x(f'summary/{SCALELENS}')} | {x(f'attn/{SCALELENS}')} "
        f"| {', '.join(speedups)} | {mem} | {disk} | {ret} | `{command}` |"
    )


def report(
    env: dict[str, Any],
    args: argparse.Namespace,
    rows: dict[str, Any],
    extra: dict[str, Any],
    command: str,
    load: tuple[str, str],
) -> str:
    """The run's Markdown section."""
    gpu = args.device == "cuda"
    versions = ", ".join(
        f"{k} {env[k]}"
        for k in ("python", "torch", "transformers", "transformer_lens", "nnsight", "h5py", "hdf5", "numpy")
    )
    lines = [
        f"## {env['date']} UTC: {args.model_config} on {env.get('gpu') or args.device}",
        "",
        f"- command: `{command}`",
        f"- machine: {env['cpu']}, {env['cores']} cores, {env.get('ram_gib', '?')} GiB RAM"
        + (f", GPU {env['gpu']} (CUDA {env['cuda']})" if gpu else "")
        + f"; torch threads {env['torch_threads']}; load average at start {load[0]}, at end {load[1]}",
        f"- versions: {versions}; scalelens commit {env['commit']}",
        *([f"- workload: {args.n_prompts} prompts of {args.seq * 3 // 4}-{args.seq} tokens (random words, "
           f"right-padded per batch), batch size {args.batch_size}, {args.repeats} round(s); "
           f"float32 on CPU, float16 on CUDA"] if rows else []),
        *[f"- {n}" for n in args.notes],
        "",
        *([table(rows, gpu), ""] if rows else []),
        "| goal | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goals(rows, extra, args)]
    if "memory" in extra:
        lines += [
            "",
            "Memory runs (fresh process each, resid + summary probes, "
            f"{args.memory_model}, prompts of 12-16 tokens, batch 32): "
            + "; ".join(
                f"{m['n']:,} prompts: peak RSS {m['peak_rss_mb']:.0f} MB, {m['seconds']:.1f} s, "
                f"file {m['file_mb']:.0f} MB"
                for m in extra["memory"]
            ),
        ]
    if "disk" in extra:
        d = extra["disk"]
        lines += [
            "",
            f"Disk: {d['size_mb']:.0f} MiB per file in {d['batch_mb']:.1f} MiB batches; "
            f"HDF5 runs {', '.join(f'{v:.0f}' for v in d['hdf5_all'])} MB/s, raw runs "
            f"{', '.join(f'{v:.0f}' for v in d['raw_all'])} MB/s; fsync: {d['fsync']}.",
        ]
    if "retrieval" in extra:
        rr = extra["retrieval"]
        lines += [
            "",
            f"Retrieval: {rr['n_tests']} needle tests (contexts {rr['context_lengths']}, "
            f"{rr['answer_tokens_mean']:.1f} answer tokens on average) on a random {rr['model']}; "
            f"fast runs {', '.join(f'{v:.2f}' for v in rr['fast_all'])} s, reference runs "
            f"{', '.join(f'{v:.2f}' for v in rr['reference_all'])} s.",
        ]
    if "projection" in extra:
        lines += ["", extra["projection"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; append them to the ledger unless ``--no-record``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks.capture" + ("" if not argv else " " + shlex.join(argv))
    env = machine(args.device)
    load_start = loadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scalelens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _cut_off)
    rows: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        rows, extra = _measure(args, work)
    except CutOff:  # before the timing loop took over the signal: nothing measured
        args.notes.append("cut off (SIGTERM) before anything was measured")
        print(f"  {args.notes[-1]}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    sl = [rows[f"{s}/{SCALELENS}"]["x_floor"] for s in ("resid", "summary") if f"{s}/{SCALELENS}" in rows]
    if sl:  # the projection scales by the capture efficiency this run measured
        note = (
            "H100 rates ASSUMED (not measured in this run)"
            if args.device != "cuda"
            else f"H100 rates assumed; this run measured {env.get('gpu')}"
        )
        extra["projection"] = projection.markdown(projection.sweep(min(1.0, statistics.median(sl))), note)
    section = report(env, args, rows, extra, command, (load_start, loadavg()))
    print()
    print(section)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows, "extra": extra}, indent=1, default=str))
    if args.no_record:
        return 0
    if rows or extra:
        record(args.results, _summary_row(env, args, rows, extra, command), section)
        print(f"\nrecorded in {args.results}")
    else:
        print(f"\nnothing measured: {args.results} left as it was")
    return 0


def _measure(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the model, time the probe sets, then measure the goals: (rows, extra)."""
    t0 = time.perf_counter()
    print(f"building {args.model_config} on {args.device}", flush=True)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    loaded = build_model(config_name(args.model_config), args.device, dtype)
    prompts = make_prompts(args.n_prompts, args.seq, loaded.info.vocab_size)
    print(
        f"{args.model_config}: {prompts.n_tokens:,} tokens in {args.n_prompts} prompts; sets {args.sets}",
        flush=True,
    )
    print(f"  model built: {time.perf_counter() - t0:.1f}s", flush=True)
    rows = time_pipelines(loaded, prompts, args, work) if args.sets else {}
    del loaded
    gc.collect()
    extra = run_goals(args, work) if not args.notes else {}  # notes: the timing was cut off
    return rows, extra


if __name__ == "__main__":
    raise SystemExit(main())
