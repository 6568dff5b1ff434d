"""Probe specifications: what to capture, where, and how to reduce it on device."""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from scalelens.errors import ScalelensError, ScalelensWarning
from scalelens.hooks.points import CapturePoint, parse_point


class Reduction(StrEnum):
    """How a probe reduces a captured tensor before it leaves the device.

    ``full`` keeps the tensor (at the chosen positions); ``massive`` keeps the
    top-k |h| per layer with (position, dim, token) plus median |h|; ``top1`` keeps
    the top-1 attended key (and its probability) per head for the chosen query
    rows, or for ``logits`` the top-1 token (the greedy prediction) and its probability;
    ``norm`` keeps the L2 norm over ``d_model`` per position.
    """

    FULL = "full"
    MASSIVE = "massive"
    TOP1 = "top1"
    NORM = "norm"


class PositionKind(StrEnum):
    """Which sequence positions a probe reads."""

    ALL = "all"
    LAST = "last"
    INDICES = "indices"
    SEGMENT = "segment"


_MAX_POSITION = 2**31  # positions are stored as int32


def _repeated(values: tuple[int, ...]) -> list[int]:
    """The values listed more than once, sorted."""
    return sorted({x for x in values if values.count(x) > 1})


@dataclass(frozen=True)
class Positions:
    """Sequence positions a probe reads.

    Attributes:
        kind: ``all``, ``last``, ``indices`` or ``segment``.
        indices: Positions for ``indices``; negative counts from each prompt's end.
        segment: Segment label for ``segment`` (every token of that labelled piece).
        offset: Added to every ``segment`` position: ``-1`` selects the positions whose
            next-token prediction is the segment (the rows that produce an answer).
    """

    kind: PositionKind = PositionKind.ALL
    indices: tuple[int, ...] = ()
    segment: str | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", PositionKind(self.kind))
        except ValueError:
            raise ScalelensError(f"unknown positions kind {self.kind!r}; use all, last, indices or "
                                 "segment") from None
        object.__setattr__(self, "indices", _position_indices(self.indices))
        object.__setattr__(self, "offset", whole_number("positions offset", self.offset))
        if self.kind is PositionKind.INDICES and not self.indices:
            raise ScalelensError("positions of kind 'indices' need at least one index")
        if self.kind is PositionKind.SEGMENT and not self.segment:
            raise ScalelensError("positions of kind 'segment' need a segment label")
        far = [i for i in (*self.indices, self.offset) if abs(i) >= _MAX_POSITION]
        if far:
            raise ScalelensError(f"position or offset {far[0]} is out of range (|x| < {_MAX_POSITION:,})")
        twice = _repeated(self.indices)
        if twice:
            raise ScalelensError(f"position(s) {twice} listed more than once")

    @classmethod
    def parse(cls, text: str) -> Positions:
        """Parse ``all``, ``last``, ``segment:LABEL[@OFFSET]`` or comma-separated indices."""
        if text in ("all", "last"):
            return cls(PositionKind(text))
        if text.startswith("segment:"):
            label, _, offset = text.split(":", 1)[1].partition("@")
            try:
                return cls(PositionKind.SEGMENT, segment=label, offset=int(offset or 0))
            except ValueError:
                raise ScalelensError(f"bad segment offset in {text!r}; use segment:LABEL@-1") from None
        try:
            return cls(PositionKind.INDICES, indices=tuple(int(t) for t in text.split(",")))
        except ValueError:
            raise ScalelensError(
                f"bad positions {text!r}; use all, last, segment:LABEL or indices like 0,-1"
            ) from None


def whole_number(what: str, value: Any) -> int:
    """``value`` as an int: an int or numpy integer; a float, bool or string is refused by ``what``.

    ``int()`` would truncate 0.7 to position 0 and read "1" as 1, silently.
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ScalelensError(f"{what} must be an integer, got {value!r}")


def _position_indices(values: Any) -> tuple[int, ...]:
    """Position indices as ints: one index, or a list, tuple, range or array of them."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        values = (values,)
    return tuple(whole_number("a position index", v) for v in values)


