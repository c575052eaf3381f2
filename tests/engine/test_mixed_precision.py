"""TRAINING.PRECISION bf16-mixed on the CPU: a two-step demo training run finishes with a finite loss."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bf16_mixed_demo_training_on_cpu(tmp_path):
    args = ["configs/segmentation/upernet_bidense_demo.yaml", "DATASET.DATA_PATH", str(tmp_path / "data"),
            "OUTPUT_DIR", str(tmp_path / "runs"), "DATASET.BASE_SIZE", "32", "DATASET.CROP_SIZE", "32",
            "TRAINING.BATCH_SIZE", "4", "TRAINING.BATCH_SIZE_ON_1_GPU", "4", "TRAINING.LIMIT_TRAIN_BATCHES", "2",
            "TRAINING.LIMIT_VAL_BATCHES", "1", "TRAINING.NUM_EPOCHS", "1", "TRAINING.NUM_THREADS", "0",
            "TRAINING.LOG_EVERY_N_STEPS", "1", "TRAINING.PRECISION", "bf16-mixed"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("BIDENSE_RUN_DIR", None)
    proc = subprocess.run([sys.executable, "train_segmentation.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "segmentation" / "upernet_bidense_demo" / "version_0"
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(float(next(r["valid/loss"] for r in rows if r.get("valid/loss"))))
