"""A hub repo's revisions (branches and tags) for choosing checkpoints, asked once and remembered.

The hub is asked once per repo with ``list_repo_refs``, waiting at most
``HF_HUB_ETAG_TIMEOUT`` seconds (the hub client itself waits without limit). Its answer is
kept in memory for ``LISTING_MEMORY_S`` (a sweep plans its tasks more than once) and on disk
under ``$SCALELENS_CACHE/hub-refs``; a listing the hub did not give (an error, a timeout) is
not asked for again in the process, so a sweep's planning waits for it once, not once per plan.
With ``HF_HUB_OFFLINE`` set, or when the hub cannot answer, the listing is the local hub
cache's revisions plus the last listing remembered on disk: a rerun of a sweep then plans
the tasks it planned while the hub answered, even where the hub cache no longer holds all
of them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScalelensError
from .hub import http_errors, is_offline, recent_timeout, remember_answer
from .hub_cache import cached_revisions
from .revisions import revision_key, revisions_by_step

LISTING_MEMORY_S = 300.0
"""How long a listing the hub gave is used before the hub is asked again (in this process)."""

_listed: dict[tuple[str, str], tuple[float, tuple[str, ...] | None, str | None]] = {}
"""(endpoint, repo) -> (time of the answer, the names or None, why there are none)."""


@dataclass(frozen=True)
class RevisionListing:
    """The revisions of a hub repo that a sweep chooses checkpoints from.

    Attributes:
        names: Revision names, ordered by :func:`~scalelens.models.revisions.revision_key`.
        from_hub: Whether the hub answered (``names``: its branches and tags, and the
            locally cached revisions); False: only what is known here.
        why: Why the hub was not asked or did not answer (None when it answered).
        cached: The revisions among ``names`` that the local hub cache holds.
    """

    names: tuple[str, ...]
    from_hub: bool
    why: str | None
    cached: tuple[str, ...] = ()


def hub_revision_listing(repo_id: str, cache_dir: str | Path | None = None) -> RevisionListing:
    """The revisions of hub repo ``repo_id``: the hub's, else those known here.

    Args:
        repo_id: Hub id (``allenai/OLMo-1B-hf``).
        cache_dir: The local hub cache (default ``HF_HUB_CACHE``).

    Returns:
        The hub's branches and tags with the local hub cache's revisions when the hub
        answers; with ``HF_HUB_OFFLINE`` set or the hub unreachable, the local hub
        cache's revisions and the listing last remembered on disk, with the reason.
    """
    cached = cached_revisions(repo_id, cache_dir) or []
    names, why = hub_names(repo_id)
    if names is None:
        return RevisionListing(_ordered([*cached, *_recalled(repo_id)]), False, why, _ordered(cached))
    return RevisionListing(_ordered([*names, *cached]), True, None, _ordered(cached))


def step_revision(repo_id: str, step: int, cache_dir: str | Path | None = None) -> str:
    """The revision of hub repo ``repo_id`` that holds training step ``step`` (``checkpoint=N``).

    Repos name their checkpoints differently: ``step1000`` (Pythia), ``step1000-tokens4B``
    (OLMo), ``global_step1000`` (BLOOM's intermediate checkpoints). The name is looked up
    among the locally cached revisions first, then in :func:`hub_revision_listing` (the hub
    asked once, or offline the listing remembered here).

    Returns:
        The one revision giving ``step``; ``step<N>`` when none known here gives it (loading
        it then says what is missing).

    Raises:
        ScalelensError: Several revisions give ``step``.
    """
    names = revisions_by_step(cached_revisions(repo_id, cache_dir) or []).get(step)
    if not names:
        names = revisions_by_step(list(hub_revision_listing(repo_id, cache_dir).names)).get(step)
    if not names:
        return f"step{step}"
    if len(names) > 1:
        raise ScalelensError(f"checkpoint={step}: step {step} of {repo_id} is given by {len(names)} "
                             f"revisions ({', '.join(names)}); pass revision= one of them")
    return names[0]


def _ordered(names: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=revision_key))


def hub_names(repo_id: str) -> tuple[tuple[str, ...] | None, str | None]:
    """The hub's branches and tags of ``repo_id`` (remembered ones while fresh), or why there are none.

    The hub is not asked offline, nor while a timeout of the last minute is remembered
    (:func:`~scalelens.models.hub.recent_timeout`), nor again in this process once it failed
    to list ``repo_id``; the wait is at most ``HF_HUB_ETAG_TIMEOUT``.
    """
    from huggingface_hub import constants

    if is_offline():
        return None, "HF_HUB_OFFLINE is set"
    key = (constants.ENDPOINT, repo_id)
    seen = _listed.get(key)
    if seen is not None and (seen[1] is None or time.monotonic() - seen[0] < LISTING_MEMORY_S):
        return seen[1], seen[2]
    why = recent_timeout()
    if why is not None:
        return None, why
    names, why, timed_out = _ask_refs(repo_id, float(constants.HF_HUB_ETAG_TIMEOUT))
    remember_answer(why if names is None else None, timed_out)
    _listed[key] = (time.monotonic(), names, why)
    if names is not None:
        _remember(repo_id, names)
    return names, why


def _ask_refs(repo_id: str, timeout: float) -> tuple[tuple[str, ...] | None, str | None, bool]:
    """One ``list_repo_refs`` request, waited for at most ``timeout`` s.

    Returns:
        ``(names, why, timed_out)``: the branch and tag names (None when there was no
        answer), why there was none, and whether the wait ran out.
    """
    answer: dict[str, Any] = {}

    def ask() -> None:
        from huggingface_hub import HfApi

        try:
            answer["refs"] = HfApi().list_repo_refs(repo_id)
        except Exception as exc:  # noqa: BLE001 - classified below, in the asking thread
            answer["error"] = exc

    thread = threading.Thread(target=ask, name=f"list-refs {repo_id}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():  # left to finish on its own; a daemon, so it never holds up an exit
        return None, f"no answer in {timeout:g} s", True
    if "refs" in answer:
        refs = answer["refs"]
        return tuple(r.name for r in (*refs.branches, *refs.tags)), None, False
    return None, _reason(answer["error"]), isinstance(answer["error"], http_errors()[2])


def _reason(exc: Exception) -> str:
    """A short reason for a failed listing: the HTTP status, or the error's type and text."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _memory_file(repo_id: str) -> Path:
    """``$SCALELENS_CACHE/hub-refs/<org>--<name>.json`` (``SCALELENS_CACHE`` read now)."""
    base = os.environ.get("SCALELENS_CACHE") or Path.home() / ".cache" / "scalelens"
    return Path(base).expanduser() / "hub-refs" / (repo_id.replace("/", "--") + ".json")


def _remember(repo_id: str, names: tuple[str, ...]) -> None:
    """Keep the hub's listing on disk, for when the hub cannot be asked (best effort)."""
    path = _memory_file(repo_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        part.write_text(json.dumps({"repo_id": repo_id, "revisions": list(names)}))
        os.replace(part, path)
    except OSError:  # a read-only cache: the listing is only not remembered
        pass


def _recalled(repo_id: str) -> list[str]:
    """The listing last remembered on disk for ``repo_id`` (empty when none can be read)."""
    try:
        data = json.loads(_memory_file(repo_id).read_text())
    except (OSError, ValueError):
        return []
    names = data.get("revisions") if isinstance(data, dict) and data.get("repo_id") == repo_id else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
