"""HDF5 chunk shapes: contiguous blocks of a batch array, under the size cap."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scalelens.cache.writer import CHUNK_BYTES, chunk_shape


@given(
    shape=st.lists(st.integers(1, 4096), min_size=1, max_size=5).map(tuple),
    rows=st.integers(1, 64),
    itemsize=st.sampled_from([1, 2, 4, 8]),
)
def test_chunks_are_contiguous_blocks_under_the_cap(shape, rows, itemsize):
    chunk = chunk_shape(shape, rows, itemsize)
    assert len(chunk) == len(shape)
    assert all(1 <= c <= s for c, s in zip(chunk, shape, strict=True))
    assert chunk[0] <= rows
    # one split axis j: ones before it, full axes after it -> a C-contiguous block
    split = [i for i, (c, s) in enumerate(zip(chunk, shape, strict=True)) if c < s]
    j = split[-1] if split else 0
    assert all(c == 1 for c in chunk[:j]) or (j == 0)
    assert all(c == s for c, s in zip(chunk[j + 1 :], shape[j + 1 :], strict=True))
    if any(c > 1 for c in chunk):
        assert np.prod(chunk) * itemsize <= CHUNK_BYTES


def test_resid_batch_chunks_keep_whole_prompts():
    # 160m resid at 512 tokens in batches of 32: 4 whole prompts per chunk, not split in d
    assert chunk_shape((128, 12, 512, 768), 32, 2) == (4, 12, 512, 768)
    assert chunk_shape((128, 12, 12, 512, 512), 32, 4) == (1, 3, 12, 512, 512)
