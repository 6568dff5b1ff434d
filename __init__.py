"""scalelens: interpretability measurements across model scale and training."""

from __future__ import annotations

__version__ = "0.1.0"
