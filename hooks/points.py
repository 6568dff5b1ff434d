"""Typed capture points: the named places in a decoder layer that probes can read."""

from __future__ import annotations

from enum import StrEnum


class CapturePoint(StrEnum):
    """A place in each decoder layer whose value a probe can capture.

    ``resid_pre``/``resid_post`` are the residual stream entering/leaving the layer;
    ``attn_out``/``mlp_out`` the outputs of the attention and MLP sub-modules;
    ``attn_pattern`` the per-head attention probabilities (query x key);
    ``q``/``k`` the per-head queries and keys after rotary embedding;
    ``logits`` the LM head output (one pseudo-layer, index ``n_layers``).
    """

    RESID_PRE = "resid_pre"
    RESID_POST = "resid_post"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
    ATTN_PATTERN = "attn_pattern"
    Q = "q"
    K = "k"
    LOGITS = "logits"

    @property
    def is_residual_like(self) -> bool:
        """True for points shaped (batch, seq, d_model)."""
        return self in _RESIDUAL_LIKE

    @property
    def is_module_output(self) -> bool:
        """True for points read by a hook on a module (residual-like points and logits)."""
        return self.is_residual_like or self is CapturePoint.LOGITS

    @property
    def from_attention_tap(self) -> bool:
        """True for points read inside the attention function (per head)."""
        return self in _ATTENTION_TAP


_RESIDUAL_LIKE = frozenset(
    {CapturePoint.RESID_PRE, CapturePoint.RESID_POST, CapturePoint.ATTN_OUT, CapturePoint.MLP_OUT}
)
_ATTENTION_TAP = frozenset({CapturePoint.ATTN_PATTERN, CapturePoint.Q, CapturePoint.K})


def parse_point(name: str) -> CapturePoint:
    """Parse a capture point name, raising a one-line error listing valid names."""
    from scalelens.errors import ScalelensError

    try:
        return CapturePoint(name)
    except ValueError:
        valid = ", ".join(p.value for p in CapturePoint)
        raise ScalelensError(f"unknown capture point {name!r}; valid points: {valid}") from None
