"""Massive activations on a live model: summary capture and the zero-vs-mean intervention."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelens.analyses.from_capture import MASSIVE_PROBE, massive_from_capture
from scalelens.analyses.massive import MassiveResult
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks.arch import decoder_layers
from scalelens.measure.text import probe_sequences
from scalelens.probes.prompts import as_prompts, tokenize
from scalelens.probes.spec import ProbeSpec

# Far more probe sequences than a measurement averages over (the default is 10): a typo's
# 10**8 would spend hours building sequences before the first forward pass.
MAX_SEQUENCES = 100_000


@dataclass(frozen=True)
class MassiveSettings:
    """Settings of the massive-activation measurement.

    Attributes:
        n_sequences: Probe sequences (the dynamics paper averages over 10).
        length: Tokens per sequence; None: min(256, context).
        text: A text file for the probe sequences, or None for built-in text.
        topk: Entries kept per (prompt, layer) by the on-device summary.
        ratio_threshold: Ratio-only rule bar for small models.
        intervene: Run the zero-vs-mean intervention.
        batch_size: Prompts per forward pass.
    """

    n_sequences: int = 10
    length: int | None = None
    text: str | None = None
    topk: int = 16
    ratio_threshold: float = 100.0
    intervene: bool = True
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.n_sequences < 1:
            raise ScalelensError("massive activations need at least one probe sequence")
        if self.n_sequences > MAX_SEQUENCES:
            raise ScalelensError(f"--n-sequences must be at most {MAX_SEQUENCES:,}, got {self.n_sequences:,}")


def _delimiters(tokenizer: Any) -> list[int]:
    ids = set()
    for text in (".", "\n", " ."):
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, attr, None) is not None:
            ids.add(int(getattr(tokenizer, attr)))
    return sorted(ids)


def measure_massive(loaded: Any, s: MassiveSettings, out: Path, overwrite: bool = False,
                    progress: bool = True) -> tuple[MassiveResult, dict[str, Any] | None]:
    """Capture the summary probe over the probe text, analyse it, and intervene."""
    length = s.length or min(256, loaded.info.max_position)
    texts = probe_sequences(loaded, s.text, s.n_sequences, length)
    probe = ProbeSpec(MASSIVE_PROBE, "resid_post", reduction="massive", topk=s.topk)
    capture(loaded, [probe], texts, out, batch_size=s.batch_size, overwrite=overwrite, reuse_complete=True,
            progress=progress)
    with CaptureFile(out) as f:
        result = massive_from_capture(f, delimiter_ids=_delimiters(loaded.tokenizer),
                                      ratio_threshold=s.ratio_threshold)
    effect = intervention(loaded, result, texts) if s.intervene else None
    return result, effect


def _site(result: MassiveResult) -> tuple[int, list[int]] | None:
    """Layer and dims to intervene on: Sun-rule entries, else the ratio rule, else none."""
    if result.first_layer is not None:
        return result.first_layer, result.dims
    if result.ratio_first_layer is not None:
        return result.ratio_first_layer, result.ratio_dims
    return None


def loss(loaded: Any, ids: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over the valid positions of right-padded ``ids``."""
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids, attention_mask=valid.long()).logits[:, :-1].float()
    target = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
    return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100))


def intervention(loaded: Any, result: MassiveResult, texts: list[str]) -> dict[str, Any]:
    """Loss on the probe text with the massive activations set to zero vs to their mean.

    At the first layer where they appear, every entry of the massive dims whose
    |value| is at least half that dim's largest |value| over all probe sequences is
    replaced (a sequence without massive activations keeps its entries).
    """
    site = _site(result)
    if site is None:
        return {"layer": None, "dims": [], "note": "no massive activations to intervene on"}
    layer, dims = site
    tok = tokenize(as_prompts(texts), loaded.tokenizer, loaded.info.max_position)
    ids = torch.from_numpy(tok.ids.astype(np.int64)).to(loaded.model.device)
    valid = ids >= 0
    ids = ids.masked_fill(~valid, 0)
    base = loss(loaded, ids, valid)
    losses = {mode: _loss_with(loaded, ids, valid, layer, dims, mode) for mode in ("zero", "mean")}
    return {"layer": layer, "dims": dims, "loss": base, "loss_zero": losses["zero"],
            "loss_mean": losses["mean"], "delta_zero": losses["zero"] - base,
            "delta_mean": losses["mean"] - base}


def _loss_with(loaded: Any, ids: torch.Tensor, valid: torch.Tensor, layer: int, dims: list[int],
               mode: str) -> float:
    dim_idx = torch.tensor(dims, device=ids.device)

    def hook(_m, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        sub = h[:, :, dim_idx].float()  # a float16 sum of massive entries overflows past 65504
        mag = sub.abs() * valid[:, :, None]  # padding never sets the bar
        big = (mag >= 0.5 * mag.amax(dim=(0, 1), keepdim=True)) & valid[:, :, None]
        value = torch.zeros_like(sub) if mode == "zero" else (sub * big).sum((0, 1)) / big.sum((0, 1))
        h[:, :, dim_idx] = torch.where(big, value.expand_as(sub), sub).to(h.dtype)
        return output

    handle = decoder_layers(loaded.model)[layer].register_forward_hook(hook)
    try:
        return loss(loaded, ids, valid)
    finally:
        handle.remove()
