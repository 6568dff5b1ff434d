"""Shared helpers for the analyses: input checks and JSON conversion."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from scalelens.errors import ScalelensError


def jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON data.

    Numpy scalars and arrays become Python numbers and lists, tuples become
    lists, dataclasses become dicts, and non-finite floats (NaN, +-inf) become
    ``None`` because strict JSON has no spelling for them.

    Args:
        value: Any nesting of dicts, lists, tuples, dataclasses, numpy values.

    Returns:
        The same data built from dict, list, str, int, float, bool and None.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_array(name: str, value: Any, ndim: int, kind: str) -> np.ndarray:
    """Return ``value`` as an array, checking its rank and dtype kind.

    Args:
        name: Argument name used in the error message.
        value: Array-like input.
        ndim: Required number of dimensions.
        kind: Allowed numpy dtype kinds, e.g. ``"f"``, ``"iu"``, ``"fiu"``, ``"b"``.

    Returns:
        The input as a numpy array (no copy when already an array).

    Raises:
        ScalelensError: If the rank or dtype kind is wrong.
    """
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ScalelensError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in kind:
        raise ScalelensError(f"{name} must have dtype kind in {kind!r}, got {arr.dtype}")
    return arr


def check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise ScalelensError unless ``arr.shape == shape``."""
    if arr.shape != shape:
        raise ScalelensError(f"{name} must have shape {shape}, got {arr.shape}")


def layer_thirds(n_layers: int) -> dict[str, list[int]]:
    """Split layers ``0..n_layers-1`` into early, middle and late thirds.

    The split is ``numpy.array_split(range(n_layers), 3)``: when ``n_layers`` is
    not a multiple of three the earlier groups get one extra layer each
    (e.g. 16 layers -> 6, 5, 5; 32 -> 11, 11, 10).

    Args:
        n_layers: Number of layers, at least 3.

    Returns:
        ``{"early": [...], "middle": [...], "late": [...]}`` with layer indices.

    Raises:
        ScalelensError: If there are fewer than three layers.
    """
    if n_layers < 3:
        raise ScalelensError(f"need at least 3 layers to form thirds, got {n_layers}")
    parts = np.array_split(np.arange(n_layers), 3)
    names = ("early", "middle", "late")
    return {name: [int(i) for i in part] for name, part in zip(names, parts, strict=True)}
