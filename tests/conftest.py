"""Shared pytest fixtures. Sections are owned by different parts of the package."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------
# models: the micro mini-Pythia suite, built once per test session (~2 s)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def micro_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a freshly built ``micro`` suite (read it with ``read_manifest``).

    Four GPT-NeoX sizes trained on the same token stream, checkpoints at every
    manifest step under ``<dir>/<size>/step<N>``. Treat it as read-only; copy it
    (``shutil.copytree``) before modifying anything.
    """
    from scalelens.models.suite import build_suite

    out = tmp_path_factory.mktemp("micro_suite") / "suite"
    build_suite(out, preset="micro", progress=False)
    return out
