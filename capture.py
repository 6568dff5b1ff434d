"""Attach probes to a model and stream what they capture into an HDF5 file.

>>> from scalelens.capture import attach
>>> from scalelens.probes.spec import preset
>>> with attach(loaded, [preset("resid"), preset("massive")], out="x.h5") as run:
...     run.feed(["The quick brown fox", "jumps over the lazy dog"])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from scalelens.cache.staging import PinnedPool
from scalelens.cache.writer import TOKENIZER_KEY, BackgroundWriter, Batch, CaptureWriter, FileIdentity
from scalelens.errors import ScalelensError
from scalelens.hooks.arch import arch_for, check_points, layer_part
from scalelens.hooks.attention import attention_tap
from scalelens.hooks.backends import Backend, make_backend
from scalelens.hooks.points import CapturePoint
from scalelens.hooks.rope import prompt_batches
from scalelens.models.describe import tokenizer_fingerprint, weights_fingerprint
from scalelens.probes.embeds import batch_inputs_embeds, check_blocks, embedding_width
from scalelens.probes.prompts import (
    Prompt,
    TokenizedPrompts,
    as_prompts,
    placeholder_id,
    select_positions,
    tokenize,
)
from scalelens.probes.reduce import BatchContext, ProbeRuntime
from scalelens.probes.spec import PositionKind, ProbeSpec, preset, specs_to_json, whole_number
from scalelens.progress import progress_bar

BACKENDS = ("native", "nnsight", "transformer-lens")
# What ``attach``/``capture`` take as probes: specs or preset names, or one alone.
Probes: TypeAlias = ProbeSpec | str | Iterable[ProbeSpec | str]


_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class CaptureSettings:
    """How a capture runs.

    Attributes:
        batch_size: Prompts per forward pass (and per HDF5 write); an interrupted capture
            may resume with another one (each prompt's is recorded in ``/batch_size``).
        max_length: Longest prompt accepted, in tokens; default: the model's context.
        backend: ``native`` (torch hooks), ``nnsight`` or ``transformer-lens``.
        overwrite: Replace an existing output instead of resuming it.
        reuse_complete: Accept an existing complete compatible output as the result
            (otherwise that is an error, so finished work is never silently redone).
        progress: Show a progress bar.
    """

    batch_size: int = 8
    max_length: int | None = None
    backend: str = "native"
    overwrite: bool = False
    reuse_complete: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, whole_number(name, value))
        if not 1 <= self.batch_size <= _INT32_MAX:  # each prompt's is stored as int32 in /batch_size
            raise ScalelensError(f"batch size must be >= 1 and <= {_INT32_MAX}, got {self.batch_size}")
        if self.backend not in BACKENDS:
            raise ScalelensError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.max_length is not None and self.max_length < 1:
            raise ScalelensError(f"max length must be >= 1, got {self.max_length}")


def as_probe_list(probes: Probes) -> list[ProbeSpec]:
    """Probes as a list of specs: a preset name (``"resid"``) stands for ``preset(name)``.

    One probe or name may be given alone.
    """
    items = [probes] if isinstance(probes, ProbeSpec | str) else list(probes)
    out = []
    for n, p in enumerate(items):
        if isinstance(p, str):
            p = preset(p)
        if not isinstance(p, ProbeSpec):
            raise ScalelensError(f"probe {n} is a {type(p).__name__}; pass ProbeSpec objects or preset "
                                 "names (e.g. [preset('resid'), 'massive'])")
        out.append(p)
    return out


def tokenizer_source(tokenizer: Any) -> str | None:
    """Where ``tokenizer`` was loaded from (an absolute directory or a hub id), or None.

    Recorded with a capture so that ``scalelens analyze`` finds the tokenizer a
    model without one of its own was captured with.
    """
    from scalelens.models.sources import looks_like_hub_id

    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if name and Path(name).is_dir():
        return str(Path(name).resolve())
    return name if name and looks_like_hub_id(name) else None


def as_loaded(model: Any, tokenizer: Any = None) -> Any:
    """``model`` if it is a LoadedModel, else ``load_model(model, tokenizer=tokenizer)``.

    An in-memory model keeps each module's train/eval mode: ``load_model`` puts it in eval
    mode, but the caller's model is only borrowed (captures and measures run under
    :func:`eval_mode`, which gives the modes back after).
    """
    if hasattr(model, "info") and hasattr(model, "tokenizer"):
        return model
    from scalelens.models.load import load_model

    if isinstance(model, str | os.PathLike):
        return load_model(model, tokenizer=tokenizer)
    from scalelens.models.wrapped import unwrap

    modes = [(m, m.training) for m in unwrap(model)[0].modules()]
    loaded = load_model(model, tokenizer=tokenizer)
    for m, training in modes:
        m.training = training
    return loaded


def _check_vocab(tok: TokenizedPrompts, vocab_size: int) -> None:
    """Refuse token ids past the model's embedding (a tokenizer that does not match the model)."""
    if vocab_size and tok.ids.size and int(tok.ids.max()) >= vocab_size:
        i = int(np.argwhere(tok.ids >= vocab_size)[0][0])
        raise ScalelensError(
            f"prompt index {i} has token id {int(tok.ids[i].max())}, past the model's vocabulary of "
            f"{vocab_size}: the tokenizer does not match the model; pass the model's own tokenizer"
        )


