"""Streaming HDF5 writer with preallocated storage, per-batch progress and resume."""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scalelens import __version__
from scalelens.axes import Axis, axes_attr
from scalelens.cache import schema
from scalelens.cache.lock import WriteLock
from scalelens.errors import IncompatibleResumeError, ScalelensError, errno_of
from scalelens.probes.reduce import DatasetSpec

CHUNK_BYTES = 64 * 2**20


WEIGHTS_ATTR = "weights_fingerprint"
TOKENIZER_KEY = "tokenizer_fingerprint"
"""The capture setting recording the tokenizer's vocabulary (``models.describe.tokenizer_fingerprint``)."""
NOT_IDENTITY = frozenset({"batch_size", "tokenizer", TOKENIZER_KEY})
"""``capture`` settings never compared on resume: they do not change what is captured.

A batch size given in ``capture`` (as the lower-level API allows) is ignored there: a file
resumes with any batch size, recorded per prompt in ``/batch_size``. Where the tokenizer
came from, and its fingerprint, are notes for later analyses (``scalelens analyze``
decodes answers with it); the token ids it made are in the identity (``prompts_sha256``).
"""


@dataclass(frozen=True)
class FileIdentity:
    """What must match for a capture to resume into an existing file."""

    model: dict[str, Any]
    probes: str
    prompts_sha256: str
    capture: dict[str, Any]
    weights: str = ""  # models.describe.weights_fingerprint; "" when unknown

    def mismatch(self, attrs: h5py.AttributeManager) -> str | None:
        """Name what differs from the file's ``attrs`` first, or None.

        A file written before weights were fingerprinted is not checked for them;
        :data:`NOT_IDENTITY` settings (the batch size) are never checked.
        """
        model = _json_object(attrs.get("model"))
        fields = sorted(k for k in {*model, *self.model} if model.get(k) != self.model.get(k))
        if fields and not self._moved(model, fields, attrs.get(WEIGHTS_ATTR)):
            return f"model ({', '.join(fields)})"
        for key, label in (("probes", "probes"), ("prompts_sha256", "prompts")):
            if attrs.get(key) != getattr(self, key):
                return label
        have = _json_object(attrs.get("capture"))
        changed = sorted(k for k in {*have, *self.capture} - NOT_IDENTITY
                         if have.get(k) != self.capture.get(k))
        if changed:
            return f"capture setting ({', '.join(changed)})"
        have_weights = attrs.get(WEIGHTS_ATTR)
        if have_weights and self.weights and have_weights != self.weights:
            return "model weights (the model path now holds other weights)"
        return None


    def _moved(self, model: dict[str, Any], fields: list[str], weights: Any) -> bool:
        """Whether ``model`` is this one at another path: a model directory moved or copied.

        Only where it lies differs (its path, and the name a directory's basename gives),
        both are on disk, and the weights fingerprints are known and equal.
        """
        local = {model.get("source_kind"), self.model.get("source_kind")} <= MOVABLE_KINDS
        return (local and set(fields) <= _LOCATION_FIELDS
                and bool(self.weights) and weights == self.weights)


MOVABLE_KINDS = frozenset({"local", "suite", "gguf"})
"""Model sources on disk (``ModelInfo.source_kind``), whose path may change when copied."""
_LOCATION_FIELDS = frozenset({"source", "name"})


