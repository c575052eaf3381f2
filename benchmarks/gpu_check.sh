#!/usr/bin/env bash
# One-GPU check of BiDense (README, "Speed"): under 8 minutes on one GPU.
#   1. the binary functions and layers on CUDA against the CPU, float32 and bf16 (benchmarks/gpu_equivalence.py);
#   2. 30 training steps of the segmentation demo configs (UperNet and DPT) with --gpus 0, precision 32 and
#      bf16-mixed (TRAINING.LIMIT_TRAIN_BATCHES 30, one epoch, validation on 4 batches);
#   3. the benchmarks at the released per-GPU batch: training step and evaluation forward, UperNet batch 4 at 480,
#      DPT batch 4 at 476, precision 32 and bf16-mixed; the layer benchmark on CUDA.
# Usage: bash benchmarks/gpu_check.sh [GPU index, default 0]; output also goes to runs/gpu_check/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU="${1:-0}"
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False); nothing was run"
    exit 1
fi
export CUDA_VISIBLE_DEVICES="$GPU"
OUT="runs/gpu_check"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. CUDA against CPU"
python -m benchmarks.gpu_equivalence --device cuda

echo "== 2. 30 training steps of the demo configs, --gpus 0"
for config in configs/segmentation/upernet_bidense_demo.yaml configs/segmentation/dpt_bidense_demo.yaml; do
    for precision in 32 bf16-mixed; do
        echo "-- $config, precision $precision"
        python train_segmentation.py "$config" --gpus 0 OUTPUT_DIR "$OUT/runs_$precision" \
            TRAINING.PRECISION "$precision" TRAINING.NUM_EPOCHS 1 TRAINING.LIMIT_TRAIN_BATCHES 30 \
            TRAINING.LIMIT_VAL_BATCHES 4 TRAINING.NUM_THREADS 4 TRAINING.LOG_EVERY_N_STEPS 10
    done
done

echo "== 3. benchmarks at the released per-GPU batch"
for precision in 32 bf16-mixed; do
    for mode in train eval; do
        python -m benchmarks.bench_train_step --device cuda --precision "$precision" --mode "$mode" \
            --models upernet --batch 4 --size 480 --steps 10 --warmup 3
        python -m benchmarks.bench_train_step --device cuda --precision "$precision" --mode "$mode" \
            --models dpt --batch 4 --size 476 --steps 10 --warmup 3
    done
done
python -m benchmarks.bench_layers --device cuda --reps 10
python -m benchmarks.bench_layers --device cuda --reps 10 --precision bf16-mixed
echo "gpu_check: done; log in $OUT/log.txt"
