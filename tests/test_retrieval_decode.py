"""Reference-mode decoding (KV cache, as the paper's code) equals recomputing the whole
prefix at every step with eager attention weights, on every tiny architecture.

The Gemma configs have a 4-token sliding window and prompts are longer than that, so a
cache that drops keys outside the window would shift the top-1 key indices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import ARCHS, tiny_model, word_tokenizer

from scalelens.measure import retrieval as r
from scalelens.models.load import load_model

STEPS = 8


def _recomputed(arch: str, seed: int, ids: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """Greedy decoding without a cache; top-1 keys from HF's eager attention weights."""
    model = tiny_model(arch, attn="eager", seed=seed)
    tops, produced = [], []
    with torch.inference_mode():
        for _ in range(STEPS):
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
            tops.append(np.stack([a[0, :, -1].argmax(-1).numpy() for a in out.attentions]))
            produced.append(int(out.logits[0, -1].argmax()))
            ids = torch.cat([ids, ids.new_tensor([[produced[-1]]])], dim=1)
    return np.stack(tops, axis=-1), produced


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1])
def test_cached_greedy_top1_equals_recomputed_eager(arch, seed):
    loaded = load_model(tiny_model(arch, seed=seed), tokenizer=word_tokenizer())
    ids = torch.randint(0, 50, (1, 20), generator=torch.Generator().manual_seed(seed))
    top1, produced = r._greedy_top1(loaded, ids, STEPS)
    want_top1, want_produced = _recomputed(arch, seed, ids)
    assert produced == want_produced
    assert top1.shape == want_top1.shape == (3, 4, STEPS)
    np.testing.assert_array_equal(top1, want_top1)
    assert top1.max() >= 20  # some head looks at a produced token: the cached steps were used
