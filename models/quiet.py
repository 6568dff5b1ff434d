"""Keep transformers' per-call progress bars out of our own progress output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as hf_logging


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Silence transformers' load/save progress bars, restoring the previous state after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
