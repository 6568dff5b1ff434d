"""The pipelines compared: the bare forward pass, TransformerLens, nnsight and scalelens.

Every pipeline gets the same model weights, the same prompts and the same batches
(right-padded to the longest prompt of the batch), and every capturing pipeline writes
the same arrays (shapes, dtypes) to an HDF5 file. The TransformerLens and nnsight
pipelines are written the way a user of those libraries would write them: tokenize the
batch, run ``run_with_cache(names_filter=...)`` / ``trace`` + ``.save()``, reduce with
torch where the probe set asks for summaries, ``.cpu().numpy()`` and assign into h5py
datasets created with ``create_dataset``.

Probe sets:
    resid:   resid_post of every layer, all positions, float16.
    attn:    full attention probabilities of every layer and head, float32.
    summary: massive-activation summary (top-k |h| per layer with position, dim, token,
             and median |h|) + top-1 attended key (and its probability) of every head at
             the last ``N_QUERY`` positions of each prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from scalelens.capture import capture
from scalelens.probes.spec import Positions, ProbeSpec, preset

from .workload import Loaded, Prompts, twin

PROBE_SETS = ("resid", "attn", "summary")
N_QUERY = 4
TOPK = 8  # the massive preset's topk


def scalelens_probes(probe_set: str) -> list[ProbeSpec]:
    """The scalelens probes of a probe set."""
    if probe_set == "resid":
        return [preset("resid")]
    if probe_set == "attn":
        return [preset("attn")]
    rows = Positions.parse(",".join(str(-i) for i in range(N_QUERY, 0, -1)))
    return [preset("massive"), ProbeSpec("top1", "attn_pattern", reduction="top1", positions=rows)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_ids(prompts: Prompts, a: int, b: int, w: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(prompts.ids[a:b, :w]).to(device)


# -- the floor --------------------------------------------------------------------------
def run_floor(loaded: Loaded, prompts: Prompts, batch_size: int, lm_head: bool = False) -> None:
    """The bare forward pass (SDPA) over pre-tokenized batches; no hooks, nothing kept.

    ``lm_head=False`` runs the decoder stack only (what every capture needs; scalelens also
    skips the LM head unless logits are probed); ``True`` is ``model(...)`` with logits.
    Batches are right-padded, so causal attention alone keeps real tokens off padding: no
    padding mask is passed (as scalelens does), letting SDPA use its causal kernels.
    """
    model = loaded.model
    run = model if lm_head else model.base_model
    with torch.inference_mode():
        for a, b, w in prompts.batches(batch_size):
            ids = _batch_ids(prompts, a, b, w, model.device)
            run(input_ids=ids, use_cache=False)
    _sync(model.device)


# -- scalelens --------------------------------------------------------------------------
def run_scalelens(loaded: Loaded, prompts: Prompts, batch_size: int, probe_set: str, out: Path) -> None:
    """``scalelens.capture`` of the probe set's probes from the prompt strings to HDF5."""
    capture(
        loaded,
        scalelens_probes(probe_set),
        prompts.texts,
        out,
        batch_size=batch_size,
        overwrite=True,
        progress=False,
    )


