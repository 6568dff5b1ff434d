"""Adapters: run each analysis on a capture file (no model needed)."""

from __future__ import annotations

import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.analyses.massive import MassiveResult, ResidualSummary, massive_activations
from scalelens.analyses.retrieval import NeedleTest, RetrievalResult, retrieval_scores
from scalelens.analyses.text_dominance import TextDominanceResult, text_dominance
from scalelens.cache.reader import CaptureFile
from scalelens.errors import ScalelensError, ScalelensWarning

RETRIEVAL_PROBES = ("retrieval_top1", "retrieval_pred")
MASSIVE_PROBE = "massive"
DOMINANCE_PROBE = "dominance_rows"


# The datasets each analysis reads from its probe: a probe of that name holding others (a
# full ``ProbeSpec("massive", "resid_post")``) is not the one the analysis needs.
_READS = {
    MASSIVE_PROBE: ("top_values", "top_pos", "top_dim", "top_token", "median_abs"),
    RETRIEVAL_PROBES[0]: ("top1_key",),
    RETRIEVAL_PROBES[1]: ("top1_token",),
    DOMINANCE_PROBE: ("values", "query_pos"),
}


def _need(f: CaptureFile, probe: str, analysis: str) -> None:
    """Refuse a capture without ``probe``, or whose ``probe`` lacks the datasets ``analysis`` reads."""
    if probe not in f.probe_names:
        raise ScalelensError(
            f"{f.path} lacks probe {probe!r} needed by {analysis}; capture it with "
            f"{measure_command(f, analysis)}"
        )
    held = f.datasets(probe)
    missing = [name for name in _READS.get(probe, ()) if name not in held]
    if missing:
        raise ScalelensError(
            f"{f.path}: probe {probe!r} is not the one {analysis} reads (it holds {', '.join(held)}, "
            f"not {', '.join(missing)}); capture it with {measure_command(f, analysis)}"
        )


def measure_command(f: CaptureFile, analyses: str) -> str:
    """The ``scalelens measure`` command, in backticks, that measures ``analyses`` on ``f``'s model.

    Model, revision and a tokenizer other than the model's own are the capture's; only the
    output directory is left for the user to choose (``--out DIR``). A source that is neither
    on disk nor a hub id (an in-memory model) is left as ``MODEL``.
    """
    from scalelens.models.sources import looks_like_hub_id

    source = str(f.model.get("source") or "")
    known = bool(source) and (Path(source).exists() or looks_like_hub_id(source))
    parts = ["scalelens", "measure", "--model", source if known else "MODEL"]
    if known and f.model.get("revision"):
        parts += ["--revision", str(f.model["revision"])]
    tokenizer = str(f.capture.get("tokenizer") or "")
    if tokenizer and not _within(tokenizer, source):
        parts += ["--tokenizer", tokenizer]
    return "`" + shlex.join([*parts, "--analyses", analyses, "--out", "DIR"]).replace("'DIR'", "DIR") + "`"


def _within(path: str, source: str) -> bool:
    """Whether ``path`` is ``source`` or lies under it (the model's own tokenizer)."""
    return path == source or (bool(source) and Path(path).is_relative_to(source))


def needle_tests(f: CaptureFile, tokenizer: Any = None) -> list[NeedleTest]:
    """Teacher-forced needle tests from a retrieval capture (see measure/retrieval.py).

    With a ``tokenizer`` each test carries its decoded answer and needle text, so
    the ROUGE-1 gate is taken on stemmed words (:func:`with_texts`); without one,
    on token ids.
    """
    for probe in RETRIEVAL_PROBES:
        _need(f, probe, "retrieval_heads")
    top1 = f.read("top1_key", RETRIEVAL_PROBES[0]).data
    pred = f.read("top1_token", RETRIEVAL_PROBES[1]).data[:, 0]
    tokens, segments = f.read("tokens").data, f.read("segments").data
    lengths = f.read("lengths").data
    if "needle_answer" not in f.segment_labels:
        raise ScalelensError(f"{f.path} holds no needle tests (no needle_answer segment; labels: "
                             f"{', '.join(f.segment_labels)}); capture them with "
                             f"{measure_command(f, 'retrieval_heads')}")
    code = f.segment_labels.index("needle_answer")
    tests = []
    for i in range(f.n_done):
        span = np.flatnonzero(segments[i] == code)
        test = NeedleTest(top1_key=top1[i], context=tokens[i, : lengths[i]],
                          needle_span=(int(span[0]), int(span[-1]) + 1), answer=pred[i])
        tests.append(test if tokenizer is None else with_texts(test, tokenizer))
    return tests


