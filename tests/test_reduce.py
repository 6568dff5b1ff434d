"""Batched medians equal per-prompt kthvalue medians; the background writer keeps order and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelens.axes import Axis
from scalelens.cache.reader import CaptureFile
from scalelens.cache.writer import BackgroundWriter, CaptureWriter, FileIdentity
from scalelens.probes.prompts import TokenizedPrompts
from scalelens.probes.reduce import BatchContext, DatasetSpec, _median_1d, _medians, _topk_lowest_index_first


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


@pytest.mark.parametrize("everywhere", [False, True])
def test_massive_top_entries_break_ties_by_lowest_index(everywhere):
    """Both ways the massive summary picks its top entries (the CPU's topk of k + 1 with tied
    rows redone by key, and the device's key for every row) give a stable descending sort's
    first k: ties, NaN (above inf) and -1 padding included."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n, b, width = (int(torch.randint(1, m, (1,), generator=g)) for m in (3, 5, 120))
        k = int(torch.randint(1, min(width, 20) + 1, (1,), generator=g))
        a = torch.randint(0, 4 if trial % 2 else 1000, (n, b, width), generator=g).float() / 4
        a[a == 0.5] = -1.0  # padding
        if trial % 5 == 0:
            a[..., 0], a[..., -1] = float("nan"), float("inf")
        vals, idx = _topk_lowest_index_first(a, k, everywhere=everywhere)
        for row, v, i in zip(a.reshape(-1, width).numpy(), vals.reshape(-1, k).numpy(),
                             idx.reshape(-1, k).numpy(), strict=True):
            bits = row.view(np.int32)  # orders NaN above inf, as topk does
            want = np.lexsort((np.arange(width), -bits.astype(np.int64)))[:k]
            np.testing.assert_array_equal(i, want, err_msg=str(trial))
            np.testing.assert_array_equal(v.view(np.int32), bits[want])


def test_median_1d_is_exactly_the_partition_median():
    rng = np.random.default_rng(0)
    kinds = {
        "normal": lambda n: np.abs(rng.standard_normal(n)),
        "ties": lambda n: rng.integers(0, 5, n),
        "heavy": lambda n: np.abs(rng.standard_cauchy(n)),
        "blocks": lambda n: np.repeat(np.abs(rng.standard_normal(n // 50 + 1)), 50)[:n],
        "massive dims": lambda n: np.abs(rng.standard_normal(n)) * np.where(np.arange(n) % 512 == 7, 1e4, 1),
    }
    for n in (1, 2, 3, 32768, 32769, 40000, 65536, 100001):
        for name, draw in kinds.items():
            x = draw(n).astype(np.float32)
            p = np.partition(x, ((n - 1) // 2, n // 2))
            want = (p[(n - 1) // 2] + p[n // 2]) / np.float32(2)
            assert _median_1d(x) == want, (n, name)
            assert _median_1d(x) == np.float32(np.median(x)) or name == "heavy", (n, name)
    x = np.abs(rng.standard_normal(50000)).astype(np.float32)
    x[123] = np.nan  # falls back to a full partition: NaN sorts last, like torch.kthvalue
    p = np.partition(x, (24999, 25000))
    assert _median_1d(x) == (p[24999] + p[25000]) / np.float32(2)


def test_median_1d_keeps_bounded_memory_over_many_prompt_lengths():
    """Each row length (prompt length x width) over 32768 entries used to keep its 16 KiB
    sample of positions for the whole process: 1000 lengths held 16 MB (a long capture of
    prompts of every length, a sweep over many widths). Now at most 256 are kept (4 MiB),
    and a length whose sample was dropped still gets the exact median."""
    import tracemalloc

    base = np.abs(np.random.default_rng(1).standard_normal(32769 + 1000)).astype(np.float32)
    first = base[:32769]
    want = _median_1d(first)
    tracemalloc.start()
    try:
        for n in range(32770, 32770 + 1000):
            _median_1d(base[:n])
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 6_000_000, retained  # 16 MB before
    assert _median_1d(first) == want == np.float32(np.median(first))

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


@pytest.mark.parametrize("use_numpy", [True, False])
def test_stacked_layers_medians_equal_layer_by_layer(use_numpy):
    g = torch.Generator().manual_seed(1)
    n, b, s, d = 3, 4, 6, 5
    lengths = [6, 2, 5, 1]
    a = torch.randn(n, b, s, d, generator=g).abs()
    for i, m in enumerate(lengths):
        a[:, i, m:] = -1.0
    ctx = BatchContext(ids=torch.zeros(b, s), valid=torch.ones(b, s), rows={}, lengths=lengths)
    want = torch.stack([_medians(a[j].clone(), ctx, use_numpy=use_numpy) for j in range(n)])
    got = _medians(a.clone(), ctx, use_numpy=use_numpy)
    assert got.shape == (n, b)
    assert torch.equal(got, want)
