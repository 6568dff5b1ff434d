"""``measure``: capture what each analysis needs, analyse, and write results.json."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scalelens import __version__
from scalelens.analyses._common import jsonable
from scalelens.errors import ScalelensError, naming
from scalelens.measure.capacity import CapacitySettings, measure_capacity
from scalelens.measure.dominance import DominanceSettings, capture_names, measure_dominance
from scalelens.measure.massive import MassiveSettings, measure_massive
from scalelens.measure.retrieval import RetrievalSettings, ablation, fast_scores, reference_scores
from scalelens.measure.sparsity import measure_sparsity
from scalelens.measure.superposition import measure_superposition
from scalelens.textfiles import make_dirs, replace_unless_same, temp_beside

# The four published mechanisms of DESIGN.md section 4.
CORE_ANALYSES = ("retrieval_heads", "massive_activations", "superposition", "text_dominance")
# Extra per-scale metrics (issue #3): one forward pass each over the probe text.
EXTRA_ANALYSES = ("information_capacity", "activation_sparsity")
# Every analysis ``measure`` runs; ``--analyses all`` means all of them.
ANALYSES = CORE_ANALYSES + EXTRA_ANALYSES

RESULTS_FORMAT = 2
"""How results.json's numbers are measured, recorded in it and in a sweep's sweep_spec.json.

Raise it with any change that makes a finished measurement differ from one made now with
the same settings (a probe text, haystack, needle or dominance prompt built otherwise, an
analysis defined otherwise, a key renamed): a sweep then refuses to resume a run directory
of another format instead of mixing its finished tasks with new ones. ``scalelens_version``
cannot tell: it stayed 0.1.0 through such changes. Files written before this field existed
hold none (and were measured in many other ways).

