"""Text dominance on a text-only model: question (T) vs document (O), with a dilution sweep.

Two modalities for O (``DominanceSettings.modality``):

* ``text`` (default): O is the document's tokens (haystack and needle), T the question.
* ``embeds``: O is a pseudo-modality, the document turned into a block of soft tokens
  fed through ``inputs_embeds`` (like a VLM's image tokens; content described in
  :mod:`scalelens.probes.embeds`), labelled ``embeds``; T is the question, as in
  text mode. Prompts are ``embeds | question | answer``; the block's first row is the
  document's first token embedding, so the first-token sink is the same position and
  vector as in text mode. Dilution multiplies the number of soft tokens: the document
  has ``base x factor x pool`` tokens, pooled into about ``base x factor`` vectors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalelens.analyses.from_capture import DOMINANCE_PROBE, dominance_from_capture
from scalelens.analyses.text_dominance import TextDominanceResult
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError, ScalelensWarning
from scalelens.measure.retrieval import RetrievalSettings, haystack_tests, needle_material
from scalelens.probes.embeds import SOFT_TOKENS, soft_tokens, token_embeddings
from scalelens.probes.haystack import HaystackTest, needle_overhead
from scalelens.probes.prompts import EmbedBlock, Prompt, tokenize
from scalelens.probes.spec import Positions, ProbeSpec

EMBEDS_LABEL = "embeds"
TEXT = ("question",)
DOCUMENT = ("haystack", "needle", "needle_answer")
OTHER = (*DOCUMENT, EMBEDS_LABEL)
MODALITIES = ("text", "embeds")
# Prompts per dilution: depths are spread over (0, 1) at 3 decimals, so from 1000 on some
# repeat (at 1000 itself, 28 of them: (i + 0.5) / 1000 sits on the rounding boundary).
MAX_PROMPTS = 999
MIN_BASE = 2
"""The fewest other-modality tokens (or vectors) at dilution x1."""


@dataclass(frozen=True)
class DominanceSettings:
    """Settings of the text-dominance measurement.

    Attributes:
        base_tokens: Document size at dilution x1 (at least 2); None: what the context leaves
            beside needle and question, / max(dilutions) (a model that declares no context
            length, e.g. BLOOM, needs it given).
        dilutions: Document size factors (the paper's x1, x5, x10).
        n_prompts: Prompts per dilution level.
        first_token_sink: Exclude the first token (reported separately as the sink).
        batch_size: Prompts per forward pass.
        modality: ``text`` (O = document tokens) or ``embeds`` (O = a soft-token
            block fed through ``inputs_embeds``); ``base_tokens`` then counts vectors.
        soft_tokens: ``embeds`` content: ``pooled`` document token embeddings or
            ``random`` vectors at their norm (see :mod:`scalelens.probes.embeds`).
        pool: Document tokens per soft token.
        seed: Seed of ``random`` soft tokens (prompt i uses ``seed + i``).
    """

    base_tokens: int | None = None
    dilutions: tuple[int, ...] = (1, 5, 10)
    n_prompts: int = 8
    first_token_sink: bool = True
    batch_size: int = 4
    modality: str = "text"
    soft_tokens: str = "pooled"
    pool: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.dilutions or min(self.dilutions) < 1:
            raise ScalelensError("dilutions must be positive integers, e.g. 1,5,10")
        if self.modality not in MODALITIES:
            raise ScalelensError(f"unknown modality {self.modality!r}; choose from {', '.join(MODALITIES)}")
        if self.soft_tokens not in SOFT_TOKENS:
            raise ScalelensError(
                f"unknown soft tokens {self.soft_tokens!r}; choose from {', '.join(SOFT_TOKENS)}")
        if self.pool < 1:
            raise ScalelensError(f"pool must be >= 1, got {self.pool}")
        if not 1 <= self.n_prompts <= MAX_PROMPTS:
            raise ScalelensError(f"--dominance-prompts must be 1 to {MAX_PROMPTS:,}, got {self.n_prompts:,}")

    def provenance(self) -> dict[str, Any]:
        """What O was, for the result: modality and, for ``embeds``, how the block was made."""
        if self.modality == "text":
            return {"modality": "text", "other_labels": list(DOCUMENT)}
        return {"modality": "embeds", "other_labels": [EMBEDS_LABEL],
                "embeds": {"source": "document token embeddings", "soft_tokens": self.soft_tokens,
                           "pool": self.pool, "seed": self.seed}}


def dominance_probe() -> ProbeSpec:
    """Attention rows from every answer-producing query to all keys."""
    return ProbeSpec(DOMINANCE_PROBE, "attn_pattern", positions=Positions.parse("segment:answer@-1"),
                     dtype="float32")


def _depths(s: DominanceSettings) -> tuple[float, ...]:
    """One needle depth per prompt, evenly spread over (0, 1), all distinct."""
    return tuple(round((i + 0.5) / s.n_prompts, 3) for i in range(s.n_prompts))


def check_pool(loaded: Any, s: DominanceSettings) -> None:
    """Refuse (``embeds`` only) a ``--pool`` larger than the haystack text the document cycles.

    Such a soft token would average more than the whole text, so every block is nearly one
    repeated vector; and a typo's huge pool would build a document of billions of tokens.
    """
    if s.modality != "embeds":
        return
    hay = needle_material(loaded, RetrievalSettings(n_needles=1))[1]
    size = sum(len(loaded.tokenizer("\n" + t, add_special_tokens=False)["input_ids"]) for t in hay)
    if s.pool > size:
        raise ScalelensError(f"--pool {s.pool} is more than the {size} tokens of the haystack text the "
                             f"document is cut from; use --pool {size} or less")


def base_tokens(loaded: Any, s: DominanceSettings) -> int:
    """Other-modality tokens at dilution x1; raises when the largest dilution cannot fit.

    Also refuses a ``pool`` larger than the haystack text (:func:`check_pool`).
    """
    check_pool(loaded, s)
    rs = RetrievalSettings(depths=_depths(s), n_needles=1)
    reserve = needle_overhead(needle_material(loaded, rs)[0], loaded.tokenizer)
    if s.base_tokens is not None:
        if s.base_tokens < MIN_BASE:
            raise ScalelensError(f"--base-tokens must be at least {MIN_BASE}, got {s.base_tokens}")
        base = s.base_tokens
    elif not loaded.info.max_position:
        raise ScalelensError("the model declares no context length, so text dominance has no default "
                             "document size; give one with --base-tokens (in Python "
                             "DominanceSettings(base_tokens=))")
    else:
        room = loaded.info.max_position - reserve  # tokens left for the document beside needle and question
        base = room // max(s.dilutions)
        if base < MIN_BASE:
            raise ScalelensError(
                f"the model's context ({loaded.info.max_position}) is too short for a x{max(s.dilutions)} "
                f"dilution; {_dilution_hint(room)}"
            )
    _check_base_fits(loaded.info.max_position, base, max(s.dilutions), reserve)
    return base


def _dilution_hint(room: int) -> str:
    """The fix for a dilution too large: the largest one that leaves ``MIN_BASE`` tokens at x1."""
    if room < MIN_BASE:
        return (f"the needle and question leave {max(room, 0)} tokens for the document; "
                "use a model of longer context")
    return f"use --dilutions {room // MIN_BASE} or less"


def _check_base_fits(context: int | None, base: int, dilution: int, reserve: int) -> None:
    """Refuse a ``base_tokens`` whose largest dilution, with needle and question, exceeds the context.

    (The default base is sized to fit.) Checked here, before any analysis captures, and
    named as what the caller set, not as a ``--context-lengths`` they never gave.
    """
    if context and base * dilution + reserve > context:
        raise ScalelensError(
            f"base_tokens {base} at a x{dilution} dilution, plus {reserve} tokens of needle and "
            f"question, exceed the model's context of {context} tokens; use --base-tokens of at most "
            f"{max(0, context - reserve) // dilution} or smaller --dilutions"
        )


def capture_names(s: DominanceSettings) -> list[str]:
    """The capture files :func:`measure_dominance` writes in its directory, one per dilution."""
    embeds = "_embeds" if s.modality == "embeds" else ""
    return [f"dominance{embeds}_x{factor}.h5" for factor in sorted(set(s.dilutions))]


def measure_dominance(loaded: Any, s: DominanceSettings, out_dir: Path, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """MDI/AEI per layer at x1 and the middle-layer MDI for each dilution level."""
    depths = _depths(s)
    base = base_tokens(loaded, s)
    embeds = s.modality == "embeds"
    results: dict[int, TextDominanceResult] = {}
    for factor, name in zip(sorted(set(s.dilutions)), capture_names(s), strict=True):
        doc_tokens = base * factor * (s.pool if embeds else 1)
        rs = RetrievalSettings(context_lengths=(doc_tokens,), depths=depths, n_needles=1)
        tests = haystack_tests(loaded, rs, with_answer=True, within_context=not embeds)
        prompts = embeds_prompts(loaded, tests, s) if embeds else [t.prompt for t in tests]
        path = out_dir / name
        capture(loaded, [dominance_probe()], prompts, path,
                batch_size=s.batch_size, overwrite=overwrite, reuse_complete=True,
                progress=progress)
        with CaptureFile(path) as f:
            results[factor] = dominance_from_capture(f, TEXT, OTHER, s.first_token_sink)
    first = results[min(results)].to_dict()
    first.update(s.provenance())
    first["dilution"] = [
        {"factor": k, "other_tokens": base * k, "mdi_middle": _group(r, "middle", "mdi"),
         "aei_text_middle": _group(r, "middle", "aei_text"), "n_other": r.n_other,
         **({"document_tokens": base * k * s.pool} if embeds else {})}
        for k, r in sorted(results.items())
    ]
    first["dilution_distinct"] = _distinct(first["dilution"], loaded.info.max_position)
    return first


def _distinct(rows: list[dict[str, Any]], context: int) -> bool:
    """Whether O really grows from one dilution level to the next; warns if not.

    Documents are whole sentences, so in a short context several factors can round to
    the same document (e.g. a 64-token context gives 29 O tokens at x1, x5 and x10).
    """
    sizes = [r["n_other"] for r in rows]
    distinct = all(a < b for a, b in zip(sizes, sizes[1:], strict=False))
    if not distinct:
        levels = ", ".join(f"x{r['factor']}: {r['n_other']:.0f}" for r in rows)
        warnings.warn(f"text dominance: O does not grow with the dilution ({levels} tokens); the model's "
                      f"{context}-token context is too short for these --dilutions", ScalelensWarning,
                      stacklevel=2)
    return distinct


def embeds_prompt(loaded: Any, prompt: Prompt, s: DominanceSettings, index: int = 0) -> Prompt:
    """``prompt`` with its document pieces replaced by one soft-token block labelled ``embeds``.

    The document (every piece before the question) is tokenised exactly as text mode
    tokenises it, embedded with the model's input embeddings and turned into soft
    tokens (``s.soft_tokens``, ``s.pool``; ``random`` uses seed ``s.seed + index``).
    """
    cut = next((i for i, (label, _) in enumerate(prompt.pieces) if label not in DOCUMENT), 0)
    if cut == 0:
        raise ScalelensError("a dominance prompt must start with document pieces "
                             f"({', '.join(DOCUMENT)})")
    ids = tokenize([Prompt(prompt.pieces[:cut])], loaded.tokenizer).ids[0]
    block = soft_tokens(token_embeddings(loaded.model, ids), s.soft_tokens, s.pool, s.seed + index)
    return Prompt(((EMBEDS_LABEL, EmbedBlock(block)), *prompt.pieces[cut:]))


def embeds_prompts(loaded: Any, tests: list[HaystackTest], s: DominanceSettings) -> list[Prompt]:
    """:func:`embeds_prompt` of every test's prompt."""
    return [embeds_prompt(loaded, t.prompt, s, i) for i, t in enumerate(tests)]


def _group(result: TextDominanceResult, name: str, key: str) -> float | None:
    group = result.groups.get(name) or result.groups["all"]
    value = group.get(key)
    return None if value is None or not np.isfinite(value) else float(value)  # strict JSON, as to_dict
