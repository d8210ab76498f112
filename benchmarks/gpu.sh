#!/usr/bin/env bash
# The GPU benchmark (benchmarks/RESULTS.md) as one short script (a few minutes on an H100/H200):
#   bash benchmarks/gpu.sh [OUT_DIR]
# sd21-base at 512x512, 5 images/epoch, ours (bf16, one batch) vs the reference-style loop (fp16,
# batch 1 x 5, UNet checkpointing), interleaved; then ours again with torch.compile of the UNet.
# If ours runs out of memory (or peaks above 40 GB), rerun with --micro-batch-size 1 or 2.
set -euo pipefail
out="${1:-${OUT:-.}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python -m benchmarks.optimize --preset sd21-base --device cuda --epochs 5 --warmup 1 --profile \
    --json "$out/sd21-base.json" 2>&1 | tee "$out/sd21-base.txt"
python -m benchmarks.optimize --preset sd21-base --device cuda --epochs 5 --warmup 2 --compile \
    --variants ours --no-memory --json "$out/sd21-base-compile.json" 2>&1 | tee "$out/sd21-base-compile.txt"
# SDXL (full-size random weights): the turbo-style one-step update, then sdxl-base at 1024x1024 (heavier:
# run it when the first parts leave time; --micro-batch-size 1 if it does not fit).
python -m benchmarks.optimize --preset sdxl-turbo --device cuda --epochs 5 --warmup 1 \
    --json "$out/sdxl-turbo.json" 2>&1 | tee "$out/sdxl-turbo.txt"
python -m benchmarks.optimize --preset sdxl-base --device cuda --epochs 3 --warmup 1 \
    --json "$out/sdxl-base.json" 2>&1 | tee "$out/sdxl-base.txt"
