"""Batched medians equal per-prompt kthvalue medians; the background writer keeps order and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelens.axes import Axis
from scalelens.cache.reader import CaptureFile
from scalelens.cache.writer import BackgroundWriter, CaptureWriter, FileIdentity
from scalelens.probes.prompts import TokenizedPrompts
from scalelens.probes.reduce import BatchContext, DatasetSpec, _medians


def per_prompt(a: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    out = torch.empty(a.shape[0])
    for i, n in enumerate(lengths):
        x = a[i, :n].reshape(-1)
        lo = torch.kthvalue(x, (x.numel() + 1) // 2).values
        out[i] = (lo + torch.kthvalue(x, x.numel() // 2 + 1).values) / 2
    return out


@pytest.mark.parametrize("use_numpy", [True, False])
def test_batched_medians_equal_per_prompt(use_numpy):
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        b, s, d = (int(torch.randint(1, k, (1,), generator=g)) for k in (6, 9, 6))
        lengths = torch.randint(1, s + 1, (b,), generator=g).tolist()
        if trial % 2:
            lengths[0] = s
        ties = trial % 3 == 0
        a = (torch.randint(0, 4, (b, s, d), generator=g).float() if ties
             else torch.randn(b, s, d, generator=g).abs())
        x = a.clone()
        for i, n in enumerate(lengths):
            x[i, n:] = -1.0
        ctx = BatchContext(ids=torch.zeros(b, s), valid=torch.ones(b, s), rows={}, lengths=lengths)
        got = _medians(x, ctx, use_numpy=use_numpy)  # False: the kthvalue path a GPU takes
        want = per_prompt(a, lengths)
        assert torch.equal(got, want), (lengths, s, d)
        np.testing.assert_allclose(got.numpy(), [np.median(a[i, :n].numpy()) for i, n in enumerate(lengths)])


def _writer(path, n=6, batch=2):
    tokens = TokenizedPrompts(np.zeros((n, 3), np.int32), np.zeros((n, 3), np.int16), np.full(n, 3, np.int32),
                              ("text",))
    layout = {"p": [DatasetSpec("values", (n, 2), "float32", (Axis.PROMPT, Axis.LAYER))]}
    ident = FileIdentity({"name": "t"}, "[]", tokens.fingerprint(), {"batch_size": batch})
    return CaptureWriter.open(path, ident, tokens, layout, batch)


def test_background_writer_writes_in_order_and_runs_callbacks(tmp_path):
    w = _writer(tmp_path / "a.h5")
    calls = []
    with BackgroundWriter(w, depth=1) as bg:
        for start in range(0, 6, 2):
            data = np.full((2, 2), start, np.float32)
            bg.submit(start, {"p": {"values": data}}, ready=lambda s=start: calls.append(("ready", s)),
                      done=lambda s=start: calls.append(("done", s)))
    w.finish()
    assert calls == [(k, s) for s in (0, 2, 4) for k in ("ready", "done")]
    with CaptureFile(tmp_path / "a.h5") as f:
        assert (f.n_done, f.complete) == (6, True)
        np.testing.assert_array_equal(f.read("values", "p").data[:, 0], [0, 0, 2, 2, 4, 4])


def test_background_writer_raises_the_thread_error_and_stops_writing(tmp_path):
    w = _writer(tmp_path / "b.h5")
    bg = BackgroundWriter(w)
    bg.submit(2, {"p": {"values": np.zeros((2, 2), np.float32)}})  # out of order: write() refuses
    bg.submit(0, {"p": {"values": np.zeros((2, 2), np.float32)}})  # would be valid, but skipped
    with pytest.raises(RuntimeError, match="batch starts at 2"):
        bg.close()
    assert w.n_done == 0
    w.close()
