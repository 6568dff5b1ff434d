"""Reusable page-locked host buffers for device-to-host copies of captured batches.

Batches are right-padded to their own longest prompt, so the arrays of consecutive
batches differ in shape. Keying reusable buffers by shape would miss on almost every
batch and allocate fresh page-locked memory each time (slow: ``cudaHostAlloc`` of a
200 MB attention batch takes tens of milliseconds) while the pool grows without bound.
Here buffers are flat, kept per dtype, sized to a power of two of elements, and any free
buffer large enough serves a request as a reshaped prefix view.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

Alloc = Callable[[int, torch.dtype], torch.Tensor]
_MIN_ELEMENTS = 1024


def pinned_empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat page-locked host tensor of ``n`` elements."""
    return torch.empty(n, dtype=dtype, pin_memory=True)


def capacity(n: int) -> int:
    """Elements allocated for a request of ``n``: the next power of two (at least 1024)."""
    return max(_MIN_ELEMENTS, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class PinnedPool:
    """Free flat host buffers by dtype; :meth:`take` a shaped view, :meth:`give` the buffers back.

    Thread-safe: the compute thread takes, the writer thread gives back.
    """

    def __init__(self, alloc: Alloc = pinned_empty) -> None:
        self._alloc = alloc
        self._free: dict[torch.dtype, list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.allocations = 0  # buffers ever allocated (for tests and benchmarks)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A host tensor of ``shape`` and the flat buffer it views (hand that to :meth:`give`)."""
        n = math.prod(shape)
        with self._lock:
            free = self._free.get(dtype, [])
            fits = [i for i, b in enumerate(free) if b.numel() >= n]
            buf = free.pop(min(fits, key=lambda i: free[i].numel())) if fits else None
        if buf is None:
            buf = self._alloc(capacity(n), dtype)
            self.allocations += 1
        return buf[:n].view(shape), buf

    def give(self, buffers: list[torch.Tensor]) -> None:
        """Return flat buffers from :meth:`take` once nothing reads their views any more."""
        with self._lock:
            for buf in buffers:
                self._free.setdefault(buf.dtype, []).append(buf)

    def held_bytes(self) -> int:
        """Bytes of the free buffers."""
        with self._lock:
            return sum(b.numel() * b.element_size() for bs in self._free.values() for b in bs)
