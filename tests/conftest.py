"""Shared pytest fixtures. Sections are owned by different parts of the package."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

# A test run started in the background (`pytest &` in a script, as a CI job may be) inherits
# SIGINT ignored, and so would every command the tests start, where Python then installs no
# KeyboardInterrupt handler: the Ctrl-C tests would see a command that cannot be interrupted.
# A terminal's Ctrl-C is what they model, so the children start with SIGINT's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


# ---------------------------------------------------------------------------
# a tiny random GPT-NeoX saved as an HF directory with its word tokenizer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/tiny_models.py``'s GPT-NeoX and word tokenizer saved in one directory (read-only)."""
    from tiny_models import tiny_model, word_tokenizer

    d = tmp_path_factory.mktemp("tiny") / "gpt_neox"
    tiny_model().save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return d
