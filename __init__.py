"""scalelens: interpretability measurements across model scale and training.

The main entry points load lazily from here (``import scalelens`` stays light)::

    import scalelens
    lm = scalelens.load_model("EleutherAI/pythia-160m", checkpoint=3000)
    with scalelens.attach(lm, [scalelens.preset("resid")], out="x.h5") as run:
        run.feed(["The quick brown fox"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "attach": "scalelens.capture",
    "load_model": "scalelens.models.load",
    "LoadedModel": "scalelens.models.load",
    "CaptureFile": "scalelens.cache.reader",
    "ProbeSpec": "scalelens.probes.spec",
    "Positions": "scalelens.probes.spec",
    "preset": "scalelens.probes.spec",
    "MeasureSettings": "scalelens.measure.run",
    "SweepSpec": "scalelens.sweeps.spec",
    "sweep": "scalelens.sweeps.run",
    "render_report": "scalelens.reports.render",
    "ScalelensError": "scalelens.errors",
    "ScalelensNote": "scalelens.errors",
    "ScalelensWarning": "scalelens.errors",
}
"""Public names and the modules that define them (``capture`` and ``measure`` are the
subpackages; their functions are ``scalelens.capture.capture`` and ``scalelens.measure.run.measure``)."""

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scalelens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
