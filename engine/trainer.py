"""Lightning plumbing shared by the four scripts: seeding, run folder, loggers, checkpoints, the Trainer.

A run lives in ``OUTPUT_DIR/<task>/<config name>/version_<n>/`` with ``config.yaml`` (the merged config),
TensorBoard events, ``metrics.csv`` and ``checkpoints/{last.ckpt, best-epochNNN.ckpt}``: ``last.ckpt`` holds the full
training state for ``--resume``; the best-epoch file only what evaluation needs (weights, hyper-parameters, config,
epoch), a third of the size (README, Training and evaluation).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from yacs.config import CfgNode

from configs.loading import ConfigError
from engine.callbacks import EpochSeed, LastCheckpoint, NonFiniteLossGuard
from engine.checkpoints import AtomicCheckpointIO, remove_stale_temporaries
from engine.cli import Devices
from engine.console import silence_known_notices
from engine.errors import RunFault

RUN_DIR_ENV = "BIDENSE_RUN_DIR"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch (all devices) and data-loader workers; cuDNN deterministic, no benchmark."""
    random.seed(seed)
    np.random.seed(seed)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def run_dir(cfg: CfgNode, config_path: str | Path, task: str) -> Path:
    """Create and return the run folder ``OUTPUT_DIR/<task>/<config stem>/version_<n>``, shared by every process.

    The folder is claimed with an exclusive ``os.mkdir`` (the next free n, retried with n + 1 while another run
    takes it first), so runs started at the same moment never share one. The launching process exports it in
    ``BIDENSE_RUN_DIR``, which the DDP worker processes that Lightning starts inherit (they have ``LOCAL_RANK``
    set). Under SLURM or torchrun (every process started from outside) the folder is named by the job id
    (``SLURM_JOB_ID``, or torchrun's ``--rdzv-id``) so that all processes agree; torchrun with several processes and
    no ``--rdzv-id`` is a ConfigError. Stale temporary checkpoint files of the config's earlier, killed runs are
    removed.

    Raises:
        RunFault: the folder cannot be created (naming it and OUTPUT_DIR).
    """
    if os.environ.get(RUN_DIR_ENV) and "LOCAL_RANK" in os.environ:
        return Path(os.environ[RUN_DIR_ENV])
    base = Path(cfg.OUTPUT_DIR) / task / Path(config_path).stem
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if job == "none" and "TORCHELASTIC_RUN_ID" in os.environ and world > 1:
        raise ConfigError(f"torchrun with {world} processes: give every node the same --rdzv-id JOB so that all "
                          f"processes write to one run folder ({base}/job_JOB)")
    path = base / f"job_{job}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if job != "none":
            path.mkdir(exist_ok=True)
        else:
            taken = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()]
            version = max(taken, default=-1) + 1
            while True:
                path = base / f"version_{version}"
                try:
                    os.mkdir(path)
                    break
                except FileExistsError:
                    version += 1
    except OSError as err:
        raise RunFault(f"cannot create the run folder {err.filename or path} (OUTPUT_DIR {cfg.OUTPUT_DIR}): "
                       f"{err.strerror or err}") from err
    removed = remove_stale_temporaries(base.glob("*/checkpoints"))
    if removed:
        print(f"removed {len(removed)} stale temporary checkpoint file(s) of killed runs: "
              f"{', '.join(str(p) for p in removed)}")
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def accumulation(cfg: CfgNode, devices: Devices) -> int:
    """Gradient-accumulation steps reaching the effective batch: BATCH_SIZE / (per-process batch x processes).

    Raises:
        ConfigError: BATCH_SIZE is not a multiple of BATCH_SIZE_ON_1_GPU x processes per node x NUM_NODES, so the
            effective batch would differ from it (README, Training and evaluation).
    """
    t = cfg.TRAINING
    per_step = t.BATCH_SIZE_ON_1_GPU * devices.count * t.NUM_NODES
    if t.BATCH_SIZE % per_step:
        raise ConfigError(
            f"TRAINING.BATCH_SIZE {t.BATCH_SIZE} is not a multiple of TRAINING.BATCH_SIZE_ON_1_GPU "
            f"{t.BATCH_SIZE_ON_1_GPU} x {devices.count} process(es) x TRAINING.NUM_NODES {t.NUM_NODES} = {per_step}: "
            f"gradient accumulation cannot reach that effective batch; change one of them")
    return t.BATCH_SIZE // per_step


