"""Adapters: run each analysis on a capture file (no model needed)."""

from __future__ import annotations

import numpy as np

from scalelens.analyses.massive import MassiveResult, ResidualSummary, massive_activations
from scalelens.analyses.retrieval import NeedleTest, RetrievalResult, retrieval_scores
from scalelens.analyses.text_dominance import TextDominanceResult, text_dominance
from scalelens.cache.reader import CaptureFile
from scalelens.errors import ScalelensError

RETRIEVAL_PROBES = ("retrieval_top1", "retrieval_pred")
MASSIVE_PROBE = "massive"
DOMINANCE_PROBE = "dominance_rows"


def _need(f: CaptureFile, probe: str, analysis: str) -> None:
    if probe not in f.probe_names:
        raise ScalelensError(
            f"{f.path} lacks probe {probe!r} needed by {analysis}; capture it with `scalelens measure "
            f"--analyses {analysis}`"
        )


def needle_tests(f: CaptureFile) -> list[NeedleTest]:
    """Teacher-forced needle tests from a retrieval capture (see measure/retrieval.py)."""
    for probe in RETRIEVAL_PROBES:
        _need(f, probe, "retrieval_heads")
    top1 = f.read("top1_key", RETRIEVAL_PROBES[0]).data
    pred = f.read("top1_token", RETRIEVAL_PROBES[1]).data[:, 0]
    tokens, segments = f.read("tokens").data, f.read("segments").data
    lengths = f.read("lengths").data
    code = f.segment_labels.index("needle_answer")
    tests = []
    for i in range(f.n_done):
        span = np.flatnonzero(segments[i] == code)
        tests.append(NeedleTest(top1_key=top1[i], context=tokens[i, : lengths[i]],
                                needle_span=(int(span[0]), int(span[-1]) + 1), answer=pred[i]))
    return tests


def retrieval_from_capture(f: CaptureFile, threshold: float = 0.1, gate: float = 0.5) -> RetrievalResult:
    """Retrieval-head scores from a teacher-forced (fast mode) capture."""
    return retrieval_scores(needle_tests(f), threshold=threshold, gate=gate)


def massive_from_capture(f: CaptureFile, **kwargs) -> MassiveResult:
    """Massive-activation statistics from the streamed ``massive`` summary probe."""
    _need(f, MASSIVE_PROBE, "massive_activations")
    p = f.probe(MASSIVE_PROBE)
    summary = ResidualSummary(
        top_values=p["top_values"].data, top_pos=p["top_pos"].data, top_dim=p["top_dim"].data,
        top_token=p["top_token"].data, median_abs=p["median_abs"].data,
    )
    return massive_activations(summary, **kwargs)


def dominance_from_capture(f: CaptureFile, text: tuple[str, ...], other: tuple[str, ...],
                           first_token_sink: bool = True) -> TextDominanceResult:
    """MDI/AEI from attention rows of the query segment to labelled key segments."""
    _need(f, DOMINANCE_PROBE, "text_dominance")
    rows = f.read("values", DOMINANCE_PROBE).data
    qpos = f.read("query_pos", DOMINANCE_PROBE).data
    segments = f.read("segments").data
    kinds = {i: ("text" if lab in text else "other" if lab in other else "ignore")
             for i, lab in enumerate(f.segment_labels)}
    kinds[-1] = "ignore"
    return text_dominance(rows, qpos >= 0, segments, kinds, first_token_sink=first_token_sink)
