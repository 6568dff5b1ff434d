"""Read capture files: arrays come back with their axis names.

Concurrent readers. A capture file's HDF5 metadata never changes after it is created
(all storage is allocated up front, see ``schema.py``), so a reader may open it while a
capture is writing it, without SWMR and without file locks (``locking=False``: HDF5's
locks fail on many network file systems and would block the reader). A
:class:`CaptureFile` is a snapshot: it reads ``/progress`` once when opened and only
ever returns the prompts finished by then (``n_done``), so arrays read one after the
other always agree in length. :meth:`CaptureFile.refresh` takes a newer snapshot.

Every failure to read (missing, truncated or corrupted file, a file of a newer schema)
is a :class:`~scalelens.errors.ScalelensError` with one line naming the fix.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from scalelens.cache import schema
from scalelens.cache.writer import WEIGHTS_ATTR
from scalelens.errors import ScalelensError

T = TypeVar("T")

# Rows of a float dataset scanned at once by nonfinite() (bounded memory on big files).
_SCAN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Labeled:
    """An array with the names of its axes."""

    data: np.ndarray
    axes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.data.ndim != len(self.axes):
            raise ValueError(f"{self.data.ndim}-d array with axes {self.axes}")


@dataclass(frozen=True)
class NonFinite:
    """Non-finite (NaN or +-inf) values found in one dataset of a probe.

    Attributes:
        probe: Probe name.
        dataset: Dataset name within the probe.
        count: Number of non-finite values among finished prompts.
        prompts: Indices of the prompts holding them.
        layers: Layer positions (index into the probe's layers) holding them, when the
            dataset has a layer axis.
    """

    probe: str
    dataset: str
    count: int
    prompts: tuple[int, ...]
    layers: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"probe": self.probe, "dataset": self.dataset, "count": self.count,
                "prompts": list(self.prompts), "layers": list(self.layers)}

    def line(self) -> str:
        """One human-readable line."""
        where = f"prompts {_short(self.prompts)}"
        if self.layers:
            where += f", layers {_short(self.layers)}"
        return f"probe {self.probe}/{self.dataset}: {self.count} NaN/inf value(s) in {where}"


class PromptSlices:
    """A dataset with a leading prompt axis, read only in slices of finished prompts.

    What :meth:`CaptureFile.lazy` returns: ``shape``, ``dtype``, ``ndim`` and ``axes`` as
    for the array, and ``x[start:stop, ...]`` reads those prompts from disk alone, so an
    analysis can reduce a capture larger than memory range by range.
    """

    def __init__(self, read: Callable[[tuple[Any, ...]], np.ndarray], shape: tuple[int, ...],
                 dtype: np.dtype, axes: tuple[str, ...]) -> None:
        """Wrap ``read`` (indexes the dataset) over its first ``shape[0]`` prompts."""
        self._read, self.shape, self.dtype, self.axes = read, shape, dtype, axes
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """``key``'s entries; its first index is a slice of prompts (step 1)."""
        first, *rest = key if isinstance(key, tuple) else (key,)
        if not isinstance(first, slice):
            raise TypeError(f"index the prompt axis with a slice, got {first!r}")
        start, stop, step = first.indices(self.shape[0])
        if step != 1:
            raise TypeError("prompt slices take step 1")
        return np.asarray(self._read((slice(start, max(start, stop)), *rest)))


def _short(values: tuple[int, ...], n: int = 8) -> str:
    text = ",".join(str(v) for v in values[:n])
    return text + (f",... ({len(values)} in all)" if len(values) > n else "")


def _missing_message(path: Path) -> str:
    if path.is_dir():
        return f"{path} is a directory; give a capture .h5 file"
    creating = path.with_name(path.name + ".creating")
    if creating.exists():
        return (f"capture file {path} does not exist yet: a capture is creating it, or was "
                f"interrupted while creating it ({creating.name} is left over; rerun the capture command)")
    return f"capture file {path} does not exist"


class CaptureFile:
    """Read-only snapshot view of a capture file, safe to open while a capture writes it.

    Only prompts below ``n_done`` (read when opened) are returned until :meth:`refresh`.
    """

    def __init__(self, path: str | Path) -> None:
        """Open ``path``; raise ScalelensError if it is missing, corrupt or too new."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ScalelensError(_missing_message(self.path))
        try:
            self._f = h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise ScalelensError(
                f"{self.path} is not a readable HDF5 file (truncated or corrupted: {_h5_reason(e)}); "
                "re-run the capture with --overwrite"
            ) from None
        try:
            self._validate()
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        version = self._guard("the file header", lambda: self._f.attrs.get("schema_version"))
        if version is None:
            raise ScalelensError(f"{self.path} is not a scalelens capture (no schema_version attribute)")
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise ScalelensError(f"{self.path}: schema_version {version!r} is not an integer (corrupted?); "
                                 "re-run the capture with --overwrite") from None
        if version > schema.SCHEMA_VERSION:
            raise ScalelensError(
                f"{self.path} uses schema version {version}, newer than this scalelens "
                f"understands ({schema.SCHEMA_VERSION}); upgrade scalelens to read it"
            )
        self._schema_version = version
        for name in (schema.PROGRESS, schema.TOKENS, schema.SEGMENTS, schema.LENGTHS):
            if not self._guard(f"dataset {name}", partial(self._f.__contains__, name)):
                raise ScalelensError(f"{self.path} lacks /{name}: it is not a complete scalelens capture "
                                     "(corrupted?); re-run the capture with --overwrite")
        for key, kind in (("model", dict), ("capture", dict), ("probes", list), ("segment_labels", list)):
            value = self.attr_json(key)
            ok = isinstance(value, kind) and (key != "probes" or all(isinstance(p, dict) for p in value))
            if not ok:
                raise ScalelensError(f"{self.path}: attribute {key!r} is not a JSON "
                                     f"{'object' if kind is dict else 'list'} (corrupted?); "
                                     "re-run the capture with --overwrite")
        self.refresh()
        n = self.n_prompts
        if not 0 <= self._n_done <= n:
            raise ScalelensError(f"{self.path}: progress says {self._n_done} of {n} prompts are done "
                                 "(corrupted?); re-run the capture with --overwrite")

    def _guard(self, what: str, fn: Callable[[], T]) -> T:
        """Run an h5py access; turn a low-level failure into a one-line error."""
        if not self._f.id.valid:
            raise ScalelensError(f"{self.path} was closed; open it again to read {what}")
        try:
            return fn()
        except ScalelensError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            raise ScalelensError(
                f"{self.path}: cannot read {what} (file truncated or corrupted: {_h5_reason(e)}); "
                "re-run the capture with --overwrite"
            ) from None

    def __repr__(self) -> str:
        """One line: the file, the captured model, its probes and how far the capture got."""
        if not self._f.id.valid:
            return f"CaptureFile({str(self.path)!r}, closed)"
        try:
            m = self.model
            at = f"@{m['revision']}" if m.get("revision") else ""
            state = "complete" if self._complete else f"{self._n_done}/{self.n_prompts} prompts done"
            return (f"CaptureFile({str(self.path)!r}, model={m.get('name')}{at}, "
                    f"probes={self.probe_names}, {self.n_prompts} prompts, {state})")
        except ScalelensError:
            return f"CaptureFile({str(self.path)!r}, unreadable)"

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        f = getattr(self, "_f", None)
        if f is not None and f.id.valid:
            f.close()

    def refresh(self) -> None:
        """Take a new snapshot of the progress a concurrent capture has made."""
        progress = self._guard("/progress", lambda: np.asarray(self._f[schema.PROGRESS][()]))
        if progress.shape != (2,):
            raise ScalelensError(f"{self.path}: /progress has shape {progress.shape}, expected (2,) "
                                 "(corrupted?); re-run the capture with --overwrite")
        self._n_done, self._complete = int(progress[0]), bool(progress[1])

    # -- metadata ----------------------------------------------------------------
    def attr_json(self, key: str) -> Any:
        """A JSON-encoded root attribute, decoded."""
        raw = self._guard(f"attribute {key}", lambda: self._f.attrs[key])
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            raise ScalelensError(f"{self.path}: attribute {key!r} is not valid JSON (corrupted?); "
                                 "re-run the capture with --overwrite") from None

    @property
    def model(self) -> dict[str, Any]:
        """The ModelInfo dict of the captured model."""
        return self.attr_json("model")

    @property
    def weights(self) -> str:
        """The captured weights' fingerprint (``models.describe.weights_fingerprint``); "" if unrecorded."""
        value = self._guard("the weights fingerprint", lambda: self._f.attrs.get(WEIGHTS_ATTR))
        return value if isinstance(value, str) else ""

    @property
    def capture(self) -> dict[str, Any]:
        """Capture settings (backend, attention capture, prompt count, padded length).

        Files written before the batch size was recorded per prompt (:attr:`batch_sizes`)
        hold the batch size they were created with here (``batch_size``).
        """
        return self.attr_json("capture")

    @property
    def batch_sizes(self) -> np.ndarray | None:
        """The batch size each finished prompt was captured with, or None.

        A resumed capture may have changed it. None for files written before it was
        recorded (see :attr:`capture`).

        Raises:
            ScalelensError: when ``/batch_size`` is damaged (not one int per prompt).
        """
        if not self._guard(f"/{schema.BATCH_SIZE}", partial(self._f.__contains__, schema.BATCH_SIZE)):
            return None
        sizes = self.read(schema.BATCH_SIZE)
        if sizes.axes != ("prompt",) or self._dataset(schema.BATCH_SIZE).shape != (self.n_prompts,):
            raise ScalelensError(f"{self.path}: /{schema.BATCH_SIZE} is not one entry per prompt "
                                 "(damaged); the probe data are not affected")
        return sizes.data

    @property
    def probe_specs(self) -> list[dict[str, Any]]:
        """The probe specs as dicts."""
        return self.attr_json("probes")

    @property
    def probe_names(self) -> list[str]:
        """Names of stored probes."""
        return self._guard("the probe groups", lambda: list(self._f[schema.PROBES].keys())
                           if schema.PROBES in self._f else [])

    @property
    def segment_labels(self) -> list[str]:
        """Segment label names indexed by ``segments`` codes."""
        return self.attr_json("segment_labels")

    @property
    def schema_version(self) -> int:
        """The file's schema version; one below ``schema.SCHEMA_VERSION`` is read but never resumed."""
        return self._schema_version

    @property
    def n_prompts(self) -> int:
        """Prompts the file was created for."""
        return int(self._guard("/lengths", lambda: self._f[schema.LENGTHS].shape[0]))

    @property
    def n_done(self) -> int:
        """Prompts written completely (when this view was opened or last refreshed)."""
        return self._n_done

    @property
    def complete(self) -> bool:
        """Whether the capture had finished (when opened or last refreshed)."""
        return self._complete

    # -- data --------------------------------------------------------------------
    def _dataset(self, where: str) -> h5py.Dataset:
        if not self._guard(where, lambda: where in self._f):
            raise ScalelensError(f"{self.path} has no dataset {where}{self._holding(where)}")
        obj = self._guard(where, lambda: self._f[where])
        if not isinstance(obj, h5py.Dataset):
            held = ", ".join(self._guard(where, lambda: list(obj))) or "nothing"
            raise ScalelensError(f"{self.path}: {where} is a group, not a dataset (it holds: {held})")
        return obj

    def _holding(self, where: str) -> str:
        """What the file holds instead of the missing ``where``.

        The probe's datasets, or the probes (and, for a name without a probe, the root
        datasets: ``lengths``, ``tokens``...).
        """
        parts = where.split("/")
        if len(parts) == 3 and parts[0] == schema.PROBES:
            if parts[1] not in self.probe_names:
                return f"; its probes: {', '.join(self.probe_names) or 'none'}"
            return f"; probe {parts[1]} has: {', '.join(self.datasets(parts[1]))}"
        roots = self._guard("the root datasets", lambda: [k for k, v in self._f.items()
                                                            if isinstance(v, h5py.Dataset)])
        return (f"; its datasets: {', '.join(roots)}; its probes: {', '.join(self.probe_names) or 'none'} "
                "(pass probe=NAME for a probe's datasets)")

    def _axes(self, ds: h5py.Dataset, where: str) -> tuple[str, ...]:
        raw = self._guard(f"the axes of {where}", lambda: ds.attrs[schema.AXES_ATTR])
        try:
            axes = tuple(json.loads(raw))
        except (json.JSONDecodeError, TypeError):
            raise ScalelensError(f"{self.path}: dataset {where} has unreadable axis names "
                                 "(corrupted?); re-run the capture with --overwrite") from None
        if len(axes) != ds.ndim:
            raise ScalelensError(f"{self.path}: dataset {where} has {ds.ndim} dims but axes {axes} "
                                 "(corrupted?); re-run the capture with --overwrite")
        return axes

    def read(self, name: str, probe: str | None = None, done_only: bool = True,
             prompts: int | slice | Sequence[int] | None = None) -> Labeled:
        """Read dataset ``name`` (of ``probe``), with axis names; only finished prompts.

        Args:
            name: Dataset name (``values``), or a root dataset (``tokens``) without ``probe``.
            probe: Probe name.
            done_only: Only prompts finished when the file was opened or refreshed.
            prompts: Only these prompts, read from disk alone: an index (its axis is
                dropped, as numpy does), a slice or a list of indices (in that order).
        """
        where = name if probe is None else f"{schema.PROBES}/{probe}/{name}"
        ds = self._dataset(where)
        axes = self._axes(ds, where)
        by_prompt = bool(axes) and axes[0] == "prompt"
        if prompts is not None:
            if not by_prompt:
                raise ScalelensError(f"{self.path}: {where} has no prompt axis (axes {axes}); drop prompts=")
            prompts = _as_index(prompts)
            rows = _prompt_rows(prompts, self._n_done if done_only else ds.shape[0], self.path)
            data = self._guard(where, lambda: _read_rows(ds, rows))
            return Labeled(data[0], axes[1:]) if isinstance(prompts, int) else Labeled(data, axes)
        data = self._guard(where, lambda: ds[: self._n_done] if done_only and by_prompt else ds[()])
        return Labeled(np.asarray(data), axes)

    def lazy(self, name: str, probe: str | None = None) -> PromptSlices:
        """Dataset ``name`` (of ``probe``) to read in prompt slices (finished prompts only).

        Unlike :meth:`read` nothing is read yet: ``x[start:stop]`` reads those prompts.
        """
        where = name if probe is None else f"{schema.PROBES}/{probe}/{name}"
        ds = self._dataset(where)
        axes = self._axes(ds, where)
        if not axes or axes[0] != "prompt":
            raise ScalelensError(f"{self.path}: {where} has no prompt axis (axes {axes}); use read()")
        shape = (self._n_done, *ds.shape[1:])
        read = partial(self._guard, where)
        return PromptSlices(lambda key: read(partial(ds.__getitem__, key)), shape, ds.dtype, axes)

    def datasets(self, probe: str) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
        """Shapes, dtypes and axes of a probe's datasets."""
        if probe not in self.probe_names:
            raise ScalelensError(
                f"{self.path} has no probe {probe!r}; it has: {', '.join(self.probe_names) or 'none'}"
            )
        where = f"{schema.PROBES}/{probe}"
        group = self._guard(where, lambda: self._f[where])
        items = self._guard(where, lambda: list(group.items()))
        return {k: (ds.shape, str(ds.dtype), self._axes(ds, f"{where}/{k}")) for k, ds in items}

    def probe(self, name: str) -> dict[str, Labeled]:
        """All datasets of probe ``name``."""
        return {k: self.read(k, probe=name) for k in self.datasets(name)}

    def nonfinite(self, probes: str | Iterable[str] | None = None) -> list[NonFinite]:
        """Every float dataset holding NaN or inf among finished prompts.

        Padding never holds NaN except the massive summary's ``top_values`` tail, whose
        entries past each prompt's valid count are NaN by design; those are not counted
        (they sit where ``top_pos`` is -1).

        Args:
            probes: Scan only these probes (those present), or one probe name alone;
                None: every probe.
        """
        found = []
        # one name alone is that probe, not its letters (set("resid") scanned nothing)
        keep = None if probes is None else {probes} if isinstance(probes, str) else set(probes)
        names = [p for p in self.probe_names if keep is None or p in keep]
        for probe in names:
            for name, (shape, dtype, axes) in self.datasets(probe).items():
                if np.dtype(dtype).kind != "f" or not shape or axes[0] != "prompt":
                    continue
                hit = self._scan(probe, name, shape, np.dtype(dtype).itemsize, axes)
                if hit is not None:
                    found.append(hit)
        return found

    def _scan(self, probe: str, name: str, shape: tuple[int, ...], itemsize: int,
              axes: tuple[str, ...]) -> NonFinite | None:
        where = f"{schema.PROBES}/{probe}/{name}"
        ds, pad = self._dataset(where), None
        if name == "top_values" and "top_pos" in self.datasets(probe):
            pad = self._dataset(f"{schema.PROBES}/{probe}/top_pos")
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
        step = max(1, _SCAN_BYTES // row_bytes)
        count, prompts, layers = 0, set[int](), set[int]()
        layer_axis = axes.index("layer") if "layer" in axes else None
        for start in range(0, self._n_done, step):
            stop = min(self._n_done, start + step)
            rows = np.s_[start:stop]
            block = self._guard(where, partial(ds.__getitem__, rows))
            bad = ~np.isfinite(block)
            if pad is not None:
                bad &= self._guard(where, partial(pad.__getitem__, rows)) >= 0
            if not bad.any():
                continue
            count += int(bad.sum())
            idx = np.nonzero(bad)
            prompts.update((idx[0] + start).tolist())
            if layer_axis is not None:
                layers.update(idx[layer_axis].tolist())
        if not count:
            return None
        return NonFinite(probe, name, count, tuple(sorted(prompts)), tuple(sorted(layers)))


def _as_index(prompts: Any) -> Any:
    """A numpy integer (or 0-d integer array) as the Python int it stands for; anything else as is.

    numpy indexing treats them all as one index, which drops the prompt axis.
    """
    if isinstance(prompts, np.ndarray) and prompts.ndim == 0 and prompts.dtype.kind in "iu":
        return int(prompts)
    return int(prompts) if isinstance(prompts, np.integer) else prompts


def _not_prompts(prompts: Any) -> ScalelensError:
    """The error for a ``prompts=`` that is no index, slice or list of indices."""
    what = reprlib.repr(prompts)
    return ScalelensError(f"prompts must be an index, a slice or a list of indices, got {what}")


def _prompt_rows(prompts: int | slice | Sequence[int], n: int, path: Path) -> np.ndarray:
    """Row indices of ``prompts`` among the ``n`` readable ones (negative count from the end)."""
    if isinstance(prompts, slice):
        if prompts.step == 0:
            raise ScalelensError(f"prompts {prompts!r}: a slice step cannot be zero")
        try:
            return np.arange(n)[prompts]
        except TypeError:  # bounds that are not integers
            raise _not_prompts(prompts) from None
    try:
        wanted = [prompts] if isinstance(prompts, int) else list(prompts)
    except TypeError:  # a float, None...: not iterable
        raise _not_prompts(prompts) from None
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in wanted):
        raise _not_prompts(prompts)
    bad = [int(i) for i in wanted if not -n <= i < n]
    if bad:
        raise ScalelensError(f"{path}: prompt {bad[0]} is out of range; {n} prompts are readable "
                             "(finished ones only, unless done_only=False)")
    return np.asarray(wanted, dtype=np.int64) % max(n, 1)


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` in the order given; h5py reads ascending unique rows, so read those, then reorder."""
    if rows.size == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    if unique.size == unique[-1] - unique[0] + 1:  # a contiguous run: one slab
        block = ds[int(unique[0]): int(unique[-1]) + 1]
    else:
        block = ds[unique.tolist()]
    return np.asarray(block)[inverse]


def _h5_reason(e: BaseException) -> str:
    """The short reason inside an h5py error message (the part in parentheses, if any)."""
    text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    if "(" in text:
        inner = text[text.index("(") + 1:].rstrip(")")
        if inner:
            return inner
    return text or type(e).__name__