def _limits(**limits: float | int) -> dict[str, float | int]:
    """Lightning's ``limit_*_batches`` arguments: an integer is a number of batches, a float <= 1 a fraction of
    them, a larger float a number; the float 1.0 (all batches, Lightning's default) is left out, so Lightning prints
    no notice about it."""
    return {key: value if isinstance(value, int) or value <= 1.0 else int(value)
            for key, value in limits.items() if not (isinstance(value, float) and value == 1.0)}


def build_trainer(
    cfg: CfgNode,
    devices: Devices,
    folder: Path | None,
    monitor: str | None,
    eval_freq: int = 1,
) -> L.Trainer:
    """The Trainer for ``cfg`` on ``devices``.

    Args:
        folder: the run folder for training (loggers, checkpoints); ``None`` for evaluation (no logs, no files).
        monitor: the validation metric to maximise for the best checkpoint (``valid/mIoU``, ``valid/d1``), or
            ``None`` to keep only ``last.ckpt``.
        eval_freq: validate every ``eval_freq`` epochs; 0 = never.
    """
    processes = devices.count * cfg.TRAINING.NUM_NODES
    common: dict[str, Any] = dict(
        accelerator=devices.accelerator,
        devices=devices.devices,
        num_nodes=cfg.TRAINING.NUM_NODES,
        strategy="ddp_find_unused_parameters_true" if processes > 1 else "auto",
        precision=cfg.TRAINING.PRECISION,
        enable_model_summary=False,  # counts latent float weights; engine.console prints the binary-aware count
        **_limits(limit_val_batches=cfg.TRAINING.LIMIT_VAL_BATCHES, limit_test_batches=cfg.TRAINING.LIMIT_VAL_BATCHES),
    )
    silence_known_notices(folder)
    if folder is None:
        return L.Trainer(logger=False, enable_checkpointing=False, **common)
    if eval_freq == 0:
        common["limit_val_batches"] = 0
    checkpoints = [LastCheckpoint(folder / "checkpoints")]
    if monitor:  # before last.ckpt, which then stores this callback's state of the same epoch
        checkpoints.insert(0, ModelCheckpoint(
            dirpath=folder / "checkpoints", filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
            monitor=monitor, mode="max", save_top_k=1, save_weights_only=True,
        ))
    callbacks = [*checkpoints, LearningRateMonitor(logging_interval="epoch"), NonFiniteLossGuard(),
                 EpochSeed(cfg.RANDOM_SEED)]
    loggers = [
        TensorBoardLogger(save_dir=folder.parent, name="", version=folder.name, default_hp_metric=False),
        CSVLogger(save_dir=folder.parent, name="", version=folder.name),
    ]
    return L.Trainer(
        max_epochs=cfg.TRAINING.STOP_AT_EPOCH or cfg.TRAINING.NUM_EPOCHS,
        accumulate_grad_batches=accumulation(cfg, devices),
        check_val_every_n_epoch=max(eval_freq, 1),
        **_limits(limit_train_batches=cfg.TRAINING.LIMIT_TRAIN_BATCHES),
        log_every_n_steps=cfg.TRAINING.LOG_EVERY_N_STEPS,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        **common,
    )


def save_config(cfg: CfgNode, folder: Path) -> Path:
    """Write the merged config to ``folder/config.yaml`` (reloadable as a YAML config); RunFault if it cannot."""
    path = folder / "config.yaml"
    try:
        path.write_text(cfg.dump())
    except OSError as err:
        raise RunFault(f"cannot write the run folder {folder} (OUTPUT_DIR {cfg.OUTPUT_DIR}): "
                       f"{err.strerror or err}: {err.filename or path}") from err
    return path