def _json_object(raw: Any) -> dict[str, Any]:
    """A JSON-object attribute, decoded; {} when absent or of another kind (then all differs)."""
    try:
        value = json.loads(raw or "{}")
    except (json.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def chunk_shape(shape: tuple[int, ...], rows: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of ``rows`` prompts, halved along the leading axes until under CHUNK_BYTES.

    Axes are split from the first on, never a later one before an earlier reaches 1, so
    each chunk is one contiguous block of a C-ordered batch array: HDF5 then writes a batch
    in a few large pieces. (Splitting the trailing axes instead scatters every chunk into
    runs of a few hundred bytes: 10x slower writes, measured in benchmarks/RESULTS.md.)
    """
    chunk = [max(1, min(rows, shape[0]))] + [max(1, s) for s in shape[1:]]
    for axis in range(len(chunk)):
        while np.prod(chunk) * itemsize > CHUNK_BYTES and chunk[axis] > 1:
            chunk[axis] = (chunk[axis] + 1) // 2
    return tuple(chunk)


def _create_dataset(group: h5py.Group, spec: DatasetSpec, rows: int) -> None:
    """Create a chunked dataset whose chunks are all allocated now (ALLOC_TIME_EARLY)."""
    dtype = np.dtype(spec.dtype)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunk_shape(spec.shape, rows, dtype.itemsize))
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(spec.shape)
    tid = h5py.h5t.py_create(dtype, logical=True)
    dsid = h5py.h5d.create(group.id, spec.name.encode(), tid, space, dcpl=dcpl)
    ds = h5py.Dataset(dsid)
    ds.attrs[schema.AXES_ATTR] = json.dumps(axes_attr(spec.axes))


def _create_unbuffered(path: Path) -> h5py.File:
    """Create (truncate) ``path`` with HDF5's raw-data buffers off: no write waits for a close.

    HDF5 keeps a small contiguous dataset's data in its sieve buffer, and chunks in the chunk
    cache, and writes them when the dataset is closed. On a full disk that write fails inside
    the close, and HDF5 leaves the dataset registered but half torn down; it closes it again
    while the interpreter exits (``H5_term_library``) and crashes the process (a segfault, exit
    -11, after the error was raised: h5py issue 914). With both buffers off each write reaches
    the file in the call that makes it and fails there, so no close has data left to write.
    The file is laid out as ``h5py.File(path, "w")`` lays it out.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # h5py's default
    mdc_nelmts, rdcc_nslots, _, rdcc_w0 = fapl.get_cache()
    fapl.set_cache(mdc_nelmts, rdcc_nslots, 0, rdcc_w0)
    fapl.set_sieve_buf_size(0)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)  # h5py's default
    return h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl))


# The way out of an existing capture that cannot be resumed, for the CLI and the Python API.
_REDO = "use another --out or --overwrite (in Python another out= or overwrite=True)"