# -- what a TransformerLens / nnsight user writes ---------------------------------------
class UserFile:
    """An h5py file with the probe set's datasets, written batch by batch as a user would."""

    def __init__(self, path: Path, probe_set: str, n: int, seq: int, info: Any) -> None:
        """Create ``path`` with datasets shaped like scalelens's for ``probe_set``."""
        L, H, d = info.n_layers, info.n_heads, info.d_model
        self.f = h5py.File(path, "w")
        shapes: dict[str, tuple[tuple[int, ...], str]]
        if probe_set == "resid":
            shapes = {"resid": ((n, L, seq, d), "float16")}
        elif probe_set == "attn":
            shapes = {"attn": ((n, L, H, seq, seq), "float32")}
        else:
            shapes = {
                "top_values": ((n, L, TOPK), "float32"),
                "top_pos": ((n, L, TOPK), "int32"),
                "top_dim": ((n, L, TOPK), "int32"),
                "top_token": ((n, L, TOPK), "int32"),
                "median_abs": ((n, L), "float32"),
                "query_pos": ((n, N_QUERY), "int32"),
                "top1_key": ((n, L, H, N_QUERY), "int32"),
                "top1_prob": ((n, L, H, N_QUERY), "float32"),
            }
        self.ds = {k: self.f.create_dataset(k, shape=s, dtype=t) for k, (s, t) in shapes.items()}

    def write(self, a: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one batch's arrays at prompt ``a`` (only the leading part of padded axes)."""
        for name, arr in arrays.items():
            index = (slice(a, a + arr.shape[0]),) + tuple(slice(0, s) for s in arr.shape[1:])
            self.ds[name][index] = arr

    def close(self) -> None:
        """Close the file."""
        self.f.close()


def _medians(a: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """numpy-convention median of each prompt's valid |h| (what a user writes per prompt)."""
    out = []
    for i, n in enumerate(lengths):
        x = a[i, :n].reshape(-1)
        lo = torch.kthvalue(x, (x.numel() + 1) // 2).values
        hi = torch.kthvalue(x, x.numel() // 2 + 1).values
        out.append((lo + hi) / 2)
    return torch.stack(out)


def user_summary(
    resid: list[torch.Tensor], patterns: list[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
) -> dict[str, np.ndarray]:
    """The summary probe set from full per-layer tensors, in plain torch, then to numpy."""
    lengths = mask.sum(1).tolist()
    valid = mask.bool()
    tv, tp, td, tt, med = [], [], [], [], []
    for h in resid:
        b, s, d = h.shape
        a = h.float().abs()
        vals, idx = a.masked_fill(~valid[:, :, None], -1.0).reshape(b, s * d).topk(TOPK, dim=1)
        pos = idx // d
        tv.append(vals)
        tp.append(pos)
        td.append(idx % d)
        tt.append(ids.gather(1, pos))
        med.append(_medians(a, lengths))
    lens = mask.sum(1)
    rows = lens[:, None] - torch.arange(N_QUERY, 0, -1, device=ids.device)[None, :]  # (b, q)
    keys, probs = [], []
    for p in patterns:  # (b, h, s, s)
        sel = p.gather(2, rows[:, None, :, None].expand(-1, p.shape[1], -1, p.shape[3]))
        pr, key = sel.float().max(dim=-1)
        keys.append(key)
        probs.append(pr)
    out = {
        "top_values": torch.stack(tv, 1),
        "top_pos": torch.stack(tp, 1).int(),
        "top_dim": torch.stack(td, 1).int(),
        "top_token": torch.stack(tt, 1).int(),
        "median_abs": torch.stack(med, 1),
        "query_pos": rows.int(),
        "top1_key": torch.stack(keys, 1).int(),
        "top1_prob": torch.stack(probs, 1),
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def _resid_array(resid: list[torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    h = torch.stack([r * mask[:, :, None].to(r.dtype) for r in resid], 1)
    return h.to(torch.float16).cpu().numpy()


def _attn_array(patterns: list[torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    p = torch.stack(patterns, 1).float()  # (b, layer, head, q, k); padded query rows zeroed
    return (p * mask[:, None, None, :, None].to(p.dtype)).cpu().numpy()


def _arrays(
    probe_set: str,
    resid: list[torch.Tensor],
    patterns: list[torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, np.ndarray]:
    if probe_set == "resid":
        return {"resid": _resid_array(resid, mask)}
    if probe_set == "attn":
        return {"attn": _attn_array(patterns, mask)}
    return user_summary(resid, patterns, ids, mask)


class TransformerLensPipeline:
    """TransformerLens 4: ``TransformerBridge.run_with_cache(names_filter=...)`` + h5py.

    ``stop_early``: also stop the forward before the final norm / LM head (a hook raising
    ``StopAtLayerException`` on ``ln_final.hook_in``); without it the run computes logits,
    as ``run_with_cache`` does by default.
    """

    def __init__(self, loaded: Loaded, stop_early: bool = False) -> None:
        """Build the bridge around a copy of the model (the bridge rewires what it wraps)."""
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        self.loaded, self.stop_early = loaded, stop_early
        model = twin(loaded)
        self.bridge = build_bridge_from_module(
            model, type(model).__name__, hf_config=copy.deepcopy(model.config)
        )

    def run(self, prompts: Prompts, batch_size: int, probe_set: str, out: Path) -> None:
        """Capture ``probe_set`` over ``prompts`` into ``out``."""
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        info, tok, bridge = self.loaded.info, self.loaded.tokenizer, self.bridge
        L = info.n_layers
        resid_names = [f"blocks.{i}.hook_out" for i in range(L)]
        attn_names = [f"blocks.{i}.attn.hook_pattern" for i in range(L)]
        names = {"resid": resid_names, "attn": attn_names, "summary": resid_names + attn_names}[probe_set]
        device = self.loaded.model.device

        def stop(tensor: torch.Tensor, *, hook: Any) -> None:
            raise StopAtLayerException(tensor)

        f = UserFile(out, probe_set, len(prompts.texts), prompts.ids.shape[1], info)
        try:
            for a, b, _ in prompts.batches(batch_size):
                ids, mask = _tokenize(tok, prompts.texts[a:b], device)
                with torch.inference_mode():
                    if self.stop_early:
                        with bridge.hooks(fwd_hooks=[("ln_final.hook_in", stop)]):
                            _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=names)
                    else:
                        _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=names)
                    resid = [cache[n] for n in resid_names] if probe_set != "attn" else []
                    patterns = [cache[n] for n in attn_names] if probe_set != "resid" else []
                    arrays = _arrays(probe_set, resid, patterns, ids, mask)
                f.write(a, arrays)
                del cache
        finally:
            f.close()


class NNsightPipeline:
    """nnsight 0.8: ``trace`` + ``nnsight.save`` of the layer outputs + h5py.

    The model must run eager attention to return attention weights, so the probe sets
    that need them switch the (copied) model to eager first, as an nnsight user must.
    ``stop_early``: ``tracer.stop()`` after the last saved layer, skipping the LM head.
    """

    def __init__(self, loaded: Loaded, stop_early: bool = False) -> None:
        """Wrap a copy of the model (nnsight installs itself into what it wraps)."""
        from nnsight.modeling.transformers import TransformersModel

        self.loaded, self.stop_early = loaded, stop_early
        self.model = twin(loaded)
        self.tokenizer = copy.deepcopy(loaded.tokenizer)  # nnsight changes its padding side
        self.lm = TransformersModel(self.model, tokenizer=self.tokenizer)

    def _trace(self, ids: torch.Tensor, mask: torch.Tensor, attn: bool, n_layers: int) -> Any:
        import nnsight

        lm = self.lm
        with lm.trace(input_ids=ids, attention_mask=mask) as tracer:
            saved = nnsight.save(
                [
                    (
                        lm.gpt_neox.layers[i].attention.output[1] if attn else None,
                        lm.gpt_neox.layers[i].output,
                    )
                    for i in range(n_layers)
                ]
            )
            if self.stop_early:
                tracer.stop()
        return saved

    def run(self, prompts: Prompts, batch_size: int, probe_set: str, out: Path) -> None:
        """Capture ``probe_set`` over ``prompts`` into ``out``."""
        info, tok = self.loaded.info, self.tokenizer
        attn = probe_set != "resid"
        self.model.set_attn_implementation("eager" if attn else "sdpa")
        device = self.model.device
        f = UserFile(out, probe_set, len(prompts.texts), prompts.ids.shape[1], info)
        try:
            for a, b, _ in prompts.batches(batch_size):
                ids, mask = _tokenize(tok, prompts.texts[a:b], device)
                with torch.inference_mode():
                    saved = self._trace(ids, mask, attn, info.n_layers)
                    resid = [_first(o) for _, o in saved]
                    patterns = [p for p, _ in saved] if attn else []
                    arrays = _arrays(probe_set, resid, patterns, ids, mask)
                f.write(a, arrays)
        finally:
            f.close()


def _tokenize(tok: Any, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(texts, padding=True, padding_side="right", return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


Runner = Callable[[Prompts, int, str, Path], None]
