"""Load the JSON files of a run: fits (`fits.json`) and run settings (`run.json`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analyses.trends import StepTrend
from ..errors import ScalelensError
from ..textfiles import read_utf8

SUPPORTED_VERSION = 1
DEFAULT_DYNAMICS_METRIC = "massive_activations.ratio"


@dataclass(frozen=True)
class ScalingFit:
    """One fit of a metric against parameter count.

    ``form`` is ``power_law`` (y = a N^b) or ``saturating`` (y = C N^-alpha + y_inf);
    ``ci`` maps parameter names to confidence intervals, made as ``ci_method`` says
    (``ols_t``: the log-log regression's t interval; ``profile_likelihood``;
    ``bootstrap_percentile`` in older files; "" when fits.json does not say, as files
    written before the power law's t interval did). An end the data leave open (null in
    fits.json) is -inf / inf.
    """

    metric: str
    x_name: str
    form: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    r2: float | None = None
    loo_rel_error: float | None = None
    n_points: int = 0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    note: str = ""
    ci_method: str = ""


@dataclass(frozen=True)
class DynamicsFit:
    """A fit of f(t) = A exp(-lambda x) log(x) + K, x = gamma t + t0, for one size and layer."""

    size: str
    layer: int
    params: dict[str, float]
    r2: float | None = None
    peak_step: float | None = None
    metric: str = DEFAULT_DYNAMICS_METRIC
    model: str | None = None


@dataclass(frozen=True)
class Fits:
    """Everything in fits.json; both lists are empty when the file is absent."""

    scaling: tuple[ScalingFit, ...] = ()
    dynamics: tuple[DynamicsFit, ...] = ()
    notes: tuple[str, ...] = ()  # why there are no scaling fits, when there are none
    trends: tuple[StepTrend, ...] = ()  # each metric over training, per size
    last_steps: tuple[tuple[str, int | None], ...] = ()  # (size, step) each size was compared at

    def last_step(self, size: str) -> int | None:
        """The step the fits compared ``size`` at; None when fits.json does not say (or `final_model`)."""
        return dict(self.last_steps).get(size)

    def final_model(self, size: str) -> bool:
        """Whether the fits compared ``size`` at a model measured without a training step."""
        steps = dict(self.last_steps)
        return size in steps and steps[size] is None


def _num(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return None if math.isnan(out) else out


def _interval(value: Any) -> tuple[float, float]:
    """``[lo, hi]``; JSON's null ends (an interval the data leave open) become -inf / inf."""
    lo, hi = value
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def _scaling(entry: dict[str, Any]) -> ScalingFit:
    if len(entry.get("x") or ()) != len(entry.get("y") or ()):
        raise ValueError("its x and y differ in length")
    return ScalingFit(
        metric=str(entry["metric"]),
        x_name=str(entry.get("x_name", "n_params")),
        form=str(entry["form"]),
        params={k: float(v) for k, v in entry["params"].items()},
        ci={k: _interval(v) for k, v in (entry.get("ci") or {}).items()},
        r2=_num(entry.get("r2")),
        loo_rel_error=_num(entry.get("loo_rel_error")),
        n_points=int(entry.get("n_points") or len(entry.get("x") or ())),
        x=tuple(float(v) for v in entry.get("x") or ()),
        y=tuple(float(v) for v in entry.get("y") or ()),
        note=str(entry.get("note") or ""),
        ci_method=str(entry.get("ci_method") or ""),
    )


def _dynamics(entry: dict[str, Any]) -> DynamicsFit:
    return DynamicsFit(
        size=str(entry["size"]),
        layer=int(entry["layer"]),
        params={k: float(v) for k, v in entry["params"].items()},
        r2=_num(entry.get("r2")),
        peak_step=_num(entry.get("peak_step")),
        metric=str(entry.get("metric") or DEFAULT_DYNAMICS_METRIC),
        model=entry.get("model"),
    )


def _entries(doc: dict[str, Any], name: str, parse: Any, path: Path) -> tuple:
    entries = doc.get(name) or []
    if not isinstance(entries, list):
        raise ScalelensError(f"{path}: '{name}' must be a list, got {type(entries).__name__}; "
                             "regenerate fits.json with the sweep")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(parse(entry))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ScalelensError(
                f"{path}: entry {i} of '{name}' is malformed ({type(exc).__name__}: {exc}); "
                "regenerate fits.json with the sweep"
            ) from None
    return tuple(out)


def load_fits(path: Path) -> Fits:
    """Read ``fits.json``; a missing file means no fits.

    Args:
        path: Path of the JSON file.

    Returns:
        The parsed fits.

    Raises:
        ScalelensError: The file is not valid JSON, has a newer version, or an entry is malformed.
    """
    if not path.is_file():
        return Fits()
    try:
        doc = json.loads(read_utf8(path, "fits file"))
    except json.JSONDecodeError as exc:
        raise ScalelensError(f"{path} is not valid JSON ({exc}); regenerate it with the sweep") from None
    if not isinstance(doc, dict):
        raise ScalelensError(f"{path} must hold a JSON object; regenerate it with the sweep")
    version = doc.get("version", SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION:
        raise ScalelensError(
            f"{path} has version {version!r}, this scalelens reads version {SUPPORTED_VERSION}; "
            "use the scalelens version that wrote it"
        )
    return Fits(
        scaling=_entries(doc, "fits", _scaling, path),
        dynamics=_entries(doc, "dynamics", _dynamics, path),
        notes=_entries(doc, "notes", str, path),
        trends=_entries(doc, "step_trends", StepTrend.from_dict, path),
        last_steps=_last_steps(doc.get("last_steps") or {}, path),
    )


def _last_steps(value: Any, path: Path) -> tuple[tuple[str, int | None], ...]:
    """fits.json's ``last_steps``: a step per size, null for a final model (measured without one)."""
    if not isinstance(value, dict) or not all(v is None or type(v) is int for v in value.values()):
        raise ScalelensError(f"{path}: last_steps must map sizes to steps; regenerate it with the sweep")
    return tuple((str(k), v) for k, v in value.items())


def load_run_info(path: Path) -> dict[str, Any] | None:
    """Read the optional ``run.json``; None when absent.

    Args:
        path: Path of the JSON file.

    Returns:
        The decoded object, or None if the file does not exist.

    Raises:
        ScalelensError: The file exists but is not a JSON object.
    """
    if not path.is_file():
        return None
    try:
        doc = json.loads(read_utf8(path, "run file"))
    except json.JSONDecodeError as exc:
        raise ScalelensError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(doc, dict):
        raise ScalelensError(f"{path} must hold a JSON object; fix or delete it")
    return doc
