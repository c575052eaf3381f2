"""TRAINING.PRECISION bf16-mixed on the CPU: a two-step demo training run finishes with a finite loss."""

from __future__ import annotations

import csv
import math

from tests.engine.script_processes import run_script


def test_bf16_mixed_demo_training_on_cpu(tmp_path):
    args = ["configs/segmentation/upernet_bidense_demo.yaml", "DATASET.DATA_PATH", str(tmp_path / "data"),
            "OUTPUT_DIR", str(tmp_path / "runs"), "DATASET.BASE_SIZE", "32", "DATASET.CROP_SIZE", "32",
            "TRAINING.BATCH_SIZE", "2", "TRAINING.BATCH_SIZE_ON_1_GPU", "2", "TRAINING.LIMIT_TRAIN_BATCHES", "2",
            "TRAINING.LIMIT_VAL_BATCHES", "1", "TRAINING.NUM_EPOCHS", "1", "TRAINING.NUM_THREADS", "0",
            "TRAINING.LOG_EVERY_N_STEPS", "1", "TRAINING.PRECISION", "bf16-mixed"]
    done = run_script("train_segmentation.py", *args, folder=tmp_path / "logs", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "segmentation" / "upernet_bidense_demo" / "version_0"
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(float(next(r["valid/loss"] for r in rows if r.get("valid/loss"))))
