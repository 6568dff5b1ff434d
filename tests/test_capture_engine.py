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


def _stops_seen(monkeypatch) -> list[int | None]:
    """The ``stop_after`` of every native forward pass from now on (the pass itself runs)."""
    seen: list[int | None] = []
    real = native.forward

    def spy(*args, stop_after=None, **kwargs):
        seen.append(stop_after)
        return real(*args, stop_after=stop_after, **kwargs)

    monkeypatch.setattr(native, "forward", spy)
    return seen


def test_stop_after_last_probed_layer_keeps_values_and_leaves_no_hooks(tmp_path, monkeypatch):
    lm = load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer())
    full = capture(lm, [preset("resid", dtype="float32"), preset("massive")], prompts(), tmp_path / "a.h5",
                   batch_size=3, progress=False)
    before = hooks(lm.model)
    seen = _stops_seen(monkeypatch)
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


def test_stop_after_a_middle_layer_still_runs_that_layer(tmp_path, monkeypatch):
    """Probes of layer 1 only (of 3): the pass stops right after layer 1, not before it, and
    layer 1's values (entering and leaving it) equal those of a capture of every layer."""
    lm = load_model(tiny_model("gpt_neox"), tokenizer=word_tokenizer())
    kw = {"batch_size": 3, "progress": False}
    full = capture(lm, [preset("resid", dtype="float32"), preset("resid_pre", dtype="float32")], prompts(3),
                   tmp_path / "a.h5", **kw)
    seen = _stops_seen(monkeypatch)
    layer1 = [preset(p, layers=(1,), dtype="float32") for p in ("resid", "resid_pre")]
    part = capture(lm, layer1, prompts(3), tmp_path / "b.h5", **kw)
    assert set(seen) == {1}
    with CaptureFile(full) as f, CaptureFile(part) as g:
        for probe in ("resid", "resid_pre"):
            want = f.read("values", probe).data[:, 1]
            np.testing.assert_array_equal(g.read("values", probe).data[:, 0], want)


def test_causal_block_without_a_mask_honours_the_sliding_window():
    """With no mask tensor the causal block is built here: a key is seen when it is at most the
    query's position and, under a sliding window w, later than position - w (transformers'
    rule). One memo across a sliding and a full layer, as Gemma alternates them, keeps each its own."""
    from scalelens.hooks.attention import attention_probs, attention_rows

    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 2, 7, 8)  # 4 query heads over 2 key heads
    rows = torch.tensor([[6, 3, 0], [5, 6, -1]])
    i = torch.arange(7)

    def reference(window):
        seen = i[None, :] <= i[:, None]
        if window:
            seen &= i[None, :] > i[:, None] - window
        scores = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) * 0.5
        return scores.masked_fill(~seen, float("-inf")).softmax(-1)

    row_memo: dict = {}
    full_memo: dict = {}
    for window in (3, None, 3):
        kw = {"sliding_window": window} if window else {}
        want = reference(window)
        torch.testing.assert_close(attention_probs(q, k, None, 0.5, kw, memo=full_memo), want)
        got = attention_rows(q, k, rows, None, 0.5, kw, row_memo)
        picked = want.gather(2, rows.clamp(min=0)[:, None, :, None].expand(-1, 4, -1, 7))
        torch.testing.assert_close(got[0], picked[0])
        torch.testing.assert_close(got[1, :, :2], picked[1, :, :2])