class Capture:
    """Probes attached to a model; hooks exist only between ``__enter__`` and ``__exit__``."""

    def __init__(self, model: Any, probes: Probes, out: str | Path,
                 settings: CaptureSettings | None = None, tokenizer: Any = None) -> None:
        """Prepare a capture of ``probes`` on ``model`` (a LoadedModel or HF model) into ``out``.

        ``probes``: ProbeSpec objects or preset names (see :func:`as_probe_list`).
        """
        probes = as_probe_list(probes)
        self.loaded = as_loaded(model, tokenizer)
        self.settings = settings or CaptureSettings()
        self.out = Path(out)
        info = self.loaded.info
        arch_for(self.loaded.model)
        names = [p.name for p in probes]
        if not probes:
            raise ScalelensError("no probes given; attach at least one probe")
        if len(set(names)) != len(names):
            raise ScalelensError(f"probe names must be unique, got {names}")
        self.probes = [p.resolve(info.n_layers, info.n_heads) for p in probes]
        self._refuse_unusable()
        self._stack: ExitStack | None = None
        self._backend: Backend
        self._runtimes: list[ProbeRuntime] = []
        self._ctx: BatchContext | None = None
        self.attention_capture = "none"
        self._tapped_layers: set[int] = set()
        self._tapped_seen: set[int] = set()

    def _refuse_unusable(self) -> None:
        """One clear error, before anything is written, for what this capture cannot do."""
        info = self.loaded.info
        if self.out.is_dir():
            raise ScalelensError(f"output {self.out} is a directory; give a .h5 file path")
        devices = sorted({str(t.device) for t in self.loaded.model.parameters()})
        if devices == ["meta"]:
            raise ScalelensError("the model's weights are on the meta device (never loaded, e.g. built "
                                 "under torch.device('meta') or init_empty_weights); load them first, "
                                 "e.g. load_model(path) or from_pretrained(path)")
        if len(devices) > 1:  # device_map="auto" and the like: batches live on one device
            raise ScalelensError(f"the model's parameters lie on {', '.join(devices)}; scalelens captures "
                                 "a model on one device: load it without device_map, or .to() one device")
        check_points(self.loaded.model, [p.point for p in self.probes])
        tapped = [p.name for p in self.probes if p.point.from_attention_tap]
        if tapped and info.source_kind == "transformer_lens":
            raise ScalelensError(
                f"probe(s) {', '.join(tapped)} need the model's own attention, which a booted "
                "TransformerBridge replaced with components that recompute it; load the model by path "
                "for per-head probes"
            )
        limit = self.settings.max_length
        if limit is not None and info.max_position and limit > info.max_position:
            raise ScalelensError(f"max length {limit} exceeds the model's context of {info.max_position} "
                                 f"tokens; use {info.max_position} or less")

    # -- hooks -------------------------------------------------------------------
    def __enter__(self) -> Capture:
        model = self.loaded.model
        stack = ExitStack()
        try:
            stack.enter_context(eval_mode(model))
            residual = {(p.point, layer) for p in self.probes if p.point.is_module_output
                        for layer in p.layers or ()}
            backend = make_backend(self.settings.backend, model, self.loaded.tokenizer, residual,
                                   self._on_residual)
            self._backend = stack.enter_context(backend)
            tapped = sorted({layer for p in self.probes if p.point.from_attention_tap
                             for layer in p.layers or ()})
            if tapped:
                modules = {layer: layer_part(model, layer, "attn") for layer in tapped}
                inner = stack.enter_context(attention_tap(model, modules, self._on_attention))
                self._tapped_layers = set(tapped)
                self.attention_capture = f"rows recomputed from post-rotary q,k beside {inner}"
            last = max((i for p in self.probes for i in p.layers or ()), default=None)
            if last is not None and last < self.loaded.info.n_layers - 1:
                self._backend.stop_after = last  # no probe reads a later layer (logits: no stop)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _on_residual(self, point: CapturePoint, layer: int, h: torch.Tensor) -> None:
        if self._ctx is None:
            return
        if point is CapturePoint.LOGITS:
            h = _as_returned(self.loaded.model, h)
        elif h.dim() == 2:  # OPT runs its feed-forward on (batch * seq, d_model) rows
            h = h.view(self._ctx.ids.shape[0], -1, h.shape[-1])
        for rt in self._runtimes:
            if rt.spec.point is point and layer in rt.layer_index:
                rt.on_residual(layer, h, self._ctx)

    def _on_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, mask: Any,
                      scaling: float, kwargs: dict[str, Any]) -> None:
        if self._ctx is None:
            return
        self._tapped_seen.add(layer)
        for rt in self._runtimes:
            if rt.spec.point.from_attention_tap and layer in rt.layer_index:
                rt.on_attention(layer, q, k, mask, scaling, kwargs, self._ctx)

    # -- feeding -----------------------------------------------------------------
    def _identity(self, tok: TokenizedPrompts) -> FileIdentity:
        """What a file must match to be resumed; not the batch size (recorded per prompt instead)."""
        capture = {
            "backend": self.settings.backend,
            "attention_capture": self.attention_capture,
            "n_prompts": int(tok.ids.shape[0]),
            "seq": tok.seq_len,
            "tokenizer": tokenizer_source(self.loaded.tokenizer),
            TOKENIZER_KEY: tokenizer_fingerprint(self.loaded.tokenizer),
        }
        return FileIdentity(self.loaded.info.to_dict(), specs_to_json(self.probes),
                            tok.fingerprint(), capture, weights_fingerprint(self.loaded.model))

    def feed(self, prompts: str | Prompt | list[str] | list[Prompt]) -> Path:
        """Run every prompt through the model and write what the probes capture.

        Resumes an incomplete compatible file; returns the output path.
        """
        if self._stack is None:
            raise ScalelensError("feed() runs only inside `with attach(...) as run:` (the hooks exist "
                                 "only there); call run.feed(...) within the with block")
        info = self.loaded.info
        tok = tokenize(as_prompts(prompts), self.loaded.tokenizer,
                       self.settings.max_length or info.max_position or None, info.vocab_size)
        if tok.embeds:
            self._check_embeds(tok)
        _check_vocab(tok, info.vocab_size)
        rows = {p.name: _rows_for(p, tok) for p in self.probes}
        self._runtimes = [
            ProbeRuntime(p, info.d_model, info.d_head, len(tok.lengths), tok.seq_len,
                         rows[p.name].shape[1], vocab=info.vocab_size) for p in self.probes
        ]
        layout = {rt.spec.name: rt.datasets() for rt in self._runtimes}
        writer = CaptureWriter.open(self.out, self._identity(tok), tok, layout,
                                    self.settings.batch_size, self.settings.overwrite,
                                    self.settings.reuse_complete)
        if writer.complete:
            writer.close()
            return self.out
        try:
            self._run_batches(writer, tok, rows)
            writer.finish()
        finally:
            writer.close()
            self._ctx = None
        return self.out

    def _check_tap_fired(self) -> None:
        """Refuse a batch in which a tapped layer's attention never reached the tap.

        Its per-head datasets would otherwise stay zero: a family whose attention no longer
        goes through transformers' registry (e.g. after a transformers upgrade).
        """
        missing = sorted(self._tapped_layers - self._tapped_seen)
        if missing:
            raise ScalelensError(
                f"{self.loaded.info.architecture}: layer {missing[0]}'s attention never reached the "
                "attention tap (not computed through transformers' attention registry), so per-head "
                "probes cannot be captured for this model; drop attn/q/k/top1 probes"
            )

    def _check_embeds(self, tok: TokenizedPrompts) -> None:
        """Refuse embedding blocks this capture cannot feed, before any file is written."""
        if not self._backend.accepts_embeds:
            raise ScalelensError(f"the {self._backend.name} backend cannot feed embedding blocks "
                                 "(inputs_embeds); use backend native")
        check_blocks(tok, embedding_width(self.loaded.model))

    def _run_batches(self, writer: CaptureWriter, tok: TokenizedPrompts,
                     rows: dict[str, np.ndarray]) -> None:
        """Compute batch after batch; a writer thread writes each one while the next computes.

        A batch never mixes prompts whose rotary frequencies the model would choose differently
        (longrope's short and long factors; see :func:`~scalelens.hooks.rope.length_classes`),
        so every prompt is captured as it would be alone.
        """
        n = len(tok.lengths)
        bar = progress_bar(total=n, initial=writer.n_done, unit="prompt", desc=f"capture {self.out.name}",
                   disable=not self.settings.progress)
        staging = _HostStaging(self.loaded.model.device)
        batches = prompt_batches(self.loaded.model, tok.lengths, self.settings.batch_size, writer.n_done)
        with BackgroundWriter(writer, depth=2) as background:
            for start, stop in batches:
                arrays, ready, done = staging.to_host(self._run_batch(tok, rows, start, stop))
                background.submit(start, arrays, ready, done)
                bar.update(stop - start)
        bar.close()

    def _logit_rows(self, rows: dict[str, np.ndarray], start: int, stop: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
        """Run the LM head on the probed positions only; the logits probes' rows, remapped.

        With logits probes that select positions (not all), the union of this batch's
        positions becomes the model's ``logits_to_keep`` and each such probe's rows index
        into it. Computed on the host from the position tables: no device sync.
        """
        self._backend.logit_rows = None
        logit_rts = [rt for rt in self._runtimes if rt.spec.point is CapturePoint.LOGITS]
        if not logit_rts or not self._backend.keeps_logit_rows or not all(
                rt.selects_positions for rt in logit_rts):
            return {}
        probes = [rt.spec.name for rt in logit_rts]
        keep = _kept_positions([rows[name][start:stop] for name in probes])
        self._backend.logit_rows = _to_device(keep.astype(np.int64), device)
        remapped = {}
        for name in probes:
            r = rows[name][start:stop]
            index = np.where(r >= 0, np.searchsorted(keep, r), -1).astype(r.dtype)
            remapped[name] = _to_device(index, device)
        return remapped

    def _run_batch(self, tok: TokenizedPrompts, rows: dict[str, np.ndarray], start: int,
                   stop: int) -> dict[str, dict[str, torch.Tensor | np.ndarray]]:
        device = self.loaded.model.device
        ids = _to_device(tok.batch_ids(start, stop), device)
        valid = ids >= 0
        ids = ids.masked_fill(~valid, placeholder_id(self.loaded.tokenizer, self.loaded.info.vocab_size))
        # int64 once per batch: every gather along these rows would otherwise convert them
        batch_rows = {k: _to_device(v[start:stop].astype(np.int64), device) for k, v in rows.items()}
        batch_rows.update(self._logit_rows(rows, start, stop, device))
        self._ctx = BatchContext(ids=ids, valid=valid, rows=batch_rows,
                                 lengths=tok.lengths[start:stop].tolist())
        for rt in self._runtimes:
            rt.start()
        embeds = batch_inputs_embeds(self.loaded.model, ids, tok.embeds_between(start, stop), start)
        # Rows are right-padded, so under causal attention no real query ever sees a padding
        # key: the model needs no padding mask. Passing none lets SDPA take its causal kernels
        # and spares transformers building a 4-D mask (two host syncs per batch on CUDA).
        # Padding positions compute garbage that every probe already drops (``valid``).
        self._tapped_seen = set()
        if embeds is None:
            self._backend.forward(ids, None)
        else:
            self._backend.forward_embeds(embeds, None)
        self._check_tap_fired()
        arrays: dict[str, dict[str, torch.Tensor | np.ndarray]] = {}
        for rt in self._runtimes:
            arrays[rt.spec.name] = dict(rt.finish())
            if rt.selects_positions:
                arrays[rt.spec.name]["query_pos"] = rows[rt.spec.name][start:stop]
        return arrays


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (dropout off) and give every module back its own mode after.

    A model left in training mode would otherwise capture with dropout on: every run
    different, and a resumed file unlike an uninterrupted one.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _kept_positions(rows: list[np.ndarray]) -> np.ndarray:
    """Sorted union of the valid (>= 0) positions in ``rows`` (at least one position)."""
    keep = np.unique(np.concatenate([r[r >= 0] for r in rows]))
    return keep if keep.size else np.zeros(1, dtype=np.int64)


def _to_device(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array to ``device``; on CUDA through pinned memory, without blocking the host."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _HostStaging:
    """Turns a batch's device buffers into host arrays for the writer thread.

    On the CPU the buffers are the batch's own fresh tensors, handed over as numpy views.
    On CUDA each buffer is copied into a reusable pinned host buffer (from a
    :class:`~scalelens.cache.staging.PinnedPool`, reused across the batches' varying
    widths) on a side stream (non-blocking, ordered after the batch's compute), so the
    host goes straight on to queue the next batch; the writer thread waits on the copy's
    event before writing and returns the pinned buffers to the pool afterwards. No host
    sync in the compute loop.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._pool = PinnedPool()
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def to_host(self, batch: dict[str, dict[str, torch.Tensor | np.ndarray]]
                ) -> tuple[Batch, Callable[[], None] | None, Callable[[], None] | None]:
        """Host arrays of ``batch``, and what the writer calls before / after writing them."""
        if not self.cuda:
            return ({p: {k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in d.items()}
                     for p, d in batch.items()}, None, None)
        assert self._stream is not None
        stream, used = self._stream, []
        stream.wait_stream(torch.cuda.current_stream(self.device))
        out: Batch = {}
        with torch.cuda.stream(stream):
            for probe, data in batch.items():
                out[probe] = {}
                for name, v in data.items():
                    if isinstance(v, np.ndarray):
                        out[probe][name] = v
                        continue
                    view, flat = self._pool.take(tuple(v.shape), v.dtype)
                    view.copy_(v, non_blocking=True)
                    v.record_stream(stream)  # keep the device buffer until the copy is done
                    used.append(flat)
                    out[probe][name] = view.numpy()
            event = torch.cuda.Event(blocking=True)  # the writer thread sleeps, not spins, until ready
            event.record(stream)
        return out, event.synchronize, lambda: self._pool.give(used)


def _rows_for(spec: ProbeSpec, tok: TokenizedPrompts) -> np.ndarray:
    """Positions each probe reads, (prompt, query) padded with -1."""
    if spec.positions.kind is PositionKind.ALL:
        idx = np.arange(tok.seq_len, dtype=np.int32)[None, :].repeat(len(tok.lengths), 0)
        return np.where(idx < tok.lengths[:, None], idx, -1).astype(np.int32)
    return select_positions(tok, spec.positions)


def attach(model: Any, probes: Probes, out: str | Path, *,
           tokenizer: Any = None, **settings: Any) -> Capture:
    """Attach ``probes`` to ``model`` writing to ``out``; use as a context manager.

    ``probes`` are ProbeSpec objects or preset names (``"resid"``, ``"massive"``...), or
    one of them alone. Keyword arguments are :class:`CaptureSettings` fields.
    """
    return Capture(model, probes, out, CaptureSettings(**settings), tokenizer=tokenizer)


def capture(model: Any, probes: Probes, prompts: str | Prompt | list[str] | list[Prompt],
            out: str | Path, *, tokenizer: Any = None, **settings: Any) -> Path:
    """One-call capture: attach, feed every prompt, detach. Returns the output path.

    ``prompts`` is a list of texts or :class:`Prompt` objects (a single one is one prompt).
    """
    with attach(model, probes, out, tokenizer=tokenizer, **settings) as run:
        return run.feed(prompts)


def _as_returned(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """The LM head's output as the model returns it.

    Gemma 2 caps logits after the head (``cap * tanh(logits / cap)``), Granite divides them by
    ``logits_scaling`` and Cohere (1, 2, 2 MoE, Compass) multiplies them by ``logit_scale``, so a hook
    on the head alone sees them uncapped and unscaled.
    """
    text = model.config.get_text_config()
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    kind = text.model_type
    if kind in ("granite", "granitemoe", "granitemoeshared") and text.logits_scaling not in (None, 1):
        logits = logits / text.logits_scaling
    scaled = ("cohere", "cohere2", "cohere2_moe", "cohere_compass_text")
    if kind in scaled and text.logit_scale not in (None, 1):
        logits = logits * text.logit_scale
    return logits
