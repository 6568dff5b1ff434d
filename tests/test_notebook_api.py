"""The Python API as a notebook calls it: lists, numpy ints and paths; the model left as found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalelens.errors import ScalelensError
from scalelens.models.suite import read_manifest
from scalelens.sweeps.spec import SweepSpec, expand


def test_sweep_spec_takes_lists_numpy_steps_and_paths(micro_suite: Path) -> None:
    """A list of steps was silently swept as ``log``; lists of analyses and Path sources were refused."""
    steps = read_manifest(micro_suite).steps
    size = read_manifest(micro_suite).sizes[0]
    chosen = [steps[-1], steps[0]]
    spec = SweepSpec(suite=micro_suite, sizes=[size], checkpoints=np.array(chosen),
                     analyses=["superposition"])
    assert [t.step for t in expand(spec)] == sorted(chosen)
    assert spec.checkpoints == tuple(sorted(chosen)) and spec.analyses == ("superposition",)
    assert all(type(s) is int for s in spec.checkpoints)
    own = SweepSpec(models={size: micro_suite / size}, checkpoints=chosen)
    assert own.models == {size: str((micro_suite / size).resolve())}
    assert [t.step for t in expand(own)] == sorted(chosen)


def test_sweep_spec_errors_name_python_arguments(micro_suite: Path) -> None:
    with pytest.raises(ScalelensError, match=r"suite=DIR, family='pythia' or models=\{size: source\}"):
        SweepSpec()
    with pytest.raises(ScalelensError, match="checkpoint steps must be integers >= 0, got 1.5"):
        SweepSpec(suite=micro_suite, checkpoints=[0, 1.5])
