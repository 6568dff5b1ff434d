"""Hub access helpers: offline mode, cached revisions, and clear errors when loading fails."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ScalelensError, TransientError

_TRUE = {"1", "true", "yes", "on"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (read at call time) asks for the local cache only."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir(cache_dir: str | Path | None) -> Path:
    """The hub cache directory in use (``cache_dir`` or ``HF_HUB_CACHE``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def repo_cache_dir(repo_id: str, cache_dir: str | Path | None) -> Path:
    """``<cache>/models--<org>--<name>``, the hub cache layout of a model repo."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_revisions(repo_id: str, cache_dir: str | Path | None) -> list[str] | None:
    """Revisions (refs) of ``repo_id`` in the local cache; ``None`` if it is not cached.

    Steps (``stepN``) are ordered numerically, other refs alphabetically after them.
    """
    refs = repo_cache_dir(repo_id, cache_dir) / "refs"
    if not refs.is_dir():
        return None
    names = [str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()]
    return sorted(names, key=_revision_key)


def _revision_key(name: str) -> tuple[int, int, str]:
    if name.startswith("step") and name[4:].isdigit():
        return (0, int(name[4:]), name)
    return (1, 0, name)


def remote_revisions(repo_id: str) -> list[str] | None:
    """Branches and tags on the hub, or ``None`` when the hub cannot be asked."""
    if is_offline():
        return None
    try:
        from huggingface_hub import list_repo_refs

        refs = list_repo_refs(repo_id)
    except Exception:  # noqa: BLE001 - any failure just means "cannot list"
        return None
    return sorted([r.name for r in (*refs.branches, *refs.tags)], key=_revision_key)


def check_cached_revision(repo_id: str, revision: str, cache_dir: str | Path | None) -> None:
    """Offline only: raise if the cache holds ``repo_id`` but not ``revision``."""
    known = cached_revisions(repo_id, cache_dir)
    if not is_offline() or known is None:
        return
    snapshot = repo_cache_dir(repo_id, cache_dir) / "snapshots" / revision
    if revision not in known and not snapshot.is_dir():
        raise unknown_revision(repo_id, revision, known)


def unknown_revision(repo_id: str, revision: str, known: list[str] | None) -> ScalelensError:
    """The error for a revision the repo does not have, naming the ones it has."""
    listing = f"available: {_abbreviate(known)}" if known else "check the revision name"
    return ScalelensError(f"unknown revision {revision!r} for {repo_id}; {listing}")


def _abbreviate(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit // 2] + ["..."] + names[-limit // 2 :])


def explain_failure(
    repo_id: str, revision: str, cache_dir: str | Path | None, exc: Exception
) -> ScalelensError:
    """Turn a ``from_pretrained`` failure for a hub id into one actionable line."""
    known = cached_revisions(repo_id, cache_dir)
    remote = remote_revisions(repo_id)
    listing = remote if remote is not None else known
    if listing is not None and revision not in listing and not _COMMIT.fullmatch(revision):
        return unknown_revision(repo_id, revision, listing)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_offline() and known is None:
        return ScalelensError(
            f"model {repo_id} is not in the hub cache {hub_cache_dir(cache_dir)} and "
            "HF_HUB_OFFLINE is set; download it first or pass a local path"
        )
    return TransientError(f"could not load {repo_id}@{revision}: {detail}")
