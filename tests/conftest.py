"""Shared pytest fixtures. Sections are owned by different parts of the package."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

# A test run started in the background (`pytest &` in a script, as a CI job may be) inherits
# SIGINT ignored, and so would every command the tests start, where Python then installs no
# KeyboardInterrupt handler: the Ctrl-C tests would see a command that cannot be interrupted.
# A terminal's Ctrl-C is what they model, so the children start with SIGINT's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)



def _refused_endpoint() -> str:
    """A local URL whose port nothing listens on: every request is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# Tests never reach the real Hugging Face hub: by default it is a refused local port (set
# before huggingface_hub is imported, which reads it once; commands the tests start inherit
# it). Where the network is up, a hub id in a test would otherwise be asked for real (its
# listing, its files), or wait out a timeout where packets are dropped. Tests of a reachable
# hub point HF_ENDPOINT at their own fake hub.
os.environ["HF_ENDPOINT"] = _refused_endpoint()

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