2: information capacity's FLOPs count OPT's embedding projections (OPT-350m).
"""


@dataclass(frozen=True)
class MeasureSettings:
    """Settings of every analysis of one ``measure`` run.

    Attributes:
        retrieval: Retrieval-head settings.
        massive: Massive-activation settings.
        dominance: Text-dominance settings.
        capacity: Information-capacity settings (its probe text is ``massive``'s).
    """

    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    massive: MassiveSettings = field(default_factory=MassiveSettings)
    dominance: DominanceSettings = field(default_factory=DominanceSettings)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)


def parse_analyses(text: str) -> tuple[str, ...]:
    """Parse a comma-separated analysis list (``all`` for every one)."""
    names = ANALYSES if text.strip() == "all" else tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in ANALYSES]
    if bad or not names:
        raise ScalelensError(
            f"unknown analysis {', '.join(bad) or '(none)'}; choose from {', '.join(ANALYSES)}"
        )
    return names


def write_json(path: Path, data: dict[str, Any], keep_same: bool = False) -> None:
    """Write JSON atomically (a temporary file of this write's own, then rename).

    ``keep_same``: leave ``path`` as it is (its mtime too) when it holds this JSON already.
    """
    text = json.dumps(data, indent=1, allow_nan=False, default=str)
    tmp = temp_beside(path)
    try:
        with naming(path):
            tmp.write_text(text)
        if keep_same:
            replace_unless_same(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written temporary file left behind
        tmp.unlink(missing_ok=True)
        raise


WEIGHTS_KEY = "weights_fingerprint"
"""results.json's fingerprint of the weights measured (``models.describe.weights_fingerprint``,
as a capture records it): a sweep tells a model directory moved from another model by it."""

RETRIEVAL_CAPTURE = "retrieval.h5"
MASSIVE_CAPTURE = "massive.h5"


def capture_files(out: str | Path, analyses: tuple[str, ...],
                  settings: MeasureSettings | None = None) -> list[Path]:
    """The capture files :func:`measure` of ``analyses`` writes (or reuses) in ``out``.

    Other ``.h5`` files there (an earlier measure's with other dilutions, the user's own) are
    not this measure's.
    """
    s = settings or MeasureSettings()
    out = Path(out)
    names = []
    if "retrieval_heads" in analyses and s.retrieval.mode == "fast":
        names.append(RETRIEVAL_CAPTURE)
    if "massive_activations" in analyses:
        names.append(MASSIVE_CAPTURE)
    if "text_dominance" in analyses:
        names.extend(capture_names(s.dominance))
    return [out / name for name in names]


def _retrieval(loaded: Any, s: RetrievalSettings, out: Path, progress: bool,
               overwrite: bool) -> dict[str, Any]:
    if s.mode == "reference":
        result, tests = reference_scores(loaded, s, progress), None
    else:
        result, tests = fast_scores(loaded, s, out / RETRIEVAL_CAPTURE, overwrite, progress=progress)
    data = result.to_dict()
    data["mode"] = s.mode
    if s.ablation_k > 0 and result.n_tests_passed > 0:
        from scalelens.measure.retrieval import haystack_tests

        data["ablation"] = ablation(loaded, result, tests or haystack_tests(loaded, s, True),
                                    s.ablation_k, s.seed, s.ablation_tests)
    return data


def _massive(loaded: Any, s: MassiveSettings, out: Path, progress: bool, overwrite: bool) -> dict[str, Any]:
    result, effect = measure_massive(loaded, s, out / MASSIVE_CAPTURE, overwrite, progress=progress)
    data = result.to_dict()
    data["intervention"] = jsonable(effect)  # a NaN loss (float16 overflow) becomes null
    return data


def _sparsity(loaded: Any, text: MassiveSettings) -> dict[str, Any]:
    points = measure_sparsity(loaded, text)
    return {"measure": "hoyer", "points": {name: r.to_dict() for name, r in points.items()}}


# Analyses that read the probe text (``MeasureSettings.massive``: --text, --seq-length).
TEXT_ANALYSES = ("massive_activations", *EXTRA_ANALYSES)


def _preflight(loaded: Any, analyses: tuple[str, ...], s: MeasureSettings) -> None:
    """Refuse settings the model cannot take before any analysis captures anything."""
    from scalelens.hooks.arch import check_points
    from scalelens.hooks.points import CapturePoint

    if {"retrieval_heads", "text_dominance"} & set(analyses):
        check_points(loaded.model, [CapturePoint.ATTN_PATTERN])
    if "activation_sparsity" in analyses:
        check_points(loaded.model, [CapturePoint.MLP_OUT])
    if "information_capacity" in analyses:
        from scalelens.measure.capacity import model_shape

        model_shape(loaded.model.config)  # a family without a FLOP count: refused up front
    if set(TEXT_ANALYSES) & set(analyses):
        from scalelens.measure.text import check_probe_text

        check_probe_text(loaded, s.massive.text, s.massive.length)
    if "retrieval_heads" in analyses:
        from scalelens.measure.retrieval import check_fit, haystack_tests

        check_fit(loaded, haystack_tests(loaded, s.retrieval, with_answer=True), s.retrieval)
    if "text_dominance" in analyses:
        from scalelens.measure.dominance import base_tokens

        base_tokens(loaded, s.dominance)


def measure(loaded: Any, analyses: tuple[str, ...] | str, out: str | Path,
            settings: MeasureSettings | None = None, progress: bool = True,
            overwrite: bool = False) -> dict[str, Any]:
    """Run ``analyses`` (names, or ``"all"``) on ``loaded``; write ``out/*.h5`` and ``out/results.json``.

    ``loaded`` is a LoadedModel, or anything ``load_model`` loads (a path, hub id or HF
    model). Returns the results as written to ``results.json``.

    Captures already complete in ``out`` are reused, incomplete ones resumed (``overwrite``:
    every capture is redone, e.g. after changing settings that change its prompts). The
    extra analyses (information capacity, activation sparsity) read the massive
    activations' probe text and write no capture file.
    """
    from scalelens.capture import as_loaded, eval_mode

    # "all", "a,b" or names; unknown names or none: one clear error before anything is created
    analyses = parse_analyses(analyses if isinstance(analyses, str) else ",".join(analyses))
    if settings is not None and not isinstance(settings, MeasureSettings):
        raise ScalelensError(f"settings must be a MeasureSettings (e.g. MeasureSettings(retrieval="
                             f"RetrievalSettings(context_lengths=(64,)))), got a {type(settings).__name__}")
    from scalelens.models.describe import weights_fingerprint

    s = settings or MeasureSettings()
    loaded = as_loaded(loaded)
    out = Path(out)
    _preflight(loaded, analyses, s)
    weights = weights_fingerprint(loaded.model)
    make_dirs(out)
    runners = {
        "retrieval_heads": lambda: _retrieval(loaded, s.retrieval, out, progress, overwrite),
        "massive_activations": lambda: _massive(loaded, s.massive, out, progress, overwrite),
        "superposition": lambda: measure_superposition(loaded),
        "text_dominance": lambda: measure_dominance(loaded, s.dominance, out, overwrite, progress),
        "information_capacity": lambda: measure_capacity(loaded, s.massive, s.capacity).to_dict(),
        "activation_sparsity": lambda: _sparsity(loaded, s.massive),
    }
    with eval_mode(loaded.model):  # dropout off in every forward pass; the model's mode restored
        results = {name: runners[name]() for name in analyses}
    data = {
        "scalelens_version": __version__,
        "results_format": RESULTS_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": loaded.info.to_dict(),
        WEIGHTS_KEY: weights,
        "settings": asdict(s),
        "analyses": results,
    }
    write_json(out / "results.json", data)
    return data
