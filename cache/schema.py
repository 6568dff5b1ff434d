"""HDF5 schema v2 of a scalelens capture file.

Layout::

    /                    attrs: schema_version, scalelens_version, created, model (JSON),
                                probes (JSON), capture (JSON), prompts_sha256, segment_labels (JSON)
    /tokens              (prompt, seq) int32, -1 on padding
    /segments            (prompt, seq) int16 index into segment_labels, -1 on padding
    /lengths             (prompt,) int32 real tokens per prompt
    /progress            (2,) int64: [prompts done, complete flag]
    /batch_size          (prompt,) int32 batch size each prompt was captured with, 0 until written
                         (absent in some v1 files)
    /probes/<name>/...   one group per probe, datasets listed by ProbeRuntime.datasets()

Every dataset carries an ``axes`` attribute (JSON list of axis names, see ``axes.py``).
All datasets are created and their storage allocated before any activation is
written, so writing a batch touches raw data only: a killed writer leaves the file's
metadata intact, and ``progress`` says which prompts are complete.

The batch size is not part of a file's identity (it does not change what is captured):
a capture resumed with another batch size records it per prompt in ``batch_size``.

Versions: raise :data:`SCHEMA_VERSION` when the layout or the meaning of stored values
changes. A file of another version is never resumed or reused (its finished prompts would
sit beside prompts captured otherwise); one of an older version is still read. v2 has v1's
layout; v1 files were written by scalelens up to commit d5a6072 (version 0.1.0 throughout),
while what they hold changed under the same version: Gemma 2 logits uncapped before commit
f7f0f18, longrope prompts batched across the switch length before 568dbd4, no
``/batch_size`` before 4fcda18.
"""

from __future__ import annotations

SCHEMA_VERSION = 2
PROGRESS = "progress"
TOKENS = "tokens"
SEGMENTS = "segments"
LENGTHS = "lengths"
BATCH_SIZE = "batch_size"
PROBES = "probes"
AXES_ATTR = "axes"
