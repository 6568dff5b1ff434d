"""Massive activations on a live model: summary capture and the zero-vs-mean intervention."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scalelens.analyses.from_capture import MASSIVE_PROBE, massive_from_capture
from scalelens.analyses.massive import MassiveResult
from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks.arch import decoder_layers
from scalelens.hooks.rope import prompt_batches
from scalelens.measure.text import probe_texts
from scalelens.probes.prompts import TokenizedPrompts, as_prompts, tokenize
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


def delimiter_ids(tokenizer: Any) -> list[int]:
    """Token ids the massive-activation analysis counts as delimiters: period, newline, BOS, EOS."""
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
    texts = probe_texts(loaded, s)
    probe = ProbeSpec(MASSIVE_PROBE, "resid_post", reduction="massive", topk=s.topk)
    capture(loaded, [probe], texts, out, batch_size=s.batch_size, overwrite=overwrite, reuse_complete=True,
            progress=progress)
    with CaptureFile(out) as f:
        result = massive_from_capture(f, delimiter_ids=delimiter_ids(loaded.tokenizer),
                                      ratio_threshold=s.ratio_threshold)
    effect = intervention(loaded, result, texts, s.batch_size) if s.intervene else None
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


def mean_loss(loaded: Any, tok: TokenizedPrompts, batches: list[tuple[int, int]],
              before: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over the predicted tokens of ``tok``, and their number.

    Runs the prompts ``(start, stop)`` of each of ``batches``, each cut to its own longest
    prompt; ``before(start, stop)`` is called before each batch's forward pass.
    """
    total, count = 0.0, 0
    for start, stop in batches:
        if before is not None:
            before(start, stop)
        ids = torch.from_numpy(tok.batch_ids(start, stop)).to(loaded.model.device)
        valid = ids >= 0
        value = loss(loaded, ids.masked_fill(~valid, 0), valid)
        n = int(valid[:, 1:].sum())
        if n:
            total += value * n
            count += n
    return (total / count if count else float("nan")), count


def intervention(loaded: Any, result: MassiveResult, texts: list[str], batch_size: int = 4) -> dict[str, Any]:
    """Loss on the probe text with the massive activations set to zero vs to their mean.

    At the first layer where they appear, every entry of the massive dims whose
    |value| is at least half that dim's largest |value| over all probe sequences is
    replaced (a sequence without massive activations keeps its entries). Runs
    ``batch_size`` sequences per forward pass (fewer where the model's rotary scaling would
    treat them differently: :func:`~scalelens.hooks.rope.prompt_batches`); the losses are
    means over all tokens.
    """
    site = _site(result)
    if site is None:
        return {"layer": None, "dims": [], "note": "no massive activations to intervene on"}
    layer, dims = site
    tok = tokenize(as_prompts(texts), loaded.tokenizer, loaded.info.max_position or None)
    batches = prompt_batches(loaded.model, tok.lengths, batch_size)
    layer_out = decoder_layers(loaded.model)[layer]
    seen: list[torch.Tensor] = []  # the massive dims' entries at the layer's output, per batch

    def keep(h: torch.Tensor, rows: slice) -> None:
        part = h[:, :, dims].float().cpu()  # a float16 sum of massive entries overflows past 65504
        seen.append(torch.nn.functional.pad(part, (0, 0, 0, tok.seq_len - h.shape[1])))  # to the full width

    base = _mean_loss(loaded, tok, batches, layer_out, keep)
    sub = torch.cat(seen)
    valid = torch.from_numpy(tok.ids >= 0)[:, :, None]
    mag = sub.abs() * valid  # padding never sets the bar
    big = (mag >= 0.5 * mag.amax(dim=(0, 1), keepdim=True)) & valid
    mean = (sub * big).sum((0, 1)) / big.sum((0, 1))
    losses = {mode: _mean_loss(loaded, tok, batches, layer_out, _replace(dims, big, value))
              for mode, value in (("zero", torch.zeros_like(mean)), ("mean", mean))}
    return {"layer": layer, "dims": dims, "loss": base, "loss_zero": losses["zero"],
            "loss_mean": losses["mean"], "delta_zero": losses["zero"] - base,
            "delta_mean": losses["mean"] - base}


def _replace(dims: list[int], big: torch.Tensor, value: torch.Tensor) -> Any:
    """A layer-output edit: the ``big`` entries of ``dims`` set to ``value`` (one per dim)."""

    def edit(h: torch.Tensor, rows: slice) -> None:
        where = big[rows, :h.shape[1]].to(h.device)
        sub = h[:, :, dims]
        h[:, :, dims] = torch.where(where, value.to(h.device, h.dtype).expand_as(sub), sub)

    return edit


def _mean_loss(loaded: Any, tok: TokenizedPrompts, batches: list[tuple[int, int]],
               layer_out: torch.nn.Module, on_output: Any) -> float:
    """:func:`mean_loss` with each batch's ``layer_out`` output passed to ``on_output``.

    ``on_output(h, rows)`` may edit ``h`` in place; ``rows`` are the batch's prompts.
    """
    rows = slice(0, 0)

    def at(start: int, stop: int) -> None:
        nonlocal rows
        rows = slice(start, stop)

    def hook(_m: Any, _args: Any, output: Any) -> Any:
        on_output(output[0] if isinstance(output, tuple) else output, rows)  # the batch running now
        return output

    handle = layer_out.register_forward_hook(hook)
    try:
        return mean_loss(loaded, tok, batches, before=at)[0]
    finally:
        handle.remove()