def with_texts(test: NeedleTest, tokenizer: Any) -> NeedleTest:
    """``test`` with its answer and needle answer decoded (special tokens and padding dropped)."""
    return replace(test, answer_text=decode_ids(tokenizer, test.answer),
                   needle_text=decode_ids(tokenizer, test.needle_tokens()))


def decode_ids(tokenizer: Any, ids: Any) -> str:
    """Text of token ids, without special tokens and negative (padding) ids."""
    arr = np.asarray(ids)
    return str(tokenizer.decode([int(i) for i in arr[arr >= 0]], skip_special_tokens=True))


def recorded_tokenizer(model: dict[str, Any], tokenizer: str | None = None) -> Any | None:
    """The tokenizer a capture was made with, from local files only.

    The model source's own (its ``model`` attribute) or else ``tokenizer``, the
    source of the one the capture recorded (``--tokenizer`` for a model without one).
    Returns None when neither is on disk with a usable tokenizer (an in-memory
    source, an uncached hub id, no tokenizer files).
    """
    vocab = int(model.get("vocab_size") or 0)
    own = _source_tokenizer(str(model.get("source") or ""), model.get("revision"), vocab)
    return own if own is not None or not tokenizer else _tokenizer_at(tokenizer, {"local_files_only": True},
                                                                       vocab)


def _source_tokenizer(source: str, revision: str | None, vocab_size: int) -> Any | None:
    """The tokenizer shipped with a model source (hub id, directory, GGUF), or None."""
    if not source or source.startswith("<"):
        return None
    from scalelens.models.sources import resolve_source

    try:
        resolved = resolve_source(source, revision, None)
    except Exception:  # noqa: BLE001 - the source is gone or was never a model on disk
        return None
    kwargs: dict[str, Any] = {"local_files_only": True}
    if resolved.kind == "hub":
        kwargs["revision"] = resolved.revision
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    return _tokenizer_at(resolved.location, kwargs, vocab_size)


def _tokenizer_at(location: str, kwargs: dict[str, Any], vocab_size: int) -> Any | None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception:  # noqa: BLE001 - any failure means: no tokenizer here, gate on token ids
        return None
    return tok if len(tok) >= vocab_size // 2 else None


def capture_tokenizer(f: CaptureFile) -> tuple[Any | None, str]:
    """The tokenizer ``f`` was made with (:func:`recorded_tokenizer`), or None and why not.

    The model is where the ``results.json`` beside ``f`` says, when that records the same
    weights: ``measure`` rerun with the model moved reuses the capture and records the new
    path there. A tokenizer found whose vocabulary is not the one the capture recorded
    (another model at the recorded path now) is not used.
    """
    from scalelens.cache.writer import TOKENIZER_KEY
    from scalelens.models.describe import tokenizer_fingerprint

    model = _model_beside(f)
    tok = recorded_tokenizer(model, f.capture.get("tokenizer"))
    if tok is None:
        return None, f"the model's tokenizer was not found (not at {model.get('source') or 'its source'})"
    want = f.capture.get(TOKENIZER_KEY)
    if want and tokenizer_fingerprint(tok) != want:
        where = getattr(tok, "name_or_path", "") or model.get("source")
        return None, (f"the tokenizer at {where} is not the one it was captured with (another model "
                      "there now?)")
    return tok, ""


