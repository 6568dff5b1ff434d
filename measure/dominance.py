"""Text dominance on a text-only model: question (T) vs document (O), with a dilution sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelens.analyses.from_capture import DOMINANCE_PROBE, dominance_from_capture
from scalelens.analyses.text_dominance import TextDominanceResult
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.measure.retrieval import RetrievalSettings, haystack_tests, needle_material
from scalelens.probes.haystack import needle_overhead
from scalelens.probes.spec import Positions, ProbeSpec

TEXT = ("question",)
OTHER = ("haystack", "needle", "needle_answer")


@dataclass(frozen=True)
class DominanceSettings:
    """Settings of the text-dominance measurement.

    Attributes:
        base_tokens: Document size at dilution x1; None: (context - 64) / max(dilutions).
        dilutions: Document size factors (the paper's x1, x5, x10).
        n_prompts: Prompts per dilution level.
        first_token_sink: Exclude the first token (reported separately as the sink).
        batch_size: Prompts per forward pass.
    """

    base_tokens: int | None = None
    dilutions: tuple[int, ...] = (1, 5, 10)
    n_prompts: int = 8
    first_token_sink: bool = True
    batch_size: int = 4

    def __post_init__(self) -> None:
        if not self.dilutions or min(self.dilutions) < 1:
            raise ScalelensError("dilutions must be positive integers, e.g. 1,5,10")


def dominance_probe() -> ProbeSpec:
    """Attention rows from every answer-producing query to all keys."""
    return ProbeSpec(DOMINANCE_PROBE, "attn_pattern", positions=Positions.parse("segment:answer@-1"),
                     dtype="float32")


def measure_dominance(loaded: Any, s: DominanceSettings, out_dir: Path, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """MDI/AEI per layer at x1 and the middle-layer MDI for each dilution level."""
    depths = tuple(round((i + 0.5) / s.n_prompts, 3) for i in range(s.n_prompts))
    rs = RetrievalSettings(depths=depths, n_needles=1)
    reserve = needle_overhead(needle_material(loaded, rs)[0], loaded.tokenizer)
    base = s.base_tokens or (loaded.info.max_position - reserve) // max(s.dilutions)
    if base < 2:
        raise ScalelensError(
            f"the model's context ({loaded.info.max_position}) is too short for a x{max(s.dilutions)} "
            "dilution; use smaller --dilutions"
        )
    results: dict[int, TextDominanceResult] = {}
    for factor in sorted(set(s.dilutions)):
        rs = RetrievalSettings(context_lengths=(base * factor,), depths=depths, n_needles=1)
        tests = haystack_tests(loaded, rs, with_answer=True)
        path = out_dir / f"dominance_x{factor}.h5"
        capture(loaded, [dominance_probe()], [t.prompt for t in tests], path,
                batch_size=s.batch_size, overwrite=overwrite, reuse_complete=True,
            progress=progress)
        with CaptureFile(path) as f:
            results[factor] = dominance_from_capture(f, TEXT, OTHER, s.first_token_sink)
    first = results[min(results)].to_dict()
    first["dilution"] = [
        {"factor": k, "other_tokens": base * k, "mdi_middle": _group(r, "middle", "mdi"),
         "aei_text_middle": _group(r, "middle", "aei_text"), "n_other": r.n_other}
        for k, r in sorted(results.items())
    ]
    return first


def _group(result: TextDominanceResult, name: str, key: str) -> float | None:
    group = result.groups.get(name) or result.groups["all"]
    value = group.get(key)
    return None if value is None else float(value)
