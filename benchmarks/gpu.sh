#!/usr/bin/env bash
# Accelerator benchmark (issue 7, benchmark 6), one command on a GPU machine:
#   bash benchmarks/gpu.sh                 # writes benchmarks/results/gpu.json
#   bash benchmarks/gpu.sh --smoke --out DIR   # CPU check: 32 px, 2 steps, same JSON
# Needs no network: weights none, demo TFRecords generated locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

smoke=0
for arg in "$@"; do
  [[ "$arg" == "--smoke" ]] && smoke=1
done

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
elif [[ $smoke == 0 ]]; then
  echo "gpu.sh: no GPU (nvidia-smi missing or failing); use --smoke for the CPU check" >&2
  exit 2
fi

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
# A private thread pool per GPU launches kernels without waiting on tf.data's threads.
export TF_GPU_THREAD_MODE="${TF_GPU_THREAD_MODE:-gpu_private}"
# Allocate as needed: the FLOP-counting graph and the training model share the device.
export TF_FORCE_GPU_ALLOW_GROWTH="${TF_FORCE_GPU_ALLOW_GROWTH:-true}"
exec "$PYTHON" benchmarks/gpu.py "$@"
