#!/usr/bin/env bash
# One go on a lent GPU machine (well under 5 minutes): seed recipe vs fast path epoch times, and
# K training processes sharing the GPU. Needs python with torch + torchvision only.
#   bash bench/gpu.sh [gpu_bench flags...]     e.g. --data-dir /path/to/mnist, --no-compile
# Results: gpu_bench.json, gpu_bench.md, gpu_bench.log, nvidia-smi.txt in $OUT (the device
# tool's output folder) or bench/gpu-results.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${OUT:-bench/gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"

nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" >"$OUT_DIR/nvidia-smi.txt"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
           "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

# gpu_bench stops starting sections after its 240 s budget; the hard stop (whole process group,
# K workers included) is a safety net that still leaves the partial results it rewrote in $OUT.
timeout --kill-after=10 290 "$PY" -m bench.gpu_bench --device cuda --out "$OUT_DIR" "$@" \
    2>&1 | tee "$OUT_DIR/gpu_bench.log"
