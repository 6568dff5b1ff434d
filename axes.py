"""The axis vocabulary, defined once and stored with every HDF5 dataset."""

from __future__ import annotations

from enum import StrEnum


class Axis(StrEnum):
    """Names of array axes; every stored dataset lists its axes in this vocabulary."""

    PROMPT = "prompt"
    BATCH = "batch"
    SEQ = "seq"
    KV_SEQ = "kv_seq"
    QUERY = "query"
    LAYER = "layer"
    HEAD = "head"
    D_MODEL = "d_model"
    D_HEAD = "d_head"
    NEURON = "neuron"
    VOCAB = "vocab"
    TOPK = "topk"
    FIELD = "field"


def axes_attr(axes: tuple[Axis, ...] | list[Axis]) -> list[str]:
    """Return axis names in the form stored as the ``axes`` attribute."""
    return [str(a) for a in axes]
