"""HDF5 schema v1 of a scalelens capture file.

Layout::

    /                    attrs: schema_version, scalelens_version, created, model (JSON),
                                probes (JSON), capture (JSON), prompts_sha256, segment_labels (JSON)
    /tokens              (prompt, seq) int32, -1 on padding
    /segments            (prompt, seq) int16 index into segment_labels, -1 on padding
    /lengths             (prompt,) int32 real tokens per prompt
    /progress            (2,) int64: [prompts done, complete flag]
    /batch_size          (prompt,) int32 batch size each prompt was captured with, 0 until written
                         (absent in files written before it was recorded)
    /probes/<name>/...   one group per probe, datasets listed by ProbeRuntime.datasets()

Every dataset carries an ``axes`` attribute (JSON list of axis names, see ``axes.py``).
All datasets are created and their storage allocated before any activation is
written, so writing a batch touches raw data only: a killed writer leaves the file's
metadata intact, and ``progress`` says which prompts are complete.

The batch size is not part of a file's identity (it does not change what is captured):
a capture resumed with another batch size records it per prompt in ``batch_size``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
PROGRESS = "progress"
TOKENS = "tokens"
SEGMENTS = "segments"
LENGTHS = "lengths"
BATCH_SIZE = "batch_size"
PROBES = "probes"
AXES_ATTR = "axes"
