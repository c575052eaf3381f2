"""Lightning callbacks of every training run.

- `LastCheckpoint`: ``last.ckpt`` with the full training state (weights, optimizer, schedule, loops, callbacks),
  written at the end of every training epoch for ``--resume``. (Lightning 2.6's ``save_last`` writes ``last.ckpt``
  only when a top-k file is written at the same step, i.e. when the monitored metric improved.)
- `NonFiniteLossGuard`: stops the run at the first non-finite training loss, *before* its backward pass and
  optimizer step, so the weights in memory are still the last good ones and no checkpoint is written from them
  (Lightning's ModelCheckpoint saves on an exception only with ``save_on_exception=True``, off here, and
  ``on_train_end`` is not reached). The message names the epoch, the optimizer step and the batch.
- `EpochSeed`: re-seeds Python, NumPy and torch at each training epoch's start from (RANDOM_SEED, epoch, rank), so
  the epoch's shuffling and augmentations do not depend on the history of the process: a run killed during epoch
  e and resumed from the ``last.ckpt`` of epoch e - 1 draws the same batches as an uninterrupted run. (Worker
  processes take their seeds from the main process when the loader's iterator is created, which Lightning does
  after ``on_train_epoch_start``; the training loader therefore does not keep persistent workers.)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from engine.errors import NonFiniteLoss


class LastCheckpoint(ModelCheckpoint):
    """``dirpath/last.ckpt``, the full training state, overwritten at the end of every training epoch (after the
    epoch's validation; placed after the best-epoch callback, it stores that callback's updated state)."""

    def __init__(self, dirpath: Path) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True,
                         enable_version_counter=False)

    @property
    def path(self) -> str:
        """The file written last ("" before the first)."""
        return self.best_model_path


def last_checkpoint(trainer: L.Trainer) -> str:
    """The ``last.ckpt`` this run has written, else the checkpoint it resumed from, else ""."""
    saved = [c.path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint) and c.path]
    return saved[0] if saved else (trainer.ckpt_path or "")


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
        last = last_checkpoint(trainer)
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
