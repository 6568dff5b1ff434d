"""Read capture files: arrays come back with their axis names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scalelens.cache import schema
from scalelens.errors import ScalelensError


@dataclass(frozen=True)
class Labeled:
    """An array with the names of its axes."""

    data: np.ndarray
    axes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.data.ndim != len(self.axes):
            raise ValueError(f"{self.data.ndim}-d array with axes {self.axes}")


class CaptureFile:
    """Read-only view of a capture file, safe to open while a capture writes it.

    Only prompts below ``n_done`` are meaningful until the file is complete.
    """

    def __init__(self, path: str | Path) -> None:
        """Open ``path``; raise ScalelensError if it is missing, corrupt or too new."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ScalelensError(f"capture file {self.path} does not exist")
        try:
            self._f = h5py.File(self.path, "r", locking=False)
        except OSError:
            raise ScalelensError(
                f"{self.path} is not a readable HDF5 file (truncated or corrupted?); "
                "re-run the capture with --overwrite"
            ) from None
        version = self._f.attrs.get("schema_version")
        if version is None or schema.PROGRESS not in self._f:
            self.close()
            raise ScalelensError(f"{self.path} is not a scalelens capture (no schema_version)")
        if int(version) > schema.SCHEMA_VERSION:
            self.close()
            raise ScalelensError(
                f"{self.path} uses schema version {version}, newer than this scalelens "
                f"understands ({schema.SCHEMA_VERSION}); upgrade scalelens"
            )

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._f.id.valid:
            self._f.close()

    # -- metadata ----------------------------------------------------------------
    def attr_json(self, key: str) -> Any:
        """A JSON-encoded root attribute, decoded."""
        return json.loads(self._f.attrs[key])

    @property
    def model(self) -> dict[str, Any]:
        """The ModelInfo dict of the captured model."""
        return self.attr_json("model")

    @property
    def capture(self) -> dict[str, Any]:
        """Capture settings (batch size, backend, attention capture...)."""
        return self.attr_json("capture")

    @property
    def probe_specs(self) -> list[dict[str, Any]]:
        """The probe specs as dicts."""
        return self.attr_json("probes")

    @property
    def probe_names(self) -> list[str]:
        """Names of stored probes."""
        return list(self._f[schema.PROBES].keys()) if schema.PROBES in self._f else []

    @property
    def segment_labels(self) -> list[str]:
        """Segment label names indexed by ``segments`` codes."""
        return self.attr_json("segment_labels")

    @property
    def n_prompts(self) -> int:
        """Prompts the file was created for."""
        return int(self._f[schema.LENGTHS].shape[0])

    @property
    def n_done(self) -> int:
        """Prompts written completely."""
        return int(self._f[schema.PROGRESS][0])

    @property
    def complete(self) -> bool:
        """Whether the capture finished."""
        return bool(self._f[schema.PROGRESS][1])

    # -- data --------------------------------------------------------------------
    def read(self, name: str, probe: str | None = None, done_only: bool = True) -> Labeled:
        """Read dataset ``name`` (of ``probe``), with axis names; only finished prompts."""
        where = name if probe is None else f"{schema.PROBES}/{probe}/{name}"
        if where not in self._f:
            raise ScalelensError(f"{self.path} has no dataset {where}")
        ds = self._f[where]
        axes = tuple(json.loads(ds.attrs[schema.AXES_ATTR]))
        data = ds[: self.n_done] if done_only and axes and axes[0] == "prompt" else ds[()]
        return Labeled(np.asarray(data), axes)

    def datasets(self, probe: str) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
        """Shapes, dtypes and axes of a probe's datasets."""
        if probe not in self.probe_names:
            raise ScalelensError(
                f"{self.path} has no probe {probe!r}; it has: {', '.join(self.probe_names) or 'none'}"
            )
        group = self._f[f"{schema.PROBES}/{probe}"]
        return {
            k: (ds.shape, str(ds.dtype), tuple(json.loads(ds.attrs[schema.AXES_ATTR])))
            for k, ds in group.items()
        }

    def probe(self, name: str) -> dict[str, Labeled]:
        """All datasets of probe ``name``."""
        return {k: self.read(k, probe=name) for k in self.datasets(name)}
