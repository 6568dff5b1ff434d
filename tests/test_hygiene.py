"""The test run itself: it writes nothing to the user's home, caches or checkout (conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

from scalelens.models.suite import default_suite_dir


def test_home_and_the_default_caches_are_the_runs_own():
    """Ray's ~/.ray/auth_token, Chromium's ~/.config/chromium and matplotlib's font cache were
    written to the user's home, and with SCALELENS_CACHE or HF_HOME set a test reached their
    caches; Hypothesis wrote ./.hypothesis into the checkout."""
    from huggingface_hub import constants
    from hypothesis.configuration import storage_directory

    home = Path.home()
    assert home.name == "home" and home.parent.name.startswith("scalelens-tests-"), home
    assert Path(constants.HF_HUB_CACHE).is_relative_to(home), constants.HF_HUB_CACHE
    assert default_suite_dir().is_relative_to(home), default_suite_dir()
    assert storage_directory("examples", intent_to_write=False).path.is_relative_to(home.parent)
    assert Path(os.environ["RAY_TMPDIR"]) == home.parent


def test_a_variable_a_test_sets_directly_is_gone_for_the_next_test_1():
    """Libraries set os.environ directly (a local ray.init() sets RAY_AUTH_MODE=token): the
    next test must not inherit it. This test sets one; the next (run after it) checks."""
    os.environ["SCALELENS_HYGIENE_PROBE"] = "set by the previous test"
    os.environ["HOME"] = "/nonexistent-home"


def test_a_variable_a_test_sets_directly_is_gone_for_the_next_test_2():
    assert "SCALELENS_HYGIENE_PROBE" not in os.environ
    assert os.environ["HOME"] != "/nonexistent-home"
