"""nnsight backend: the same HF modules, run inside an nnsight trace.

The model is wrapped in nnsight's ``TransformersModel`` (the non-deprecated name for
``LanguageModel`` in nnsight 0.8) around the already-loaded HF model and tokenizer, so
nothing is downloaded. Each batch runs in one ``trace`` whose ``tracer.cache`` records
the wanted modules' outputs (and decoder-layer inputs for ``resid_pre``); the sink gets
them after the trace. The trace runs ``model.base_model`` (the LM head only when logits
are wanted), exactly what the native backend runs, so values are the same kernels' output.
The attention tap keeps working because nnsight calls the same HF attention modules.

nnsight's wrapping is permanent by design (a controller becomes every module's
``forward``) and it sets the tokenizer's padding side and pad token; :func:`left_as_found`
undoes all of it when the backend closes.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from scalelens.errors import ScalelensError
from scalelens.hooks.arch import ArchSpec, arch_for
from scalelens.hooks.backends import Backend, left_as_found
from scalelens.hooks.points import CapturePoint

if importlib.util.find_spec("nnsight") is None:  # the registry leaves this backend out
    raise ImportError("nnsight is not installed")

# Imported lazily in __enter__: importing nnsight patches torch (Tensor.backward) and
# mounts ``.save`` on every object, which a native capture should not pay for.


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


class NNsightBackend(Backend):
    """Captures module outputs through an nnsight trace of the unmodified HF model."""

    name = "nnsight"
    keeps_logit_rows = True

    def __enter__(self) -> NNsightBackend:
        spec = arch_for(self.model)  # unsupported architecture: one-line ScalelensError
        if spec.changes_mlp_out(self.model.config) and any(p is CapturePoint.MLP_OUT for p, _ in self.wanted):
            family = self.model.config.model_type
            raise ScalelensError(f"the nnsight backend cannot read mlp_out of {family}: "
                                 f"{spec.mlp_out_changed}; use backend native")
        if self.tokenizer is None:  # nnsight would fetch one by the model's name
            raise ScalelensError("the nnsight backend needs the model's tokenizer")
        self._reads: list[tuple[CapturePoint, int, str, str]] = [
            (point, layer, _module_path(spec, point, layer),
             "inputs" if point is CapturePoint.RESID_PRE else "output")
            for point, layer in sorted(self.wanted)
        ]
        from nnsight.modeling.transformers import TransformersModel

        self._stack.enter_context(left_as_found(self.model, self.tokenizer))
        self._stack.callback(self.__dict__.pop, "_lm", None)
        self._stack.callback(self.__dict__.pop, "_envoys", None)
        try:
            self._lm = TransformersModel(self.model, tokenizer=self.tokenizer, task="text-generation")
            self._envoys = [_envoy(self._lm, path) for _, _, path, _ in self._reads]
        except BaseException:
            self._stack.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Trace one batch; hand every recorded module output to the sink."""
        lm, envoys = self._lm, self._envoys
        logits = any(p is CapturePoint.LOGITS for p, _ in self.wanted)
        run = self.model if logits else self.model.base_model
        inputs = any(kind == "inputs" for *_, kind in self._reads)
        extra = {"logits_to_keep": self.logit_rows} if logits and self.logit_rows is not None else {}
        with torch.inference_mode():
            with lm.trace(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          fn=run, **extra) as tracer:
                cache = tracer.cache(modules=envoys, device=None, include_inputs=inputs)
        for (point, layer, _, kind), envoy in zip(self._reads, envoys, strict=True):
            entry = cache[envoy.path]
            if kind == "output":
                self.sink(point, layer, _first(entry.output))
            else:
                args, kwargs = entry.inputs
                self.sink(point, layer, args[0] if args else kwargs["hidden_states"])


def _module_path(spec: ArchSpec, point: CapturePoint, layer: int) -> str:
    """Dotted path (from the top model) of the module whose output/input is ``point``."""
    if point is CapturePoint.LOGITS:
        return spec.unembed
    base = f"{spec.layers}.{layer}"
    if point in (CapturePoint.RESID_PRE, CapturePoint.RESID_POST):
        return base
    if point is CapturePoint.ATTN_OUT:
        return f"{base}.{spec.attn}"
    if point is CapturePoint.MLP_OUT:
        return f"{base}.{spec.mlp}"
    raise ValueError(f"{point} is not a module-output point")


def _envoy(root: Any, path: str) -> Any:
    envoy = root
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy
