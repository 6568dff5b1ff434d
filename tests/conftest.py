"""Shared pytest fixtures. Sections are owned by different parts of the package."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from net import refused_endpoint

# A test run started in the background (`pytest &` in a script, as a CI job may be) inherits
# SIGINT ignored, and so would every command the tests start, where Python then installs no
# KeyboardInterrupt handler: the Ctrl-C tests would see a command that cannot be interrupted.
# A terminal's Ctrl-C is what they model, so the children start with SIGINT's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------------------
# isolation: no test writes to the user's home, caches or checkout, or sees their settings
# ---------------------------------------------------------------------------

# Variables that point libraries (and scalelens) at the user's own folders. HOME becomes a
# fresh folder for the run: Ray writes ~/.ray/auth_token when a test starts a local cluster,
# Chromium ~/.config/chromium, matplotlib ~/.cache/matplotlib, and huggingface_hub and
# scalelens default to caches under ~/.cache. The others are unset so that those defaults,
# under the new HOME, are what the tests see (a test that needs one sets it itself).
_UNSET = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME", "HF_HUB_CACHE",
          "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "TRANSFORMERS_CACHE", "SCALELENS_CACHE")
_SANDBOX = "scalelens_sandbox"
_saved_environ: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Point HOME, Ray's temp folder and Hypothesis's storage at one fresh folder for the run.

    Set here, before the test modules import huggingface_hub (which reads its cache folder
    once, at import); the processes the tests start inherit it.
    """
    _saved_environ.update(os.environ)
    # under /tmp, short: Ray's socket paths there must stay under 108 bytes
    sandbox = Path(tempfile.mkdtemp(prefix="scalelens-tests-", dir="/tmp" if os.path.isdir("/tmp") else None))
    setattr(config, _SANDBOX, sandbox)
    for name in _UNSET:
        os.environ.pop(name, None)
    os.environ["HOME"] = str(sandbox / "home")
    # Tests never reach the real Hugging Face hub: it is a refused local port (where the
    # network is up, a hub id in a test was asked for real, or waited out a timeout where
    # packets are dropped). Tests of a reachable hub point HF_ENDPOINT at their own fake hub.
    os.environ["HF_ENDPOINT"] = refused_endpoint()
    os.environ["RAY_TMPDIR"] = str(sandbox)  # the sessions of local clusters: sandbox/ray
    # Hypothesis keeps examples and constants in ./.hypothesis, the checkout when run from it
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(sandbox / "hypothesis"))
    (sandbox / "home").mkdir()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the environment the run started with and delete the run's sandbox folder."""
    sandbox = getattr(config, _SANDBOX, None)
    if sandbox is None:
        return
    os.environ.clear()
    os.environ.update(_saved_environ)
    shutil.rmtree(sandbox, ignore_errors=True)


@pytest.fixture(autouse=True)
def _environ_restored() -> Iterator[None]:
    """Give each test the environment the previous one started with.

    Libraries set variables in ``os.environ`` directly and keep them: a local ``ray.init()``
    sets ``RAY_AUTH_MODE=token`` (every Ray cluster a later test starts then used token
    authentication). Runs after ``monkeypatch``'s undo.
    """
    before = dict(os.environ)
    yield
    for name in set(os.environ) - set(before):
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


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
