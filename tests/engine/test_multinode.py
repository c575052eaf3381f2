"""Two nodes of one CPU process each, started with torchrun on this machine (local rendezvous, gloo), train the demo
config: both nodes name the same run folder and effective batch, and the validation metrics reduced over the two
nodes equal a one-process evaluation of the same checkpoint (README, Training and evaluation: several nodes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from configs import ConfigError, load_config
from engine.trainer import run_dir
from tests.engine.test_pipeline_e2e import REPO, SEG_DEMO, epoch_values, read_csv, run_warm, tiny

STEPS = 4  # training batches per node: 2 optimizer steps of 2 accumulated batches (tiny's MAX_LR 1e-3)
VAL_PER_NODE = 6  # validation images per node; the one-process check evaluates the first 2 x VAL_PER_NODE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_agree_and_match_one_process(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs"
    overrides = [*tiny(data, out), "TRAINING.BATCH_SIZE", "4", "TRAINING.BATCH_SIZE_ON_1_GPU", "1",
                 "TRAINING.LIMIT_TRAIN_BATCHES", str(STEPS), "TRAINING.LIMIT_VAL_BATCHES", str(VAL_PER_NODE),
                 "TRAINING.NUM_EPOCHS", "3", "TRAINING.STOP_AT_EPOCH", "1"]
    port = _free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("BIDENSE_RUN_DIR", None)
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), "--rdzv-id", "test2n",
         "train_segmentation.py", SEG_DEMO, "--cpu-processes", "1", *overrides, "TRAINING.NUM_NODES", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = []
    for node in nodes:
        try:
            stdout, stderr = node.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        assert node.returncode == 0, stderr[-3000:]
        results.append([line for line in stdout.splitlines()
                        if line.startswith(("run folder:", "effective batch", "final metrics:"))])

    folder = out / "segmentation" / "upernet_bidense_demo" / "job_test2n"
    assert results[0] == results[1] and len(results[0]) == 3, results
    assert results[0][0] == f"run folder: {folder}"
    # README: BATCH_SIZE // (BATCH_SIZE_ON_1_GPU x devices x NUM_NODES) = 4 // (1 x 1 x 2) = 2 accumulation steps.
    assert results[0][1] == "effective batch 4 = 1 per process x 2 processes x 2 accumulation steps"
    assert [p.name for p in folder.parent.iterdir()] == ["job_test2n"]
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS // 2 and ckpt["epoch"] == 0
    two_nodes = {key: epoch_values(read_csv(folder), f"valid/{key}")[0] for key in ("mIoU", "pixAcc", "mIoU_present")}

    run_warm("test_segmentation.py", SEG_DEMO, str(folder / "checkpoints" / "last.ckpt"), *overrides,
             "TRAINING.LIMIT_VAL_BATCHES", str(2 * VAL_PER_NODE), "--cpu-processes", "1", folder=tmp_path / "logs",
             OMP_NUM_THREADS="1")
    one = json.loads((folder / "checkpoints" / "last.test.json").read_text())["metrics"]
    for key, value in two_nodes.items():
        assert value == pytest.approx(one[key], abs=1e-6), key


def test_torchrun_without_run_id_is_refused(monkeypatch, tmp_path):
    """Several torchrun processes need a shared --rdzv-id to name one folder; with it the folder is job_<id>."""
    cfg = load_config("segmentation", REPO / SEG_DEMO, ["OUTPUT_DIR", str(tmp_path)])
    monkeypatch.setenv("BIDENSE_RUN_DIR", "")  # restored after the test: run_dir exports the folder it picks
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(ConfigError, match="--rdzv-id"):
        run_dir(cfg, SEG_DEMO, "segmentation")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp7")
    assert run_dir(cfg, SEG_DEMO, "segmentation") == tmp_path / "segmentation" / "upernet_bidense_demo" / "job_exp7"
