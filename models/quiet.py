"""Keep transformers' per-call progress bars out of our own progress output."""

from __future__ import annotations

import functools
import importlib
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
        with _quiet_gguf_bar():
            yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """Silence the bar transformers' GGUF reader draws with plain tqdm (the switch above misses it)."""
    try:
        module = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # a transformers without GGUF support
        module = None
    bar = getattr(module, "tqdm", None)
    if bar is None:
        yield
        return
    module.tqdm = functools.partial(bar, disable=True)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.tqdm = bar  # type: ignore[union-attr]


class _NotALoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_load_report() -> Iterator[None]:
    """Keep transformers' multi-line ``LOAD REPORT`` warning off stderr; the caller reports instead.

    A filter, not a higher level: transformers logs another warning (its tensor-parallel plan
    check) whenever that logger's own level is WARNING or above.
    """
    logger = hf_logging.get_logger("transformers.modeling_utils")
    report_filter = _NotALoadReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)
