"""Logits probes at chosen positions run the LM head on those positions only, with the same values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import prompts, tiny_model, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.models.load import load_model
from scalelens.probes.spec import Positions, ProbeSpec, preset


def _probes() -> list[ProbeSpec]:
    return [preset("predictions", positions=Positions.parse("-1,-3")),
            ProbeSpec("early", "logits", reduction="top1", positions=Positions.parse("0,2"))]


def _head_widths(model: Any) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    widths: list[int] = []
    head: torch.nn.Module = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    return widths, handle


@pytest.mark.parametrize("arch", ["gpt_neox", "gemma2"])  # gemma2: final logit softcapping
def test_top1_at_chosen_positions_equals_the_full_forward(arch, tmp_path):
    lm = load_model(tiny_model(arch), tokenizer=word_tokenizer())
    texts = prompts(7)
    widths, handle = _head_widths(lm.model)
    try:
        out = capture(lm, _probes(), texts, tmp_path / "p.h5", batch_size=3, progress=False)
    finally:
        handle.remove()
    with CaptureFile(out) as f:
        union = np.concatenate([f.read("query_pos", n).data for n in ("predictions", "early")], axis=1)
        lengths = f.read("lengths").data
    batches = [(a, a + 3) for a in range(0, len(texts), 3)]
    # the head ran on the union of the batch's probed positions, fewer than the padded width
    assert widths == [np.unique(union[a:b]).size for a, b in batches]
    assert sum(widths) < sum(int(lengths[a:b].max()) for a, b in batches)
    with CaptureFile(out) as f:
        for name in ("predictions", "early"):
            pos = f.read("query_pos", name).data
            token = f.read("top1_token", name).data[:, 0]
            prob = f.read("top1_prob", name).data[:, 0]
            for i, text in enumerate(texts):
                ids = torch.tensor(lm.tokenizer(text)["input_ids"])[None]
                with torch.inference_mode():
                    p = torch.softmax(lm.model(input_ids=ids).logits[0].float(), -1)
                want_prob, want_token = p[pos[i]].max(-1)
                np.testing.assert_array_equal(token[i], want_token.numpy())
                # padded batch vs one unpadded prompt: SDPA with and without a mask, ~1e-5 apart
                np.testing.assert_allclose(prob[i], want_prob.numpy(), rtol=1e-4, atol=1e-7)


def test_logits_at_every_position_still_run_the_head_everywhere(tmp_path):
    lm = load_model(tiny_model(), tokenizer=word_tokenizer())
    texts = prompts(4)
    widths, handle = _head_widths(lm.model)
    try:
        capture(lm, [preset("logits", dtype="float32"), *_probes()], texts, tmp_path / "a.h5",
                batch_size=4, progress=False)
    finally:
        handle.remove()
    assert widths == [max(len(lm.tokenizer(t)["input_ids"]) for t in texts)]  # every position
