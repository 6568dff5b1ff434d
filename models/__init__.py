"""Model loading, parameter counts, Pythia facts and the mini Pythia-style suite.

``load_model`` and ``LoadedModel`` are imported lazily so that importing the
package (e.g. for CLI registration) does not pull in torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .info import ModelInfo

if TYPE_CHECKING:
    from .load import LoadedModel, load_model

__all__ = ["LoadedModel", "ModelInfo", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "LoadedModel"):
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
