"""Hub access: offline mode, loading from the local cache when the hub cannot answer, clear errors.

Offline (``HF_HUB_OFFLINE``) or with the hub unreachable, a revision loads only if
the local cache holds all of it; otherwise the error says what is missing and how
to download it, and is a ``TransientError`` (retried by sweeps) only where the hub
coming back could fix it.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import ScalelensError, ScalelensWarning, TransientError, first_line
from .hub_cache import COMMIT, cached_revisions, cached_snapshot, hub_cache_dir, missing_files, revision_key
from .pythia import pythia_revisions

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (read at call time) asks for the local cache only."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def use_cache_only(
    repo_id: str,
    revision: str,
    cache_dir: str | Path | None,
    gguf_file: str | None = None,
    tokenizer: bool = True,
    model: bool = True,
) -> bool:
    """Whether to load ``repo_id@revision`` from the local cache alone; raise where that cannot work.

    Offline: True once the cache is found to hold all the load needs (else a
    ``ScalelensError``: retrying cannot help). Online: False while the hub answers.
    When it cannot be reached, True for a fully cached revision, with a warning,
    instead of the hub client's minutes of retries for files a snapshot never had;
    a ``TransientError`` naming what is missing otherwise.

    Args:
        repo_id: Hub id.
        revision: Branch, tag or commit hash.
        cache_dir: Hub cache directory (default ``HF_HUB_CACHE``).
        gguf_file: For a GGUF load, the one file it needs.
        tokenizer: Whether the tokenizer comes from the repo too.
        model: Whether the model does (False: a tokenizer given by hub id).
    """
    snapshot = cached_snapshot(repo_id, revision, cache_dir)
    missing = None if snapshot is None else missing_files(snapshot, gguf_file, tokenizer, model)
    if is_offline():
        if missing != []:
            raise _offline_gap(repo_id, revision, cache_dir, missing)
        return True
    why = hub_unreachable(repo_id, revision)
    if why is None:
        return False
    if missing != []:
        raise _unreachable_gap(repo_id, revision, cache_dir, missing, why)
    warnings.warn(f"the hub cannot be reached ({why}); loading {repo_id}@{revision} from the "
                  f"local cache {hub_cache_dir(cache_dir)}", ScalelensWarning, stacklevel=5)
    return True


UNREACHABLE_MEMORY_S = 60.0
"""How long a hub that timed out is taken to stay so before it is asked again."""

_unreachable: dict[str, tuple[float, str]] = {}  # endpoint -> (time.monotonic() of the timeout, why)


def hub_unreachable(repo_id: str, revision: str) -> str | None:
    """Why the hub cannot answer about ``repo_id@revision`` (one request, no retries).

    ``None`` when it answers at all, "not found" or "gated" included: the regular
    loading path reports those. A connection failure, a timeout
    (``HF_HUB_ETAG_TIMEOUT``) or a server error (5xx) make it unreachable; a
    misconfigured proxy does not (the regular path reports it).

    A timeout is remembered for ``UNREACHABLE_MEMORY_S`` per endpoint: a sweep of many
    checkpoints against a hub that hangs waits out the timeout once a minute, not once
    per task and retry; the reason then says how long ago it was found. Failures that
    cost no wait (a refused connection, no network, a 5xx) are asked again every time,
    so a network fixed in the meantime is seen at the next load.
    """
    seen = recent_timeout()
    if seen is not None:
        return seen
    why, timed_out = _ask_hub(repo_id, revision)
    remember_answer(why, timed_out)
    return why


def recent_timeout() -> str | None:
    """Why the hub (``HF_ENDPOINT``) timed out within ``UNREACHABLE_MEMORY_S``; ``None`` if it did not."""
    from huggingface_hub import constants

    seen = _unreachable.get(constants.ENDPOINT)
    if seen is None:
        return None
    age = time.monotonic() - seen[0]
    if age >= UNREACHABLE_MEMORY_S:
        return None
    return f"{seen[1]}; found {age:.0f} s ago, not asked again for {UNREACHABLE_MEMORY_S:.0f} s"


def remember_answer(why: str | None, timed_out: bool) -> None:
    """Record how the hub answered a question: a timeout is remembered, anything else forgets it."""
    from huggingface_hub import constants

    if timed_out:
        _unreachable[constants.ENDPOINT] = (time.monotonic(), why or "timeout")
    else:
        _unreachable.pop(constants.ENDPOINT, None)


def _ask_hub(repo_id: str, revision: str) -> tuple[str | None, bool]:
    """One ``repo_info`` request: why it could not be answered (``None`` when it was).

    And whether it timed out: waited ``HF_HUB_ETAG_TIMEOUT`` for nothing.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    transport, proxy, timeout = http_errors()
    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except proxy:
        return None, False
    except transport as exc:
        return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                isinstance(exc, timeout))
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        return (f"HTTP {status}" if status >= 500 else None), False
    return None, False


