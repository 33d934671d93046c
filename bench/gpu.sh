#!/usr/bin/env bash
# One go on a lent GPU machine, at most 8 minutes: epoch times (eager vs CUDA-graphed, fp32 /
# TF32 / bf16, batch 32-1024), checkpoint cost, K training processes per GPU, the seed recipe,
# torch.compile if time is left. Needs python with torch + torchvision only.
#   bash bench/gpu.sh [gpu_bench flags...]     e.g. --data-dir /path/to/mnist, --no-compile
# Results: gpu_bench.json, gpu_bench.md (rewritten after every measurement), gpu_bench.log and
# nvidia-smi.txt in $OUT (the device tool's output folder) or bench/gpu-results.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${OUT:-bench/gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"

nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" >"$OUT_DIR/nvidia-smi.txt"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
           "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

# gpu_bench starts no new measurement past its 420 s budget; this hard stop (whole process
# group, K workers included) is the safety net at 470 s + 10 s, inside 8 minutes, and keeps the
# partial results already rewritten in $OUT.
timeout --kill-after=10 470 "$PY" -m bench.gpu_bench --device cuda --out "$OUT_DIR" "$@" \
    2>&1 | tee "$OUT_DIR/gpu_bench.log"
