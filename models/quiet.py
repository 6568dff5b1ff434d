"""Keep transformers' per-call progress bars out of our own progress output."""

from __future__ import annotations

import logging
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



def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_load_report() -> Iterator[None]:
    """Keep transformers' multi-line ``LOAD REPORT`` warning off stderr; the caller reports instead.

    A filter, not a higher level: transformers logs another warning (its tensor-parallel plan
    check) whenever that logger's own level is WARNING or above.
    """
    logger = hf_logging.get_logger("transformers.modeling_utils")
    logger.addFilter(_not_a_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_load_report)