def http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...],
                            tuple[type[BaseException], ...]]:
    """``(TransportError, ProxyError, TimeoutException)`` classes of the HTTP client huggingface_hub uses.

    ``httpx2`` in huggingface_hub 2, ``httpx`` in 1.x; whichever is installed.
    """
    transport: list[type[BaseException]] = []
    proxy: list[type[BaseException]] = []
    timeout: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        transport.append(module.TransportError)
        proxy.append(module.ProxyError)
        timeout.append(module.TimeoutException)
    return tuple(transport), tuple(proxy), tuple(timeout)


def download_hint(repo_id: str, revision: str, cache_dir: str | Path | None) -> str:
    """The ``hf`` command that downloads ``repo_id@revision`` into the cache in use."""
    where = f" --cache-dir {hub_cache_dir(cache_dir)}" if cache_dir is not None else ""
    return f"hf download {repo_id} --revision {revision}{where}"


def _offline_gap(
    repo_id: str, revision: str, cache_dir: str | Path | None, missing: list[str] | None
) -> ScalelensError:
    """The error for a revision HF_HUB_OFFLINE keeps from loading: not or only partly cached."""
    hint = download_hint(repo_id, revision, cache_dir)
    if cached_revisions(repo_id, cache_dir) is None:
        return ScalelensError(
            f"{repo_id} is not in the hub cache {hub_cache_dir(cache_dir)} and HF_HUB_OFFLINE "
            f"is set; download it first ({hint}) or pass a local path"
        )
    unknown = _unknown_pythia(repo_id, revision, missing)
    if unknown is not None:
        return unknown
    return ScalelensError(
        f"{_gap(repo_id, revision, cache_dir, missing)} and HF_HUB_OFFLINE is set; "
        f"download it where the hub can be reached: {hint}"
    )


def _unreachable_gap(
    repo_id: str, revision: str, cache_dir: str | Path | None, missing: list[str] | None, why: str
) -> ScalelensError:
    """The error for a revision not (fully) cached while the hub cannot be reached.

    Transient, as the hub may come back; unless Pythia has no such revision at all.
    """
    unknown = _unknown_pythia(repo_id, revision, missing)
    if unknown is not None:
        return unknown
    return TransientError(
        f"could not load {repo_id}@{revision}: the hub cannot be reached ({why}) and "
        f"{_gap(repo_id, revision, cache_dir, missing)}; retry when it can be reached, "
        f"or download it: {download_hint(repo_id, revision, cache_dir)}"
    )


def _gap(repo_id: str, revision: str, cache_dir: str | Path | None, missing: list[str] | None) -> str:
    """What the cache lacks of ``repo_id@revision``: all of it (``missing`` None), or some files."""
    where = hub_cache_dir(cache_dir)
    if missing is not None:
        lacking = ", ".join(missing)
        return f"{repo_id}@{revision} is only partly in the local hub cache {where} (missing: {lacking})"
    known = cached_revisions(repo_id, cache_dir)
    listing = f" (cached: {abbreviate(known)})" if known else ""
    return f"{repo_id}@{revision} is not in the local hub cache {where}{listing}"


def _unknown_pythia(repo_id: str, revision: str, missing: list[str] | None) -> ScalelensError | None:
    """For an uncached revision a Pythia repo does not have, the unknown-revision error."""
    known = pythia_revisions(repo_id)
    if missing is not None or known is None or revision in known or COMMIT.fullmatch(revision):
        return None
    return unknown_revision(repo_id, revision, list(known))


def unknown_revision(repo_id: str, revision: str, known: list[str] | None) -> ScalelensError:
    """The error for a revision the repo does not have, naming the ones it has."""
    listing = f"available: {abbreviate(known)}" if known else "check the revision name"
    return ScalelensError(f"unknown revision {revision!r} for {repo_id}; {listing}")


def abbreviate(names: Sequence[str], limit: int = 12) -> str:
    """``names`` joined by commas; past ``limit``, the first and last halves around ``...``."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit // 2] + ["..."] + names[-limit // 2 :])


def remote_revisions(repo_id: str) -> list[str] | None:
    """Branches and tags on the hub, or ``None`` when the hub cannot be asked.

    Asked as a sweep's planning asks (:func:`~scalelens.models.hub_refs.hub_names`): at most
    ``HF_HUB_ETAG_TIMEOUT`` seconds of waiting, a listing of the last minutes reused.
    """
    from .hub_refs import hub_names

    names = hub_names(repo_id)[0]
    return None if names is None else sorted(names, key=revision_key)


def explain_failure(
    repo_id: str, revision: str, cache_dir: str | Path | None, exc: Exception
) -> ScalelensError:
    """Turn a ``from_pretrained`` failure for a hub id into one actionable line.

    Only the hub's own listing makes a revision unknown; the local cache cannot (a
    revision not downloaded yet may well exist). Offline, nothing changes between
    tries, so the error is not transient.
    """
    remote = remote_revisions(repo_id)
    if remote is not None and revision not in remote and not COMMIT.fullmatch(revision):
        return unknown_revision(repo_id, revision, remote)
    detail = first_line(exc)
    error = ScalelensError if is_offline() else TransientError
    return error(f"could not load {repo_id}@{revision}: {detail}")
