#!/usr/bin/env bash
# One go on a lent GPU machine, at most 8 minutes in all. First the verdict: the search's answer
# (results/best_config.json: "config" vs "seed_config") trained at the seed's full recipe, 5 seeds
# each, with the paired verdict (bench/gpu_verdict.py, <= 150 s). Then the benchmark: epoch times
# (eager vs CUDA-graphed, fp32 / TF32 / bf16, batch 32-1024), checkpoint cost, K training
# processes per GPU, the seed recipe, torch.compile if time is left (bench/gpu_bench.py).
# Needs python with torch + torchvision only, and MNIST's four IDX files under --data-dir /
# $MNIST_DATA_DIR (default ~/.cache/mnist-s5; bench/README.md says how to bring them).
#   bash bench/gpu.sh [gpu_bench flags...]     e.g. --data-dir /path/to/mnist, --no-compile
#   S5_VERDICT_S=0 bash bench/gpu.sh           skips the verdict (its time goes to the benchmark)
# Results: gpu_verdict.json, gpu_bench.json, gpu_bench.md (rewritten after every measurement),
# gpu_verdict.log, gpu_bench.log and nvidia-smi.txt in $OUT (the device tool's output folder) or
# bench/gpu-results.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${OUT:-bench/gpu-results}
PY=${PYTHON:-python3}
DATA_DIR=${MNIST_DATA_DIR:-$HOME/.cache/mnist-s5}
VERDICT_S=${S5_VERDICT_S:-150}
# Each step starts no new work past its budget; each hard stop (whole process group) is the
# safety net 25 s + 10 s later; the two together stay at 470 s + 20 s, inside 8 minutes.
BENCH_S=$((420 - VERDICT_S - (VERDICT_S > 0 ? 25 : 0)))
mkdir -p "$OUT_DIR"

nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" >"$OUT_DIR/nvidia-smi.txt"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
           "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

if [ "$VERDICT_S" -gt 0 ]; then
    # a failed verdict (no MNIST files, no best_config.json) must not cost the benchmark
    timeout --kill-after=10 $((VERDICT_S + 25)) "$PY" -m bench.gpu_verdict --device cuda --out "$OUT_DIR" \
        --data-dir "$DATA_DIR" --budget-s "$VERDICT_S" 2>&1 | tee "$OUT_DIR/gpu_verdict.log" || true
fi
timeout --kill-after=10 $((BENCH_S + 50)) "$PY" -m bench.gpu_bench --device cuda --out "$OUT_DIR" \
    --data-dir "$DATA_DIR" --budget-s "$BENCH_S" "$@" 2>&1 | tee "$OUT_DIR/gpu_bench.log"
