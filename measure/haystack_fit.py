"""The largest haystack that fits a model's context beside the needles: the fix an error names.

An error that says a needle test is too long must name settings that then work. The
haystack size that fits is not the context minus an estimate: the needle, question and
answer, the cut between sentences and the line breaks all take tokens. So it is found by
building the tests and counting their tokens, as the measurement itself does.
"""

from __future__ import annotations

from typing import Any

from scalelens.probes.haystack import NEEDLE_SETS, Needle, build_tests, largest_fitting
from scalelens.probes.prompts import tokenize


def fitting_length(loaded: Any, s: Any, needles: list[Needle], hay: list[str], fmt: str) -> int:
    """The largest haystack size (tokens) at which every test of ``needles`` fits the context; 0 if none.

    Args:
        loaded: The loaded model (its tokenizer and ``info.max_position``).
        s: The RetrievalSettings (depths and answer prefix).
        needles: The needles to test.
        hay: Haystack sentences.
        fmt: The resolved prompt format (``base`` or ``chat``).
    """
    limit = int(loaded.info.max_position)

    def fits(length: int) -> bool:
        tests = build_tests(needles, hay, loaded.tokenizer, [length], s.depths, with_answer=True,
                            prompt_format=fmt, answer_prefix=s.answer_prefix)
        return int(tokenize([t.prompt for t in tests], loaded.tokenizer).lengths.max()) <= limit

    return largest_fitting(fits, limit)


def context_hint(loaded: Any, s: Any, needles: list[Needle], hay: list[str], fmt: str) -> str:
    """The fix for needle tests longer than the context: settings under which they fit.

    ``--context-lengths N or less`` when some haystack fits beside every needle; else
    fewer built-in needles (``--n-needles``) when that makes room; else the needles of
    a ``--needles`` file that leave no room at all.
    """
    fit = fitting_length(loaded, s, needles, hay, fmt)
    if fit:
        return f"use --context-lengths {fit} or less (in Python RetrievalSettings(context_lengths=({fit},)))"
    per_needle = [fitting_length(loaded, s, [n], hay, fmt) for n in needles]  # tests: one needle each
    if s.needles in NEEDLE_SETS:  # whose first N needles --n-needles N takes
        room = [i for i in range(1, len(needles)) if min(per_needle[:i])]
        if room:
            k = max(room)
            size = min(per_needle[:k])
            return (f"no haystack fits beside all {len(needles)} needles; use --n-needles {k} with "
                    f"--context-lengths {size} or less (in Python n_needles={k}, context_lengths=({size},))")
        return "no haystack fits beside even one built-in needle; give shorter ones with --needles FILE.jsonl"
    numbers = ", ".join(str(i + 1) for i, f in enumerate(per_needle) if not f)
    return (f"needle(s) number {numbers} of {s.needles} (in file order) leave no room for a haystack; "
            "shorten them or leave them out")