def _check_writable(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise ScalelensError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ScalelensError(f"output directory {parent} is not writable; choose another --out")


class CaptureWriter:
    """Writes one capture file batch by batch.

    Use :meth:`open` to create a new file (or resume a compatible incomplete one),
    :meth:`write` per batch (in prompt order), then :meth:`finish`.
    """

    def __init__(self, path: Path, f: h5py.File, batch_rows: int, creating: Path | None = None) -> None:
        """Wrap an open file; use :meth:`open` instead.

        ``batch_rows``: the batch size recorded for every prompt written (``/batch_size``).
        ``creating``: the temporary name ``f`` was created under; it is renamed to ``path``
        once the first batch is written, and deleted if the writer closes before that.
        """
        self.path, self._f = path, f
        self.batch_rows = batch_rows
        self._creating = creating
        self._lock: WriteLock | None = None

    @property
    def n_done(self) -> int:
        """Prompts already written completely."""
        return int(self._f[schema.PROGRESS][0])

    @property
    def complete(self) -> bool:
        """Whether the file was finished."""
        return bool(self._f[schema.PROGRESS][1])

    @classmethod
    def open(cls, path: str | Path, identity: FileIdentity, tokens: Any,
             probes: dict[str, list[DatasetSpec]], batch_rows: int,
             overwrite: bool = False, reuse_complete: bool = False) -> CaptureWriter:
        """Create ``path`` (atomically, via a temporary file) or reopen it to resume.

        The writer holds ``path``'s write lock (:class:`~scalelens.cache.lock.WriteLock`)
        until :meth:`close`: a second writer of the same file gets one clear error.

        A complete compatible file is an error unless ``reuse_complete`` (then the
        returned writer is already :attr:`complete`). ``batch_rows`` (prompts per batch)
        sizes a new file's chunks and is recorded for each prompt written; an incomplete
        file resumes with any ``batch_rows``.

        Raises:
            ScalelensError: if the directory is unwritable, or the file is complete
                (without ``overwrite`` or ``reuse_complete``) or belongs to another capture.
        """
        path = Path(path)
        _check_writable(path)
        lock = WriteLock(path).acquire()
        try:
            writer = cls._open_locked(path, identity, tokens, probes, batch_rows, overwrite, reuse_complete)
        except BaseException:
            lock.release()
            raise
        writer._lock = lock
        return writer

    @classmethod
    def _open_locked(cls, path: Path, identity: FileIdentity, tokens: Any,
                     probes: dict[str, list[DatasetSpec]], batch_rows: int,
                     overwrite: bool, reuse_complete: bool) -> CaptureWriter:
        # Under the lock no other writer is building this file: a temporary one is what a
        # killed (kill -9) writer left.
        path.with_name(path.name + ".creating").unlink(missing_ok=True)
        if path.exists() and not overwrite:
            return cls._resume(path, identity, probes, len(tokens.lengths), batch_rows, reuse_complete)
        # A new file is built aside and renamed into place once its first batch is written:
        # a capture that fails before that (bad input found late, Ctrl-C) leaves nothing at
        # ``path``, and a file being overwritten is replaced only by one that holds data.
        tmp = path.with_name(path.name + ".creating")
        try:
            with _create_unbuffered(tmp) as f:
                _write_header(f, identity, tokens)
                for name, specs in probes.items():
                    group = f.create_group(f"{schema.PROBES}/{name}")
                    for spec in specs:
                        _create_dataset(group, spec, batch_rows)
            return cls(path, h5py.File(tmp, "r+", locking=False, rdcc_nbytes=0), batch_rows, creating=tmp)
        except BaseException as e:  # a full disk, Ctrl-C...: no temporary file left either
            tmp.unlink(missing_ok=True)
            # h5py raises RuntimeError for a write that fails inside a flush or close
            code = errno_of(e) if isinstance(e, OSError | RuntimeError) else None
            if code is not None:  # HDF5's text is kept as the cause (__context__)
                raise ScalelensError(f"cannot create {path}: {os.strerror(code)}") from None
            if isinstance(e, OSError):
                raise ScalelensError(f"cannot create {path}: {e.strerror or e}") from None
            raise

    @classmethod
    def _resume(cls, path: Path, identity: FileIdentity, probes: dict[str, list[DatasetSpec]],
                n_prompts: int, batch_rows: int, reuse_complete: bool) -> CaptureWriter:
        try:  # read-only first: a complete file that is reused is never touched
            f = h5py.File(path, "r", locking=False)
        except OSError as e:
            raise ScalelensError(
                f"{path} exists but is not a readable capture ({e}); delete it or pass --overwrite"
            ) from None
        version = f.attrs.get("schema_version")
        if version != schema.SCHEMA_VERSION:
            f.close()
            raise ScalelensError(_version_mismatch(path, version))
        what = identity.mismatch(f.attrs)
        writer = cls(path, f, batch_rows)
        if what is not None:
            f.close()
            raise IncompatibleResumeError(
                f"{path} holds a capture with different {what}; {_REDO}"
            )
        damage = _damage(f, probes, n_prompts)
        if damage is not None:
            f.close()
            raise ScalelensError(f"{path} is damaged ({damage}); {_REDO}")
        if writer.complete and not reuse_complete:
            f.close()
            raise ScalelensError(f"{path} is already complete; pass --overwrite (overwrite=True in "
                                 "Python) to redo it")
        if writer.complete:
            return writer
        f.close()
        try:
            f = h5py.File(path, "r+", locking=False, rdcc_nbytes=0)
        except OSError as e:
            if "already open" not in str(e):
                raise
            # HDF5 shares one handle per file within a process, and one opened read-only
            # (a CaptureFile, an h5py.File) cannot be reopened for writing.
            raise ScalelensError(
                f"{path} is open for reading in this process (a CaptureFile or h5py.File); "
                "close it, then rerun to resume the capture"
            ) from None
        return cls(path, f, batch_rows)

    def write(self, start: int, arrays: dict[str, dict[str, np.ndarray]]) -> None:
        """Write one batch starting at prompt ``start`` and advance progress.

        The batch's rows need not fall on chunk boundaries (a file resumed with another
        batch size): HDF5 then rewrites the chunks it shares with finished prompts as they are.
        """
        if start != self.n_done:
            raise RuntimeError(f"batch starts at {start} but {self.n_done} prompts are done")
        stop = start
        for probe, data in arrays.items():
            group = self._f[f"{schema.PROBES}/{probe}"]
            for name, arr in data.items():
                ds = group[name]
                stop = start + arr.shape[0]
                ds[start:stop] = _pad_to(arr, ds.shape[1:])
        self._f[schema.BATCH_SIZE][start:stop] = self.batch_rows
        self._f.flush()
        self._f[schema.PROGRESS][0] = stop
        self._f.flush()
        self._publish()

    def _publish(self) -> None:
        """Rename a new file into place (after its first batch)."""
        if self._creating is not None:
            os.replace(self._creating, self.path)
            self._creating = None

    def finish(self) -> None:
        """Mark the file complete and close it."""
        self._f[schema.PROGRESS][1] = 1
        self._f.flush()
        self._publish()
        self.close()

    def close(self) -> None:
        """Close the file (progress so far stays resumable) and release the write lock.

        A new file that never got a batch is deleted: there is nothing to resume.
        """
        try:
            if self._f.id.valid:
                self._f.close()
            if self._creating is not None:
                self._creating.unlink(missing_ok=True)
                self._creating = None
        finally:
            if self._lock is not None:
                self._lock.release()


Batch = dict[str, dict[str, np.ndarray]]


class BackgroundWriter:
    """Runs :meth:`CaptureWriter.write` on one thread, so HDF5 writes overlap compute.

    Batches are written in the order they are submitted, each by ``CaptureWriter.write``,
    so the crash-safety contract is the writer's: a batch's data is written and flushed
    before ``/progress`` counts it. At most ``depth`` batches wait (``submit`` blocks
    beyond that), so host memory stays bounded whatever the number of prompts. An error
    on the thread stops further writes and is raised by the next ``submit`` or ``close``.

    Use as a context manager, or call :meth:`close` (which writes what was submitted).
    """

    _STOP = object()

    def __init__(self, writer: CaptureWriter, depth: int = 2) -> None:
        """Start the thread writing to ``writer``."""
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._failed = False  # after a failed write nothing more is written
        self._thread = threading.Thread(target=self._loop, name="scalelens-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            start, arrays, ready, done = item
            try:
                if not self._failed:
                    if ready is not None:
                        ready()
                    self.writer.write(start, arrays)
            except BaseException as e:  # handed to the submitting thread
                self._failed = True
                self._error = e
            finally:
                if done is not None:
                    done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, start: int, arrays: Batch, ready: Callable[[], None] | None = None,
               done: Callable[[], None] | None = None) -> None:
        """Queue one batch starting at prompt ``start``.

        Args:
            start: First prompt of the batch.
            arrays: probe -> dataset -> host array; must stay unchanged until ``done`` runs.
            ready: Called on the writer thread before writing (e.g. wait for a copy).
            done: Called on the writer thread once the batch is written (or skipped).
        """
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the background writer is closed")
        self._queue.put((start, arrays, ready, done))

    def close(self) -> None:
        """Write everything submitted, stop the thread, raise its error if it had one."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: still write what was computed, but keep the first error
            self.close()
        except Exception:
            pass


def _version_mismatch(path: Path, version: Any) -> str:
    """Why a capture file of another schema version is neither resumed nor reused."""
    if isinstance(version, np.integer | int) and version < schema.SCHEMA_VERSION:
        return (f"{path} was written by an older scalelens (schema version {version}; this one "
                f"writes {schema.SCHEMA_VERSION}), whose prompts may be captured otherwise; it is "
                f"still read, but not resumed or reused: {_REDO}")
    if isinstance(version, np.integer | int):
        return (f"{path} was written by a newer scalelens (schema version {version}; this one "
                f"writes {schema.SCHEMA_VERSION}); upgrade scalelens, or {_REDO}")
    return f"{path} has schema version {version!r}, not a scalelens capture's; {_REDO}"


def _damage(f: h5py.File, probes: dict[str, list[DatasetSpec]], n_prompts: int) -> str | None:
    """What is wrong with a file whose identity matches (missing datasets, bad progress), or None."""
    try:
        progress = f.get(schema.PROGRESS)
        if not isinstance(progress, h5py.Dataset) or progress.shape != (2,):
            return f"no readable /{schema.PROGRESS}"
        done = int(progress[0])
        if not 0 <= done <= n_prompts:
            return f"/{schema.PROGRESS} says {done} of {n_prompts} prompts are done"
        for name, specs in probes.items():
            for spec in specs:
                where = f"{schema.PROBES}/{name}/{spec.name}"
                ds = f.get(where)
                want = (spec.shape, np.dtype(spec.dtype))
                if not isinstance(ds, h5py.Dataset) or (ds.shape, ds.dtype) != want:
                    return f"dataset {where} is missing or misshapen"
        record = f.get(schema.BATCH_SIZE)
        if not isinstance(record, h5py.Dataset) or record.shape != (n_prompts,):
            return f"/{schema.BATCH_SIZE} is missing or misshapen"
    except (OSError, KeyError, ValueError, TypeError) as e:
        return f"unreadable: {e}"
    return None


def _pad_to(arr: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
    if arr.shape[1:] == tail:
        return arr
    pad = [(0, 0)] + [(0, t - s) for s, t in zip(arr.shape[1:], tail, strict=True)]
    fill = -1 if np.issubdtype(arr.dtype, np.integer) else 0
    return np.pad(arr, pad, constant_values=fill)


def _write_header(f: h5py.File, identity: FileIdentity, tokens: Any) -> None:
    f.attrs["schema_version"] = schema.SCHEMA_VERSION
    f.attrs["scalelens_version"] = __version__
    f.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    f.attrs["model"] = json.dumps(identity.model, sort_keys=True)
    f.attrs["probes"] = identity.probes
    f.attrs["capture"] = json.dumps(identity.capture, sort_keys=True)
    f.attrs["prompts_sha256"] = identity.prompts_sha256
    if identity.weights:
        f.attrs[WEIGHTS_ATTR] = identity.weights
    f.attrs["segment_labels"] = json.dumps(list(tokens.labels))
    P, S = Axis.PROMPT, Axis.SEQ
    for name, arr, axes in (
        (schema.TOKENS, tokens.ids, (P, S)),
        (schema.SEGMENTS, tokens.segments, (P, S)),
        (schema.LENGTHS, tokens.lengths, (P,)),
    ):
        ds = f.create_dataset(name, data=arr)
        ds.attrs[schema.AXES_ATTR] = json.dumps(axes_attr(axes))
    _create_dataset(f, DatasetSpec(schema.PROGRESS, (2,), "int64", (Axis.FIELD,)), 2)
    f[schema.PROGRESS][...] = np.zeros(2, dtype=np.int64)
    n = len(tokens.lengths)  # 4 KiB chunks: each batch rewrites one or two of them, not all n
    _create_dataset(f, DatasetSpec(schema.BATCH_SIZE, (n,), "int32", (P,)), 1024)
    f[schema.BATCH_SIZE][...] = np.zeros(n, dtype=np.int32)
