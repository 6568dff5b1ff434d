#!/usr/bin/env bash
# The GPU benchmark session: every GPU figure in RESULTS.md comes from one run of this script.
#
#   OUT=/some/dir bash benchmarks/gpu_session.sh        (repo root, on a machine with a CUDA GPU)
#   DEVICE=cpu T_ALL=30 OUT=/tmp/rehearsal bash benchmarks/gpu_session.sh
#       (a rehearsal on a CPU machine: every step starts and records, each cut at T_ALL seconds)
#
# Optional: wheels in .whl/ (transformer-lens, nnsight, rouge-score and the packages they need
# that the machine lacks: datasets, dill, multiprocess, greenlet, pydantic (+ core,
# annotated-types, typing-inspection), fancy-einsum, beartype, typeguard, zstandard,
# websocket-client, nltk, absl-py, regex, joblib, click, tqdm; cp312) are installed into
# /tmp/site first (`bash benchmarks/gpu_wheels.sh` downloads them); SCALELENS_COMMIT names the commit
# when the tree has no .git. Each step has its own time limit, so one failing or slow step
# leaves the others' results. Results land in $OUT: RESULTS.md (a copy of the ledger with
# the new rows), one JSON file per step, and the log on stdout.
set -u
OUT=${OUT:-/tmp/scalelens-gpu}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# the repo root is the package: import it as scalelens without installing
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/scalelens && export PYTHONPATH=/tmp/pkg:${PYTHONPATH:-}
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

step() {
  local limit=${T_ALL:-$1}
  shift
  echo "== $(date +%T) [limit ${limit}s] $*"
  timeout -k 20 "$limit" "$@"  # SIGTERM at the limit: the harness records its complete rounds
  local rc=$?
  echo "== $(date +%T) rc=$rc"
}

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, transformers, h5py, transformer_lens, nnsight, scalelens; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'tl ok, nnsight ok')"

bench=(python3 -m benchmarks.capture --device "$DEVICE" --results "$OUT/RESULTS.md")
# Limits sum to ~525 s so the whole session fits one 10-minute call; a step cut off by its
# limit still records the rounds it finished (rc 124).
check=(python3 -m benchmarks.cuda_check --json "$OUT/cuda_check.json")
[ "$DEVICE" = cuda ] || check+=(--cpu-dry-run)
step "${T_CHECK:-45}" "${check[@]}"
step "${T_PROF:-40}" python3 -m benchmarks.profile_capture --device "$DEVICE" --model-config pythia-160m \
  --sets summary,resid --json "$OUT/profile-160m.json"
step "${T_TASK:-80}" python3 -m benchmarks.task_time --device "$DEVICE" --sizes 160m,410m,1.4b \
  --json "$OUT/task_time.json"
step "${T_160:-90}" "${bench[@]}" --model-config pythia-160m --repeats 2 --goals '' --json "$OUT/bench-160m.json"
# the goals in a step of their own: a timing step cut off by its limit skips its goals
step "${T_GOALS:-50}" "${bench[@]}" --model-config pythia-160m --sets '' --goals disk,retrieval \
  --retrieval-model pythia-160m --retrieval-lengths 1000,1900 --disk-mb 512 --json "$OUT/goals-160m.json"
# GPU-sized workloads: 512-token prompts in batches of 32 (launch overhead matters less)
step "${T_BIG:-60}" "${bench[@]}" --model-config pythia-160m --seq 512 --batch-size 32 --n-prompts 128 \
  --sets resid,summary --repeats 2 --goals '' --json "$OUT/bench-160m-512.json"
step "${T_1B4:-60}" "${bench[@]}" --model-config pythia-1.4b --repeats 1 --goals '' --json "$OUT/bench-1.4b.json"
step "${T_410:-45}" "${bench[@]}" --model-config pythia-410m --repeats 1 --goals '' --json "$OUT/bench-410m.json"
# TransformerLens / nnsight reduce the summary in per-prompt Python loops: slow at this size
step "${T_BIG2:-55}" "${bench[@]}" --model-config pythia-1.4b --seq 512 --batch-size 32 --n-prompts 64 \
  --sets summary --repeats 1 --goals '' --json "$OUT/bench-1.4b-512.json"
