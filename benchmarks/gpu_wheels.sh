#!/usr/bin/env bash
# Wheels for benchmarks/gpu_session.sh: the packages the device machine lacks (its Python 3.12
# has torch, transformers, h5py, numpy; nothing can be installed from a registry there), at this
# environment's versions, into .whl/ (git-ignored; carried to the device with the tree).
#
#   . .venv/bin/activate && bash benchmarks/gpu_wheels.sh       (repo root, with the registry reachable)
#
# Binary wheels are downloaded for CPython 3.12 on manylinux x86_64 (PY=311 etc. for another
# Python); a package published only as an sdist (rouge-score) is built into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-312}
PKGS=(transformer-lens nnsight rouge-score datasets dill multiprocess greenlet pydantic pydantic-core
      annotated-types typing-inspection fancy-einsum beartype typeguard zstandard websocket-client
      nltk absl-py regex joblib click tqdm)
mkdir -p .whl
for pkg in "${PKGS[@]}"; do
  version=$(python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$version" ] || { echo "gpu_wheels: $pkg is not installed here; install .[dev] first" >&2; exit 1; }
  if ! python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
      --implementation cp --abi "cp$PY" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 -d .whl "$pkg==$version" 2>/dev/null; then
    python -m pip wheel -q --no-deps -w .whl "$pkg==$version"  # sdist only: a pure-Python wheel
  fi
done
ls .whl | sed 's/^/  /'
echo "gpu_wheels: $(ls .whl/*.whl | wc -l) wheels in .whl/"
