"""Lightning callbacks of every training run.

- `NonFiniteLossGuard`: stops the run at the first non-finite training loss, *before* its backward pass and
  optimizer step, so the weights in memory are still the last good ones and no checkpoint is written from them
  (Lightning's ModelCheckpoint saves on an exception only with ``save_on_exception=True``, off here, and
  ``on_train_end`` is not reached). The message names the epoch, the optimizer step and the batch.
- `EpochSeed`: re-seeds Python, NumPy and torch at each training epoch's start from (RANDOM_SEED, epoch, rank), so
  the epoch's shuffling and augmentations do not depend on the history of the process: a run killed during epoch
  e and resumed from the ``last.ckpt`` of epoch e - 1 draws the same batches as an uninterrupted run. (Worker
  processes take their seeds from the main process when the loader's iterator is created, which Lightning does
  after ``on_train_epoch_start``; the training loader therefore does not keep persistent workers.)
- `ConfigRecorder` stores the merged config in every checkpoint (read back by
  `engine.checkpoints.check_resume_config`).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from yacs.config import CfgNode

from engine.checkpoints import CONFIG_KEY
from engine.errors import NonFiniteLoss


class NonFiniteLossGuard(Callback):
    """Raise `NonFiniteLoss` at the first non-finite training loss, before its backward pass and optimizer step.

    Under several processes the ranks agree (one boolean all-reduce per step), so all of them stop together.
    """

    def __init__(self) -> None:
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or trainer.ckpt_path
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
        raise NonFiniteLoss(
            f"non-finite training loss ({loss.detach().float().mean().item()}) at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step} (batch {self._batch_idx} of the epoch); stopped before the optimizer step, "
            f"nothing saved from these weights; {kept}"
        )


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends on (seed, epoch, rank) only (NumPy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochSeed(Callback):
    """Re-seed Python, NumPy and torch (all devices) from `epoch_seed` at the start of every training epoch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class ConfigRecorder(Callback):
    """Store the merged config (YAML text) in every checkpoint under ``CONFIG_KEY``."""

    def __init__(self, cfg: CfgNode) -> None:
        self.text = cfg.dump()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.text
