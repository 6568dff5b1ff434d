"""Engine paths added for speed: stopping after the last probed layer, padding done on device."""

from __future__ import annotations

import numpy as np
import torch
from tiny_models import prompts, tiny_model, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.hooks import native
from scalelens.models.load import load_model
from scalelens.probes.spec import ProbeSpec, preset


def hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_stop_after_last_probed_layer_keeps_values_and_leaves_no_hooks(tmp_path, monkeypatch):
    lm = load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer())
    full = capture(lm, [preset("resid", dtype="float32"), preset("massive")], prompts(), tmp_path / "a.h5",
                   batch_size=3, progress=False)
    before = hooks(lm.model)
    seen: list[int | None] = []
    real = native.forward

    def spy(*args, stop_after=None, **kwargs):
        seen.append(stop_after)
        return real(*args, stop_after=stop_after, **kwargs)

    monkeypatch.setattr(native, "forward", spy)
    probes = [preset("resid", layers=(0,), dtype="float32"), preset("massive", layers=(0,)),
              ProbeSpec("rows", "attn_pattern", layers=(0,), dtype="float32")]
    part = capture(lm, probes, prompts(), tmp_path / "b.h5", batch_size=3, progress=False)
    assert seen and set(seen) == {0}
    assert hooks(lm.model) == before
    with CaptureFile(full) as f, CaptureFile(part) as g:
        for probe, name in (("resid", "values"), ("massive", "top_values"), ("massive", "top_pos"),
                            ("massive", "median_abs")):
            np.testing.assert_array_equal(g.read(name, probe).data[:, 0], f.read(name, probe).data[:, 0])


def test_attention_rows_are_padded_on_device_like_the_schema_says(tmp_path):
    lm = load_model(tiny_model("llama"), tokenizer=word_tokenizer())
    ps = prompts(7)  # lengths 5..11, batches narrower than the padded length
    out = capture(lm, [preset("attn")], ps, tmp_path / "c.h5", batch_size=2, progress=False)
    with CaptureFile(out) as f:
        attn, lengths = f.read("values", "attn").data, f.read("lengths").data
    for i, n in enumerate(lengths):
        assert not attn[i, :, :, :, n:].any() and not attn[i, :, :, n:].any()
        torch.testing.assert_close(torch.tensor(attn[i, :, :, :n, :n].sum(-1)), torch.ones(3, 4, n))
