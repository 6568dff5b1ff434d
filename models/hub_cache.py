"""What the local Hugging Face hub cache holds: revisions, snapshots, and the files a load needs.

The layout is ``huggingface_hub``'s: ``<cache>/models--<org>--<name>/`` with
``refs/<revision>`` holding a commit hash, ``snapshots/<commit>/`` holding links to
``blobs/``. A revision downloaded by commit hash has a snapshot and no ref.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .revisions import COMMIT, revision_key

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""Any one of these makes a folder hold a tokenizer."""

WEIGHT_FILES = ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME))
"""(single file, index of shards), in the order transformers looks for them."""


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds one of :data:`TOKENIZER_FILES` (a link to a missing blob does not count)."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def hub_cache_dir(cache_dir: str | Path | None) -> Path:
    """The hub cache directory in use (``cache_dir`` or ``HF_HUB_CACHE``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE")  # read now (tests change it); expanded as huggingface_hub does
    return Path(os.path.expandvars(os.path.expanduser(env)) if env else constants.HF_HUB_CACHE)


def repo_cache_dir(repo_id: str, cache_dir: str | Path | None) -> Path:
    """``<cache>/models--<org>--<name>``, the hub cache layout of a model repo."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_revisions(repo_id: str, cache_dir: str | Path | None) -> list[str] | None:
    """Revisions of ``repo_id`` in the local cache; ``None`` if the cache has nothing of it.

    Refs (``step3000``, ``step1000-tokens4B``, ``main``) by name, and snapshots no ref
    points to (downloaded by commit hash) by their hash: both load offline. Ordered by
    :func:`~scalelens.models.revisions.revision_key`: names that give a training step by
    the step, later stages (``stage2-…``) by their numbers, other refs alphabetically, bare
    hashes last.
    """
    repo = repo_cache_dir(repo_id, cache_dir)
    refs = _refs(repo)
    snapshots = repo / "snapshots"
    loose = [p.name for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    names = [*refs, *(c for c in loose if c not in refs.values())]
    return sorted(names, key=revision_key) if names else None


def _refs(repo: Path) -> dict[str, str]:
    """Ref name (``step3000``, ``refs/pr/1``) -> the commit hash it points to."""
    root = repo / "refs"
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.read_text().strip() for p in root.rglob("*") if p.is_file()}


def cached_snapshot(repo_id: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    """The snapshot folder a cached ``revision`` (ref name or commit hash) points to.

    ``None`` when the cache has no such revision. A ref whose snapshot folder is gone
    still names the folder (a partly cached revision: see ``missing_files``).
    """
    repo = repo_cache_dir(repo_id, cache_dir)
    ref = repo / "refs" / revision
    if ref.is_file():
        return repo / "snapshots" / ref.read_text().strip()
    snapshot = repo / "snapshots" / revision
    return snapshot if COMMIT.fullmatch(revision) and snapshot.is_dir() else None


def missing_files(snapshot: Path, gguf_file: str | None = None, tokenizer: bool = True,
                  model: bool = True) -> list[str]:
    """What loading ``snapshot`` needs that it lacks; empty when it is fully cached.

    A GGUF load needs its file only. Otherwise, with ``model``, ``config.json`` and the
    weights (every shard an index names) and, with ``tokenizer``, one tokenizer file.
    A link to a blob that is not there counts as missing.
    """
    if gguf_file:
        return [] if (snapshot / gguf_file).exists() else [gguf_file]
    missing = []
    if model:
        missing += [] if (snapshot / CONFIG_NAME).exists() else [CONFIG_NAME]
        missing += _missing_weights(snapshot)
    if tokenizer and not has_tokenizer_files(snapshot):
        missing.append("tokenizer files")
    return missing


def _missing_weights(snapshot: Path) -> list[str]:
    for single, index in WEIGHT_FILES:
        if (snapshot / single).exists():
            return []
        if (snapshot / index).exists():
            return [s for s in _shards(snapshot / index) if not (snapshot / s).exists()]
    return [f"weights ({SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME})"]


def _shards(index: Path) -> list[str]:
    """The shard files a weights index names (the index itself when it cannot be read)."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [f"{index.name} (unreadable)"]
