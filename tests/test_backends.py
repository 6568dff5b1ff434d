"""The same probe spec writes the same values through every backend, and no backend leaves
anything behind on the model (hooks, wrapped modules, instance forwards, config, tokenizer)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from tiny_models import ARCHS, prompts, tiny_model, word_tokenizer
from transformers import AutoModelForCausalLM, OpenAIGPTConfig

from scalelens.capture import attach, capture
from scalelens.errors import ScalelensError
from scalelens.hooks.backends import _registry, make_backend
from scalelens.hooks.points import CapturePoint
from scalelens.models.load import load_model
from scalelens.probes.spec import preset

BACKENDS = ("nnsight", "transformer-lens")

# Tolerances against the native backend (float32 storage; |values| 0.004 to 15 here).
# nnsight runs the very same HF modules on the very same inputs (its trace calls
# model.base_model, or the whole model when logits are wanted, exactly as the native backend
# does), so the values are bitwise equal: measured 0 on every dataset of every architecture.
# TransformerBridge does not call the model's attention function: it recomputes attention
# eagerly with its own rotary/mask code, i.e. the same float32 math in another order than
# SDPA. Measured max |diff|: 3e-8 on gpt_neox/llama/gpt2 (|values| <= 0.25), 0 on gemma2
# (an eager model), 2e-6 on gemma3 (|values| up to 15, relative 3e-7; the bridge also
# switches Gemma 3 to eager while it runs). 1e-6 absolute + 1e-5 relative leaves room for
# other BLAS builds and is still far below a real mismatch (a wrong layer, a norm applied
# or not: differences of the size of the values themselves).
TOL = {"nnsight": {"atol": 0.0, "rtol": 0.0}, "transformer-lens": {"atol": 1e-6, "rtol": 1e-5}}


def loaded(arch: str = "gpt_neox", attn: str = "sdpa"):
    return load_model(tiny_model(arch, attn), tokenizer=word_tokenizer())


def parity_probes():
    return [
        preset("resid", dtype="float32"),
        preset("resid_pre", dtype="float32"),
        preset("attn_out", dtype="float32"),
        preset("mlp_out", dtype="float32"),
        preset("massive"),
        preset("norms"),
        preset("predictions"),
    ]


def assert_same_probes(ref, out, tol) -> None:
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert sorted(a["probes"]) == sorted(b["probes"])
        for probe in a["probes"]:
            assert sorted(a["probes"][probe]) == sorted(b["probes"][probe])
            for name in a["probes"][probe]:
                want, got = a["probes"][probe][name][()], b["probes"][probe][name][()]
                assert want.shape == got.shape and want.dtype == got.dtype, (probe, name)
                if np.issubdtype(want.dtype, np.floating):
                    np.testing.assert_allclose(got, want, **tol, err_msg=f"{probe}/{name}")
                else:  # positions, dims, tokens, argmax ids: identical
                    np.testing.assert_array_equal(got, want, err_msg=f"{probe}/{name}")
                assert np.isfinite(got).all() if got.dtype.kind == "f" else True


def model_state(model: torch.nn.Module, tokenizer) -> tuple:
    """Everything a wrapper could leave behind: hooks, module tree, instance attrs, config."""
    modules = [
        (
            name,
            type(m),
            id(m),
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks),
            sorted(vars(m)),
            "forward" in vars(m),
        )
        for name, m in model.named_modules()
    ]
    return modules, dict(vars(model.config)), tokenizer.padding_side, tokenizer.pad_token


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_pre_hooks_with_kwargs)
        for m in model.modules()
    )


def test_backends_are_registered():
    assert {"native", *BACKENDS} <= set(_registry())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_values_as_native(arch, backend, tmp_path):
    lm = loaded(arch)
    kw = {"batch_size": 3, "progress": False}
    ref = capture(lm, parity_probes(), prompts(), tmp_path / "native.h5", **kw)
    out = capture(lm, parity_probes(), prompts(), tmp_path / "b.h5", backend=backend, **kw)
    assert_same_probes(ref, out, TOL[backend])
    with h5py.File(out) as f:  # the captured values are real, not an untouched buffer
        assert np.abs(f["probes"]["resid"]["values"][()]).max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_capture_without_logits_stops_after_the_last_wanted_layer(backend, tmp_path):
    """Without logits the pass may end after the last wanted layer (1 of 0..2), not before it:
    every wanted layer, that one included, holds native's values."""
    lm = loaded("llama")
    probes = [preset("resid", dtype="float32", layers=(0, 1)),
              preset("mlp_out", dtype="float32", layers=(1,))]
    kw = {"batch_size": 3, "progress": False}
    ref = capture(lm, probes, prompts(), tmp_path / "native.h5", **kw)
    out = capture(lm, probes, prompts(), tmp_path / "b.h5", backend=backend, **kw)
    assert_same_probes(ref, out, TOL[backend])
    with h5py.File(out) as f:
        assert np.abs(f["probes"]["resid"]["values"][()][:, 1]).max() > 1e-3


