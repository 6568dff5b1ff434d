"""Checkpoint revision names: the training step a name gives, and the order names are listed in.

A name gives training step N when it is, as a whole, one of:

- ``step<N>`` (Pythia);
- ``step<N>-tokens<K>`` with ``K`` a number (decimals allowed) and an optional
  ``K``/``M``/``B``/``T`` unit (OLMo, OLMoE and some early OLMo 2 branches:
  ``step20000-tokens84B``);
- ``stage1-step<N>`` with or without the ``-tokens<K>`` part (OLMo 2 pretraining:
  ``stage1-step928646-tokens3896B``, ``stage1-step1000-tokens2.1B``);
- ``checkpoint-<N>`` (an HF Trainer save directory);
- ``global_step<N>`` (Megatron-DeepSpeed: BLOOM's ``bigscience/bloom-560m-intermediate`` branches).

A later stage's name (OLMo 2 ``stage2-ingredient1-step11931-tokens50B``) gives no step: each
stage counts its steps and tokens from zero again (that branch follows
``stage1-step928646-tokens3896B``), so its N is not a step on the training axis. Such names
are listed after the steps, by the numbers in them (stage, ingredient, step). Names that
give no step (``main``) are listed after those, alphabetically, and bare commit hashes last.
"""

from __future__ import annotations

import re

COMMIT = re.compile(r"[0-9a-f]{40}")
"""A full commit hash, the name of a snapshot folder."""

# ASCII digits only (\d also takes other scripts' digits); a token count may have decimals (OLMo 2 early
# training: stage1-step1000-tokens2.1B)
_STEP = re.compile(r"(?:stage1-)?step([0-9]+)(?:-tokens[0-9]+(?:\.[0-9]+)?[KMBT]?)?"
                   r"|checkpoint-([0-9]+)|global_step([0-9]+)")
_LATER_STAGE = re.compile(r"stage([0-9]+)-.+")


def parse_step(revision: str | None) -> int | None:
    """The training step a revision or checkpoint directory name gives, else ``None``.

    Args:
        revision: A name such as ``step3000``, ``step1000-tokens4B``,
            ``stage1-step1000-tokens4B``, ``checkpoint-3000`` or ``global_step3000``.

    Returns:
        N for the names the module docstring lists; ``None`` for any other name, a later
        stage's (``stage2-…``) included.
    """
    m = _STEP.fullmatch(revision or "")
    return int(next(g for g in m.groups() if g is not None)) if m else None


def later_stage(revision: str) -> int | None:
    """The stage (2 or more) a ``stage<S>-…`` name is in; ``None`` for stage 1 and other names."""
    m = _LATER_STAGE.fullmatch(revision)
    stage = int(m.group(1)) if m else None
    return stage if stage is not None and stage >= 2 else None


def revision_key(name: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key: steps by N, later stages by their numbers, other names alphabetically, hashes last.

    Args:
        name: A revision name or commit hash.

    Returns:
        ``(rank, numbers, name)``: rank 0 for a name that gives a step (numbers ``(N,)``),
        1 for a later stage's name (numbers: every number in it, in order), 2 for any other
        name and 3 for a commit hash (numbers empty).
    """
    step = parse_step(name)
    if step is not None:
        return (0, (step,), name)
    if later_stage(name) is not None:
        return (1, tuple(int(n) for n in re.findall(r"[0-9]+", name)), name)
    return (3 if COMMIT.fullmatch(name) else 2, (), name)


def revisions_by_step(names: list[str]) -> dict[int, list[str]]:
    """``{step: [names giving it]}`` of the names that give a step, each list in listing order."""
    found: dict[int, list[str]] = {}
    for name in sorted(names, key=revision_key):
        step = parse_step(name)
        if step is not None:
            found.setdefault(step, []).append(name)
    return found
