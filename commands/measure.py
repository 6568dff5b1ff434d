"""``scalelens measure`` and ``scalelens analyze``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from scalelens.commands.capture import add_model_args, int_list, load_from_args
from scalelens.errors import ScalelensError
from scalelens.output import note
from scalelens.textfiles import output_path, user_path, user_source


def float_list(text: str) -> tuple[float, ...]:
    """Parse ``0.1,0.5`` (argparse type)."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    """Options of the analyses (shared by measure and sweep)."""
    p.add_argument("--analyses", default="all",
                   help="comma-separated: retrieval_heads, massive_activations, superposition, "
                        "text_dominance, information_capacity, activation_sparsity (default all)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="prompts per forward pass, in every analysis that runs the model (default 4)")
    g = p.add_argument_group("retrieval heads")
    g.add_argument("--retrieval-mode", choices=("fast", "reference"), default="fast")
    g.add_argument("--needles", default="auto", type=user_source,
                   help="auto, english, synthetic or a .jsonl file")
    g.add_argument("--haystack", type=user_source,
                   help="text file of haystack sentences")
    g.add_argument("--context-lengths", type=int_list,
                   help="haystack sizes in tokens, e.g. 300,700 (a repeated size counts once)")
    g.add_argument("--depths", type=float_list,
                   help="needle depths, e.g. 0.1,0.5,0.9 (default 10; a repeated depth counts once)")
    g.add_argument("--n-needles", type=int, default=None,
                   help="needles to use: the first N of the set or file (default 2 of a built-in set, "
                        "every needle of a file)")
    g.add_argument("--threshold", type=float, default=0.1, help="retrieval-head score bar")
    g.add_argument("--gate", type=float, default=0.5, help="ROUGE-1 recall a test must exceed")
    g.add_argument("--ablation-k", type=int, default=5, help="heads masked in the ablation (0: skip)")
    g.add_argument("--prompt-format", choices=("auto", "base", "chat"), default="auto",
                   help="needle prompts as plain text (base) or through the tokenizer's chat template "
                        "(chat); auto: chat when the tokenizer has a chat template")
    g.add_argument("--answer-prefix", default="Answer:",
                   help="text the assistant's turn starts with in the chat format ('' for none)")
    g = p.add_argument_group("massive activations")
    g.add_argument("--text", type=user_source,
                   help="text file for the probe sequences")
    g.add_argument("--n-sequences", type=int, default=10, help="probe sequences, 1 to 100,000 (default 10)")
    g.add_argument("--seq-length", type=int, default=None,
                   help="tokens per probe sequence, at most the model's context (default min(256, context))")
    g.add_argument("--ratio-threshold", type=float, default=100.0)
    g = p.add_argument_group("text dominance")
    g.add_argument("--dilutions", type=int_list, default=(1, 5, 10))
    g.add_argument("--base-tokens", type=int, default=None,
                   help="document tokens at dilution x1 (default: what fits the context beside needle and "
                        "question at the largest dilution; needed for a model that declares no context, "
                        "e.g. BLOOM)")
    g.add_argument("--dominance-prompts", type=int, default=8)
    g.add_argument("--dominance-modality", choices=("text", "embeds"), default="text",
                   help="O group: the document's tokens (text) or the document as a block of soft "
                        "tokens fed through inputs_embeds, a pseudo-modality (embeds)")
    g.add_argument("--soft-tokens", choices=("pooled", "random"), default="pooled",
                   help="embeds content: pooled document token embeddings, or seeded random vectors "
                        "at their norm (a content-free control)")
    g.add_argument("--pool", type=int, default=4,
                   help="document tokens per soft token (embeds); at most the haystack text's tokens")
    g = p.add_argument_group("information capacity")
    g.add_argument("--capacity-bias", type=float, default=-27.0,
                   help="numerator bias b of the information capacity (Yuan et al. 2025; -27 as their code)")


def _check_finite(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Refuse a NaN or infinite value of any option in ``names``."""
    for name in names:
        value = getattr(args, name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ScalelensError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")


# The analysis bars' meaningful ranges: (lowest, highest, why), None for no bound.
_BAR_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "threshold": (0.0, 1.0, "a head's retrieval score is the share of the needle it copied, 0 to 1"),
    "gate": (None, 1.0, "a test counts when its ROUGE-1 recall, 0 to 1, exceeds it; a negative gate "
                        "counts every test"),
    "ratio_threshold": (0.0, None, "a layer is flagged when its ratio max|h| / median|h|, at least 1, "
                                   "reaches it"),
}