def _model_beside(f: CaptureFile) -> dict[str, Any]:
    """``f``'s model record, or that of the results.json beside it when that has the same weights."""
    import json

    from scalelens.measure.run import WEIGHTS_KEY

    try:
        data = json.loads((Path(f.path).parent / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f.model
    same = isinstance(data, dict) and bool(f.weights) and data.get(WEIGHTS_KEY) == f.weights
    return data["model"] if same and isinstance(data.get("model"), dict) else f.model


def retrieval_from_capture(f: CaptureFile, threshold: float = 0.1, gate: float = 0.5,
                           tokenizer: Any = None) -> RetrievalResult:
    """Retrieval-head scores from a teacher-forced (fast mode) capture.

    The ROUGE-1 gate is taken on stemmed words of the decoded answers, with
    ``tokenizer`` or else the one the capture was made with (:func:`capture_tokenizer`);
    when neither is available, on token ids (with a warning; ``recall_unit`` says which).
    """
    tok, why = (tokenizer, "") if tokenizer is not None else capture_tokenizer(f)
    if tok is None:
        warnings.warn(f"{f.path}: {why}; the ROUGE-1 gate uses token ids "
                      "(give the tokenizer: tokenizer=..., on the command line --tokenizer)",
                      ScalelensWarning, stacklevel=2)
    return retrieval_scores(needle_tests(f, tok), threshold=threshold, gate=gate)


def probe_layers(f: CaptureFile, probe: str) -> list[int]:
    """The model layers a probe's layer axis holds, in stored order (``--layers 2,0``: [2, 0])."""
    for spec in f.probe_specs:
        if spec.get("name") == probe and spec.get("layers") is not None:
            return [int(x) for x in spec["layers"]]
    raise ScalelensError(f"{f.path}: probe {probe!r} has no layer list in its spec (corrupted?); "
                         "re-run the capture with --overwrite")


def massive_from_capture(f: CaptureFile, **kwargs) -> MassiveResult:
    """Massive-activation statistics from the streamed ``massive`` summary probe.

    Layers are reported as model layers (the probe's own layer list), not axis positions.
    """
    _need(f, MASSIVE_PROBE, "massive_activations")
    p = f.probe(MASSIVE_PROBE)
    summary = ResidualSummary(
        top_values=p["top_values"].data, top_pos=p["top_pos"].data, top_dim=p["top_dim"].data,
        top_token=p["top_token"].data, median_abs=p["median_abs"].data,
    )
    res = massive_activations(summary, **kwargs)
    layer = probe_layers(f, MASSIVE_PROBE)
    flagged = sorted(layer[i] for i in res.ratio_layers)
    return replace(
        res,
        per_layer=[{**row, "layer": layer[row["layer"]]} for row in res.per_layer],
        massive=[{**e, "layer": layer[e["layer"]]} for e in res.massive],
        first_layer=min((layer[e["layer"]] for e in res.massive), default=None),
        ratio_layers=flagged,
        ratio_first_layer=flagged[0] if flagged else None,
    )


def dominance_from_capture(f: CaptureFile, text: tuple[str, ...], other: tuple[str, ...],
                           first_token_sink: bool = True) -> TextDominanceResult:
    """MDI/AEI from attention rows of the query segment to labelled key segments."""
    _need(f, DOMINANCE_PROBE, "text_dominance")
    rows = f.lazy("values", DOMINANCE_PROBE)  # read by layer and prompt range: may exceed memory
    qpos = f.read("query_pos", DOMINANCE_PROBE).data
    segments = f.read("segments").data
    kinds = {i: ("text" if lab in text else "other" if lab in other else "ignore")
             for i, lab in enumerate(f.segment_labels)}
    kinds[-1] = "ignore"
    res = text_dominance(rows, qpos >= 0, segments, kinds, first_token_sink=first_token_sink)
    layer = probe_layers(f, DOMINANCE_PROBE)  # model layers, not axis positions
    return replace(
        res,
        per_layer=[{**row, "layer": layer[row["layer"]]} for row in res.per_layer],
        groups={k: {**g, "layers": [layer[i] for i in g["layers"]]} for k, g in res.groups.items()},
    )
