#!/usr/bin/env bash
# The prepared GPU check: convert the embedded model for CUDA and run the engine bench.
# Usage (on a CUDA host, from the repository root): bench/gpu.sh [OUT_DIR]
# Prints the bench JSON for int8_float16 and float16, plus nvidia-smi's view of the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/llamacord-gpu-bench}}"
mkdir -p "$out"
scripts/setup.sh >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv" >&2
models=$(mktemp -d)
export BOT_MODELS_ROOT="$models" BOT_DEVICE=cuda PYTHONUNBUFFERED=1
for ct in int8_float16 float16; do
    # Weights stored as float16 suit both compute types on the GPU.
    BOT_QUANTIZATION=float16 BOT_COMPUTE_TYPE="$ct" \
        .venv/bin/python -m bot --env-file /dev/null bench --json | tee "$out/bench-$ct.json"
done
