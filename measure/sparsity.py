"""Activation sparsity on a live model: Hoyer sparsity of resid_post and mlp_out per layer.

The probe text is the residual-stream analyses' (as for massive activations and
information capacity). The forward pass runs through the native capture backend
(``hooks/backends.py``), whose sink reduces each token's vector at each wanted
(point, layer) to its L1 and L2 norms on the device; nothing is written to disk
(the probes' ``norm`` reduction keeps the L2 norm only, and a full capture of
every layer's activations would cost ``layers x tokens x d_model`` floats). The
Hoyer sparsity itself is computed by ``analyses/sparsity.py``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from scalelens.analyses.sparsity import SparsityResult, activation_sparsity
from scalelens.hooks.backends import make_backend
from scalelens.hooks.points import CapturePoint
from scalelens.hooks.rope import prompt_batches
from scalelens.measure.massive import MassiveSettings
from scalelens.measure.text import probe_texts
from scalelens.probes.prompts import TokenizedPrompts, as_prompts, tokenize

POINTS = (CapturePoint.RESID_POST, CapturePoint.MLP_OUT)


class _NormSink:
    """Keeps the per-token L1 and L2 norms of every (point, layer), on the device."""

    def __init__(self) -> None:
        self.l1: dict[tuple[CapturePoint, int], list[torch.Tensor]] = defaultdict(list)
        self.l2: dict[tuple[CapturePoint, int], list[torch.Tensor]] = defaultdict(list)
        self.width = 0

    def __call__(self, point: CapturePoint, layer: int, h: torch.Tensor) -> None:
        hf = h.detach().float()
        self.width = int(hf.shape[-1])
        self.l1[(point, layer)].append(hf.abs().sum(dim=-1))
        self.l2[(point, layer)].append(torch.linalg.vector_norm(hf, dim=-1))

    def array(self, norms: dict[tuple[CapturePoint, int], list[torch.Tensor]], point: CapturePoint,
              n_layers: int, seq: int) -> np.ndarray:
        """``(prompt, layer, seq)`` norms of ``point``, zero beyond each batch's width."""
        layers = []
        for layer in range(n_layers):
            parts = [torch.nn.functional.pad(t, (0, seq - t.shape[1])) for t in norms[(point, layer)]]
            layers.append(torch.cat(parts).cpu().numpy())
        return np.stack(layers, axis=1)


def _run(loaded: Any, tok: TokenizedPrompts, batch_size: int, sink: _NormSink) -> None:
    """Forward ``tok`` batch by batch (see :func:`~scalelens.hooks.rope.prompt_batches`) into ``sink``."""
    wanted = {(p, layer) for p in POINTS for layer in range(loaded.info.n_layers)}
    device = loaded.model.device
    with make_backend("native", loaded.model, loaded.tokenizer, wanted, sink) as backend:
        for start, stop in prompt_batches(loaded.model, tok.lengths, batch_size):
            ids = torch.from_numpy(tok.batch_ids(start, stop)).to(device)
            valid = ids >= 0
            backend.forward(ids.masked_fill(~valid, 0), valid.long())


def measure_sparsity(loaded: Any, text: MassiveSettings) -> dict[str, SparsityResult]:
    """Per-layer Hoyer sparsity of ``resid_post`` and ``mlp_out`` on the probe text."""
    texts = probe_texts(loaded, text)
    tok = tokenize(as_prompts(texts), loaded.tokenizer, loaded.info.max_position or None)
    sink = _NormSink()
    _run(loaded, tok, text.batch_size, sink)
    n_layers = loaded.info.n_layers
    out = {}
    for point in POINTS:
        l1 = sink.array(sink.l1, point, n_layers, tok.seq_len)
        l2 = sink.array(sink.l2, point, n_layers, tok.seq_len)
        out[point.value] = activation_sparsity(l1, l2, tok.lengths, sink.width, point.value)
    return out