def _check_bars(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Refuse a threshold, gate or ratio bar outside the range of the quantity it bars.

    Outside it, nothing can pass (``--gate 2``) or every head or layer passes for no reason
    (``--threshold -1``, ``--ratio-threshold -5``).
    """
    for name in names:
        value, (low, high, why) = getattr(args, name), _BAR_RANGES[name]
        if (low is not None and value < low) or (high is not None and value > high):
            limits = (f"{low:g} to {high:g}" if low is not None and high is not None
                      else f">= {low:g}" if low is not None else f"at most {high:g}")
            raise ScalelensError(f"--{name.replace('_', '-')} must be {limits} ({why}), got {value:g}")


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse out-of-range numeric options up front (not after the captures ran)."""
    if args.batch_size < 1:
        raise ScalelensError(f"batch size must be >= 1, got {args.batch_size}")
    _check_finite(args, ("threshold", "gate", "ratio_threshold", "capacity_bias"))
    _check_bars(args, tuple(_BAR_RANGES))
    if args.seq_length is not None and args.seq_length < 1:
        raise ScalelensError(f"--seq-length must be >= 1 (omit it for the default), got {args.seq_length}")
    if args.ablation_k < 0:
        raise ScalelensError(f"--ablation-k must be >= 0 (0 skips the ablation), got {args.ablation_k}")
    if args.context_lengths and min(args.context_lengths) < 1:
        raise ScalelensError(f"--context-lengths must be >= 1 token each, got {list(args.context_lengths)}")


def settings_from_args(args: argparse.Namespace):
    """Build MeasureSettings from parsed options."""
    from scalelens.measure.capacity import CapacitySettings
    from scalelens.measure.dominance import DominanceSettings
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import MeasureSettings
    from scalelens.probes.haystack import DEPTHS

    _check_numbers(args)
    retrieval = RetrievalSettings(
        mode=args.retrieval_mode, needles=args.needles, haystack=args.haystack,
        context_lengths=args.context_lengths, depths=args.depths or DEPTHS, n_needles=args.n_needles,
        threshold=args.threshold, gate=args.gate, ablation_k=args.ablation_k, batch_size=args.batch_size,
        prompt_format=args.prompt_format, answer_prefix=args.answer_prefix)
    massive = MassiveSettings(n_sequences=args.n_sequences, length=args.seq_length, text=args.text,
                              ratio_threshold=args.ratio_threshold, batch_size=args.batch_size)
    dominance = DominanceSettings(dilutions=args.dilutions, n_prompts=args.dominance_prompts,
                                  batch_size=args.batch_size, modality=args.dominance_modality,
                                  soft_tokens=args.soft_tokens, pool=args.pool, base_tokens=args.base_tokens)
    return MeasureSettings(retrieval, massive, dominance, CapacitySettings(bias=args.capacity_bias))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``measure`` and ``analyze``."""
    p = sub.add_parser("measure", help="capture and run the analyses on one model; write results.json")
    add_model_args(p)
    add_analysis_args(p)
    p.add_argument("--out", required=True, type=output_path, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="redo the captures already in --out (default: reuse complete ones, resume the rest)")
    p.set_defaults(func=run_measure)
    a = sub.add_parser("analyze", help="rerun analyses on existing captures (no model needed)")
    a.add_argument("path", type=user_path, help="a capture .h5 file or a measure output directory")
    a.add_argument("--analyses", default=None,
                   help="comma-separated analyses to run (default: every one the probes support); "
                        "one a file lacks the probes for is an error")
    a.add_argument("--threshold", type=float, default=None,
                   help="retrieval-head score bar (default: the measure's, from results.json beside the "
                        "capture, else 0.1)")
    a.add_argument("--gate", type=float, default=None,
                   help="ROUGE-1 recall a test must exceed (default: the measure's, else 0.5)")
    a.add_argument("--ratio-threshold", type=float, default=None,
                   help="massive activations' ratio-only bar (default: the measure's, else 100)")
    a.add_argument("--tokenizer", default=None, type=user_source,
                   help="tokenizer directory or hub id for the retrieval gate's words (default: the one "
                        "the capture recorded)")
    a.set_defaults(func=run_analyze)


def run_measure(args: argparse.Namespace) -> int:
    """Handle ``scalelens measure``."""
    from scalelens.cache.reader import CaptureFile
    from scalelens.commands.capture import warn_nonfinite
    from scalelens.measure.run import capture_files, measure, parse_analyses

    analyses = parse_analyses(args.analyses)
    settings = settings_from_args(args)
    check_out_dir(args.out)
    loaded = load_from_args(args)
    created = not args.out.exists()
    try:
        measure(loaded, analyses, args.out, settings, overwrite=args.overwrite)
    except BaseException:
        if created and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()  # failed before writing anything: leave no empty directory behind
        raise
    captures = sorted(p for p in capture_files(args.out, analyses, settings) if p.is_file())
    for path in captures:
        with CaptureFile(path) as f:
            warn_nonfinite(f)
    names = ", ".join(path.name for path in captures)
    print(f"wrote {args.out / 'results.json'}" + (f" (captures in {args.out}: {names})" if names else ""))
    return 0


def check_out_dir(out: Path, name: str = "output directory", give: str = "a directory") -> None:
    """Refuse an ``--out`` that is a file or lies under no writable directory (one clear line)."""
    if out.exists() and not out.is_dir():
        raise ScalelensError(f"--out {out} exists and is not a directory; give {give}")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ScalelensError(f"--out {out} lies under {parent}, which is a file; give {give}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScalelensError(f"{name} {parent} is not writable; choose another --out")


def _analyses_in() -> dict[str, list[str]]:
    """The probes each analysis reads from a capture file."""
    from scalelens.analyses import from_capture as fc

    return {"retrieval_heads": list(fc.RETRIEVAL_PROBES), "massive_activations": [fc.MASSIVE_PROBE],
            "text_dominance": [fc.DOMINANCE_PROBE]}


# The analysis settings ``analyze`` takes, and the group of results.json's settings that holds each.
ANALYZE_SETTINGS = {"threshold": "retrieval", "gate": "retrieval", "ratio_threshold": "massive"}


def analyze_settings(path: Path, given: dict[str, float | None]) -> dict[str, float]:
    """``given`` settings, each one left None taken from the measure that made ``path``.

    A capture in a ``measure`` (or sweep task) directory is analysed as that measure
    analysed it: its ``results.json`` records the threshold, gate and ratio threshold.
    Without one (or where it lacks a value), the defaults of ``measure``.
    """
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.retrieval import RetrievalSettings

    defaults = {"retrieval": RetrievalSettings(), "massive": MassiveSettings()}
    recorded = _recorded_settings(path.parent / "results.json")
    out = {}
    for name, group in ANALYZE_SETTINGS.items():
        value = given.get(name)
        if value is None:
            value = recorded.get(group, {}).get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            value = getattr(defaults[group], name)
        out[name] = float(value)
    return out


def _recorded_settings(results: Path) -> dict[str, Any]:
    """The ``settings`` a measure wrote into ``results``, or {} (no file, or unreadable)."""
    try:
        settings = json.loads(results.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def analyze_file(path: Path, threshold: float | None = None, gate: float | None = None,
                 analyses: tuple[str, ...] | None = None, tokenizer: Any = None,
                 ratio_threshold: float | None = None) -> dict[str, Any]:
    """Every analysis the probes in one capture file support (or exactly ``analyses``).

    ``threshold``, ``gate`` and ``ratio_threshold`` left None are the measure's own
    (:func:`analyze_settings`), so a rerun reproduces its results.json. ``tokenizer`` (an
    object) decodes the retrieval answers for the ROUGE-1 gate and names the massive
    activations' delimiter tokens; by default, the one the capture was made with, where it
    is on disk.

    An incomplete file (a capture still running or interrupted) is analysed over its
    finished prompts and says so in ``"incomplete"``. Probe values that are NaN or
    inf are listed under ``"nonfinite"`` (they are never averaged into a score
    silently: a layer holding one reports no ratio / score).
    """
    from scalelens.analyses import from_capture as fc
    from scalelens.cache.reader import CaptureFile
    from scalelens.measure.dominance import OTHER, TEXT

    s = analyze_settings(path, {"threshold": threshold, "gate": gate, "ratio_threshold": ratio_threshold})
    out: dict[str, Any] = {}
    with CaptureFile(path) as f:
        needs = _analyses_in()
        names = set(f.probe_names)
        wanted = analyses or tuple(a for a, probes in needs.items() if set(probes) <= names)
        if not wanted:
            raise ScalelensError(
                f"{path} holds none of the probes the analyses read (it holds: {', '.join(sorted(names))}); "
                f"capture with {fc.measure_command(f, 'all')}"
            )
        if f.n_done == 0:
            raise ScalelensError(f"{path} holds no finished prompts yet; wait for the capture or rerun it")
        runners = {
            "retrieval_heads": lambda: fc.retrieval_from_capture(
                f, s["threshold"], s["gate"], tokenizer).to_dict(),
            "massive_activations": lambda: fc.massive_from_capture(
                f, delimiter_ids=_delimiters_of(f, tokenizer), ratio_threshold=s["ratio_threshold"],
            ).to_dict(),
            "text_dominance": lambda: fc.dominance_from_capture(f, TEXT, OTHER).to_dict(),
        }
        for name in wanted:
            if name not in runners:
                raise ScalelensError(f"analysis {name} needs the model, not a capture file; run "
                                     f"{fc.measure_command(f, name)}")
            out[name] = runners[name]()
        bad = f.nonfinite(probes={p for a in wanted for p in needs.get(a, ())})  # only the probes read
        for hit in bad:
            print(f"warning: {path}: {hit.line()}", file=sys.stderr)
        for name in wanted:
            hits = [h.to_dict() for h in bad if h.probe in needs[name]]
            if hits:
                out[name]["nonfinite"] = hits
        if not f.complete:
            out["incomplete"] = {"n_done": f.n_done, "n_prompts": f.n_prompts}
    return out


def _delimiters_of(f: Any, tokenizer: Any) -> list[int]:
    """Delimiter token ids as ``measure`` counts them: of ``tokenizer``, else the capture's own."""
    from scalelens.analyses.from_capture import capture_tokenizer
    from scalelens.measure.massive import delimiter_ids

    tok = tokenizer if tokenizer is not None else capture_tokenizer(f)[0]
    return [] if tok is None else delimiter_ids(tok)


def run_analyze(args: argparse.Namespace) -> int:
    """Handle ``scalelens analyze``."""
    from scalelens.measure.run import parse_analyses

    analyses = parse_analyses(args.analyses) if args.analyses is not None else None  # "": refused
    given_bars = tuple(n for n in ANALYZE_SETTINGS if getattr(args, n) is not None)
    _check_finite(args, given_bars)
    _check_bars(args, given_bars)
    if not args.path.exists():
        raise ScalelensError(f"{args.path} does not exist; give a capture .h5 file or a measure directory")
    files = sorted(args.path.glob("*.h5")) if args.path.is_dir() else [args.path]
    if not files:
        raise ScalelensError(f"{args.path} holds no .h5 captures")
    tokenizer = None
    if args.tokenizer is not None:
        from scalelens.models.load import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    given = {n: getattr(args, n) for n in ANALYZE_SETTINGS}
    if args.path.is_dir():
        result = _analyze_dir(args.path, files, analyses, given, tokenizer)
    else:
        result = {f.name: analyze_file(f, analyses=analyses, tokenizer=tokenizer, **given) for f in files}
    print(json.dumps(result, indent=1, default=str, allow_nan=True))
    return 0


def _analyze_dir(path: Path, files: list[Path], analyses: tuple[str, ...] | None,
                 given: dict[str, float | None], tokenizer: Any = None) -> dict[str, Any]:
    """Analyse every capture in a directory that holds some analysis's probes (others: a note)."""
    result = {}
    for f in files:
        keep = _supported(f, analyses or tuple(_analyses_in()))
        if keep:
            result[f.name] = analyze_file(f, analyses=keep, tokenizer=tokenizer, **given)
        else:
            note(f"{f.name} holds none of the probes the analyses read; skipped")
    missing = [a for a in analyses or () if not any(a in r for r in result.values())]
    if missing:
        raise ScalelensError(f"no capture in {path} holds the probes {', '.join(missing)} needs; "
                             f"run `scalelens measure --analyses {','.join(missing)}`")
    if not result:
        raise ScalelensError(f"no capture in {path} holds the probes any analysis reads; "
                             "capture with `scalelens measure`")
    return result


def _supported(path: Path, analyses: tuple[str, ...]) -> tuple[str, ...] | None:
    """The subset of ``analyses`` whose probes ``path`` holds (None: skip the file)."""
    from scalelens.cache.reader import CaptureFile

    with CaptureFile(path) as f:
        needs, names = _analyses_in(), set(f.probe_names)
        keep = tuple(a for a in analyses if a in needs and set(needs[a]) <= names)
    return keep or None
