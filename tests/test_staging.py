"""The host staging pool: buffers reused across batch shapes, bounded, never shared while in use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelens.cache.staging import PinnedPool, capacity


def _plain(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(n, dtype=dtype)  # page-locking needs CUDA; the pool logic does not


@pytest.mark.parametrize(("n", "expected"), [(1, 1024), (1024, 1024), (1025, 2048), (3_000_000, 4_194_304)])
def test_capacity_next_power_of_two(n, expected):
    assert capacity(n) == expected


def test_varying_widths_reuse_buffers():
    """16 batches right-padded to widths 96..128, two in flight at a time: a handful of allocations."""
    pool = PinnedPool(_plain)
    rng = np.random.default_rng(0)
    in_flight: list[list[torch.Tensor]] = []
    for _ in range(16):
        w = int(rng.integers(96, 129))
        views = [pool.take((8, 12, w, 64), torch.float16), pool.take((8, 12), torch.float32)]
        in_flight.append([buf for _, buf in views])
        for view, _ in views:
            assert view.shape in ((8, 12, w, 64), (8, 12))
        if len(in_flight) > 2:
            pool.give(in_flight.pop(0))
    assert pool.allocations <= 6  # 3 batches live x 2 dtypes; keying by shape would make ~30


def test_taken_buffers_never_alias():
    pool = PinnedPool(_plain)
    a, buf_a = pool.take((4, 100), torch.float32)
    b, buf_b = pool.take((4, 100), torch.float32)
    assert buf_a.data_ptr() != buf_b.data_ptr()
    a.fill_(1.0)
    b.fill_(2.0)
    assert float(a.sum()) == 400.0
    pool.give([buf_a])
    c, buf_c = pool.take((2, 50), torch.float32)  # smaller request reuses the returned buffer
    assert buf_c.data_ptr() == buf_a.data_ptr() and pool.allocations == 2
    assert c.shape == (2, 50)


def test_dtypes_kept_apart_and_best_fit():
    pool = PinnedPool(_plain)
    _, big = pool.take((5000,), torch.float32)
    _, small = pool.take((1000,), torch.float32)
    pool.give([big, small])
    _, got = pool.take((900,), torch.float32)
    assert got.data_ptr() == small.data_ptr()  # the smallest buffer that fits
    _, other = pool.take((900,), torch.int64)
    assert other.dtype == torch.int64 and pool.allocations == 3
    assert pool.held_bytes() == big.numel() * 4


def test_a_free_buffer_too_small_is_not_handed_out():
    """A wider batch after a narrower one: the returned buffer is too small, so a new one is made
    (a view of a prefix shorter than the request would fail or read past the batch)."""
    pool = PinnedPool(_plain)
    _, small = pool.take((1000,), torch.float32)
    pool.give([small])
    view, got = pool.take((4, 1500), torch.float32)
    assert view.shape == (4, 1500) and got.numel() >= 6000 and got.data_ptr() != small.data_ptr()
    assert pool.allocations == 2 and pool.held_bytes() == small.numel() * 4