def _indices(probe: str, what: str, values: Any) -> tuple[int, ...]:
    """Layer or head indices as a tuple of ints: one index, or a list, tuple, range or array of them."""
    try:
        if not hasattr(values, "__iter__"):
            return (operator.index(values),)
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise ScalelensError(f"probe {probe!r}: {what} must be integer indices (one, or a list of "
                             f"them) or None for all, got {values!r}") from None


_DTYPES = ("float16", "bfloat16", "float32")
# Probe names become HDF5 group names: no '/', no '.' or '..', nothing invisible.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: a capture point, where to read it, and its on-device reduction.

    Attributes:
        name: Unique name; the HDF5 group is ``probes/<name>`` (letters, digits, ``_``,
            ``-`` and ``.``, starting with a letter, digit or ``_``; at most 128 characters).
        point: The capture point read in every selected layer.
        layers: Layer indices, or None for all layers.
        heads: Head indices for per-head points, or None for all heads.
        positions: Which query/sequence positions to keep.
        reduction: The on-device reduction.
        dtype: Storage dtype of float tensors kept by ``full`` (``float16``, ``bfloat16``
            is stored as float32 since HDF5 lacks it, or ``float32``).
        topk: How many entries the ``massive`` reduction keeps per layer.
    """

    name: str
    point: CapturePoint
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    positions: Positions = field(default_factory=Positions)
    reduction: Reduction = Reduction.FULL
    dtype: str = "float16"
    topk: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "point", parse_point(str(self.point)))
        try:
            object.__setattr__(self, "reduction", Reduction(self.reduction))
        except ValueError:
            valid = ", ".join(r.value for r in Reduction)
            raise ScalelensError(f"probe {self.name!r}: unknown reduction {self.reduction!r}; "
                                 f"valid: {valid}") from None
        if isinstance(self.positions, str):
            object.__setattr__(self, "positions", Positions.parse(self.positions))
        if not isinstance(self.positions, Positions):
            raise ScalelensError(f"probe {self.name!r}: positions must be a Positions or a string "
                                 f"such as 'last' or '0,-1', got {self.positions!r}")
        for what in ("layers", "heads"):
            if getattr(self, what) is not None:
                object.__setattr__(self, what, _indices(self.name, what, getattr(self, what)))
        object.__setattr__(self, "topk", whole_number(f"probe {self.name!r}: topk", self.topk))
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ScalelensError(f"bad probe name {self.name!r}: use letters, digits, '_', '-' and '.', "
                                 "starting with a letter, digit or '_'")
        if self.layers is not None and not self.layers:
            raise ScalelensError(f"probe {self.name!r}: empty layer list; give layers or None for all")
        for what, values in (("layer", self.layers), ("head", self.heads)):
            twice = _repeated(values or ())
            if twice:
                raise ScalelensError(f"probe {self.name!r}: {what}(s) {twice} listed more than once")
        if self.heads is not None and not self.heads:
            raise ScalelensError(f"probe {self.name!r}: empty head list; give heads or None for all")
        if self.dtype not in _DTYPES:
            raise ScalelensError(f"probe dtype {self.dtype!r} not one of {', '.join(_DTYPES)}")
        if self.heads is not None and not self.point.from_attention_tap:
            raise ScalelensError(f"probe {self.name!r}: heads only apply to attn_pattern, q and k")
        needs = {
            Reduction.MASSIVE: self.point.is_residual_like,
            Reduction.NORM: self.point.is_residual_like,
            Reduction.TOP1: self.point in (CapturePoint.ATTN_PATTERN, CapturePoint.LOGITS),
            Reduction.FULL: True,
        }
        if not needs[self.reduction]:
            raise ScalelensError(
                f"probe {self.name!r}: reduction {self.reduction.value!r} does not apply to "
                f"point {self.point.value!r}"
            )
        if self.reduction is Reduction.MASSIVE and self.positions.kind is not PositionKind.ALL:
            raise ScalelensError(f"probe {self.name!r}: the massive summary reads all positions")
        if self.topk < 1:
            raise ScalelensError(f"probe {self.name!r}: topk must be >= 1")

    def resolve(self, n_layers: int, n_heads: int) -> ProbeSpec:
        """Return a copy with explicit layers/heads, checked against the model."""
        if self.point is CapturePoint.LOGITS:
            if self.layers not in (None, (n_layers,)):
                raise ScalelensError(f"probe {self.name!r}: logits have no layers; drop --layers")
            return dataclasses.replace(self, layers=(n_layers,))
        layers = tuple(range(n_layers)) if self.layers is None else self.layers
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ScalelensError(
                f"probe {self.name!r}: layer(s) {bad} out of range; the model has {n_layers} "
                f"layers (0..{n_layers - 1})"
            )
        heads = self.heads
        if self.point.from_attention_tap:
            heads = tuple(range(n_heads)) if heads is None else heads
            badh = [h for h in heads if not 0 <= h < n_heads]
            if badh:
                raise ScalelensError(
                    f"probe {self.name!r}: head(s) {badh} out of range; the model has {n_heads} "
                    f"heads (0..{n_heads - 1})"
                )
        return dataclasses.replace(self, layers=layers, heads=heads)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (stored in every capture)."""
        d = dataclasses.asdict(self)
        d["point"] = self.point.value
        d["reduction"] = self.reduction.value
        d["positions"] = {
            "kind": self.positions.kind.value,
            "indices": list(self.positions.indices),
            "segment": self.positions.segment,
            "offset": self.positions.offset,
        }
        d["layers"] = None if self.layers is None else list(self.layers)
        d["heads"] = None if self.heads is None else list(self.heads)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored with a warning."""
        import warnings

        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"ignoring unknown probe keys: {unknown}", ScalelensWarning, stacklevel=2)
        kw = {k: v for k, v in data.items() if k in names}
        pos = data.get("positions") or {}
        pos_names = {f.name for f in dataclasses.fields(Positions)}
        if not isinstance(pos, dict) or set(pos) - pos_names:
            raise ScalelensError(f"bad probe positions {pos!r}; keys: {', '.join(sorted(pos_names))}")
        kw["positions"] = Positions(**pos)
        if "name" not in kw or "point" not in kw:
            raise ScalelensError(f"a probe spec needs 'name' and 'point', got keys {sorted(data)}")
        return cls(**kw)


def specs_to_json(specs: list[ProbeSpec]) -> str:
    """Serialise probe specs canonically (used to detect incompatible resumes)."""
    return json.dumps([s.to_dict() for s in specs], sort_keys=True)


PRESETS: dict[str, dict[str, Any]] = {
    "resid": {"point": "resid_post"},
    "resid_pre": {"point": "resid_pre"},
    "attn_out": {"point": "attn_out"},
    "mlp_out": {"point": "mlp_out"},
    "attn": {"point": "attn_pattern", "dtype": "float32"},
    "q": {"point": "q"},
    "k": {"point": "k"},
    "massive": {"point": "resid_post", "reduction": "massive"},
    "top1": {"point": "attn_pattern", "reduction": "top1", "positions": Positions(PositionKind.LAST)},
    "norms": {"point": "resid_post", "reduction": "norm"},
    "predictions": {"point": "logits", "reduction": "top1", "positions": Positions(PositionKind.LAST)},
}


def preset(
    name: str,
    layers: tuple[int, ...] | None = None,
    positions: Positions | None = None,
    dtype: str | None = None,
    heads: tuple[int, ...] | None = None,
) -> ProbeSpec:
    """Build a probe from a preset name used by the CLI (``resid``, ``attn``, ``massive``...).

    A capture point name (``resid_post``, ``attn_pattern``...) gives a ``full`` probe of
    that point. ``heads`` applies to per-head points (attention, q, k) only.
    """
    if name in PRESETS:
        kw = dict(PRESETS[name])
    elif name in {p.value for p in CapturePoint}:
        kw = {"point": name, "dtype": "float32"} if name == "attn_pattern" else {"point": name}
    else:
        points = ", ".join(p.value for p in CapturePoint)
        raise ScalelensError(f"unknown probe {name!r}; choose a preset ({', '.join(PRESETS)}) or a "
                             f"capture point ({points})")
    kw["point"] = CapturePoint(kw["point"])
    if positions is not None and kw.get("reduction") != "massive":
        kw["positions"] = positions
    if dtype is not None and kw.get("reduction", "full") == "full":
        kw["dtype"] = dtype
    if heads is not None and kw["point"].from_attention_tap:
        kw["heads"] = heads
    return ProbeSpec(name=name, layers=layers, **kw)