def test_nnsight_attention_tap_matches_native(tmp_path):
    lm = loaded("llama")
    probes = [preset("attn"), preset("q"), preset("k"), preset("top1")]
    kw = {"batch_size": 4, "progress": False}
    ref = capture(lm, probes, prompts(), tmp_path / "native.h5", **kw)
    out = capture(lm, probes, prompts(), tmp_path / "nn.h5", backend="nnsight", **kw)
    assert_same_probes(ref, out, TOL["nnsight"])
    with h5py.File(out) as f:
        assert f["probes"]["attn"]["values"][()].max() > 0.1  # the tap really fired


def test_transformer_lens_refuses_attention_tap(tmp_path):
    lm = loaded()
    before = model_state(lm.model, lm.tokenizer)
    with pytest.raises(ScalelensError, match="attn_pattern, q or k"):
        capture(lm, [preset("attn")], prompts(2), tmp_path / "a.h5", backend="transformer-lens",
                progress=False)
    assert model_state(lm.model, lm.tokenizer) == before


def _bridge(arch: str, **compat):
    """A TransformerBridge around a tiny model, in compatibility mode when ``compat`` is given."""
    import copy

    from transformer_lens.model_bridge.sources import build_bridge_from_module

    model = tiny_model(arch)
    bridge = build_bridge_from_module(model, type(model).__name__, hf_config=copy.deepcopy(model.config))
    if compat:
        bridge.enable_compatibility_mode(disable_warnings=True, **compat)
    return bridge


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_a_bridge_with_processed_weights_is_refused(arch, tmp_path):
    """enable_compatibility_mode() folds layer norms and centres weights in the model itself
    (TransformerLens's advice for HookedTransformer numerics): captured, resid differed from the
    model's by 0.009 (gpt_neox) and logits by 0.016 under every backend. Refused in one line;
    no_processing=True keeps the weights and captures the model's own values."""
    with pytest.raises(ScalelensError, match="weights were processed .* not the model's"):
        load_model(_bridge(arch, fold_ln=True), tokenizer=word_tokenizer())
    probes = [preset("resid", dtype="float32"), preset("predictions")]
    kw = {"batch_size": 3, "progress": False}
    ref = capture(loaded(arch, "eager"), probes, prompts(), tmp_path / "native.h5", **kw)
    lm = load_model(_bridge(arch, no_processing=True), tokenizer=word_tokenizer())
    out = capture(lm, probes, prompts(), tmp_path / "b.h5", **kw)
    assert_same_probes(ref, out, {"atol": 0.0, "rtol": 0.0})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fail", [False, True])
def test_model_left_as_found(backend, fail, tmp_path):
    lm = loaded()
    before, hooks = model_state(lm.model, lm.tokenizer), hook_count(lm.model)
    params = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom") if fail else _nullcontext():
        with attach(lm, [preset("resid"), preset("mlp_out")], tmp_path / "h.h5", backend=backend,
                    progress=False) as run:
            run.feed(prompts(3))
            if fail:
                raise RuntimeError("boom")
    assert hook_count(lm.model) == hooks
    assert model_state(lm.model, lm.tokenizer) == before
    after = lm.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in params.items())  # no weight processing


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_architecture(backend):
    torch.manual_seed(0)
    cfg = OpenAIGPTConfig(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    wanted = {(CapturePoint.RESID_POST, 0)}
    with pytest.raises(ScalelensError, match="unsupported architecture 'openai-gpt'"):
        with make_backend(backend, model, word_tokenizer(), wanted, lambda *a: None):
            pass


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
