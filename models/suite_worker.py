"""Subprocess entry point: ``python -m scalelens.models.suite_worker JOB.pkl``.

Trains one suite size (a pickled ``SizeJob`` written by the parent build) and
prints ``loss <value>`` after every update for the parent's progress bar.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from .suite_train import SizeJob, train_size


def main(argv: list[str]) -> int:
    """Train the job in ``argv[0]``; the record lands in ``<size_dir>/size.json``."""
    job = pickle.loads(Path(argv[0]).read_bytes())
    if not isinstance(job, SizeJob):
        raise TypeError(f"{argv[0]} does not hold a SizeJob")
    train_size(job, lambda loss: print(f"loss {loss:.6f}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
