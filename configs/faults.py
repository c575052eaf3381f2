"""Faults during a training run (issue 6): a non-finite loss, an interrupted or failed checkpoint write, a resumed
run that would not continue the same training.

- `NonFiniteLossGuard`: stops the run at the first non-finite training loss, *before* its backward pass and
  optimizer step, so the weights in memory are still the last good ones and no checkpoint is written from them
  (Lightning's ModelCheckpoint saves on an exception only with ``save_on_exception=True``, off here, and
  ``on_train_end`` is not reached). The message names the epoch, the optimizer step and the batch.
- `AtomicCheckpointIO`: writes a checkpoint to a temporary file in the same folder, flushes and fsyncs it, then
  ``os.replace``-s it over the target, so a kill while saving leaves the previous file whole. A failed write (full
  disk, unwritable folder) raises `CheckpointWriteError` naming the path, the previous checkpoint untouched.
- `EpochSeed`: re-seeds Python, NumPy and torch at each training epoch's start from (RANDOM_SEED, epoch, rank), so
  the epoch's shuffling and augmentations do not depend on the history of the process: a run killed during epoch
  e and resumed from the ``last.ckpt`` of epoch e - 1 draws the same batches as an uninterrupted run. (Worker
  processes take their seeds from the main process when the loader's iterator is created, which Lightning does
  after ``on_train_epoch_start``; the training loader therefore does not keep persistent workers.)
- `ConfigRecorder` stores the merged config in every checkpoint; `check_resume_config` compares it (or, for a
  checkpoint without it, the run folder's ``config.yaml``) with the config of a ``--resume`` and refuses a change
  of any key that alters the training, naming the keys, unless the user allows it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from yacs.config import CfgNode

from configs.loading import ConfigError

CONFIG_KEY = "bidense_config"
# Keys that may differ on --resume: where things are, how many workers load them, when this invocation stops
# and how often it logs; none changes the training itself.
RESUMABLE_KEYS = frozenset({
    "OUTPUT_DIR", "DATASET.DATA_PATH", "DATASET.GT_PATH", "DATASET.DATA_PATH_EVAL", "DATASET.GT_PATH_EVAL",
    "MODEL.PRETRAINED", "TRAINING.NUM_THREADS", "TRAINING.STOP_AT_EPOCH", "TRAINING.LOG_EVERY_N_STEPS",
})


class RunFault(RuntimeError):
    """A fault during a run, reported to the user as one line (no traceback)."""


class NonFiniteLoss(RunFault):
    """The training loss became NaN or infinite."""


class CheckpointWriteError(RunFault):
    """A checkpoint could not be written; the previous file at that path is intact."""


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic (temporary file, fsync, ``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        atomic_save(checkpoint, path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically; `CheckpointWriteError` naming ``path`` if it cannot be written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        raise CheckpointWriteError(f"cannot save checkpoint {path}: {reason}; the previous file there (if any) is "
                                   f"intact") from err


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``KEY old -> new`` for every leaf key that differs between two nested config mappings, resumable keys aside."""
    before, after = dict(_leaves(old)), dict(_leaves(new))
    keys = sorted((set(before) | set(after)) - RESUMABLE_KEYS)
    return [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in keys if before.get(key) != after.get(key)]


def check_resume_config(ckpt: dict[str, Any], path: str | Path, cfg: CfgNode, allow: bool) -> list[str]:
    """Compare the config a checkpoint was trained with to ``cfg``; returns the changes (``KEY old -> new``).

    The stored config is the checkpoint's ``CONFIG_KEY`` entry, else the ``config.yaml`` of its run folder
    (``<run>/checkpoints/<name>.ckpt``); without either nothing is compared. Raises ConfigError naming the changed
    keys unless ``allow``.
    """
    text = ckpt.get(CONFIG_KEY)
    if text is None:
        saved = Path(path).resolve().parent.parent / "config.yaml"
        if not saved.is_file():
            return []
        text = saved.read_text()
    changes = config_changes(yaml.safe_load(text) or {}, yaml.safe_load(cfg.dump()) or {})
    if changes and not allow:
        raise ConfigError(f"--resume {path}: the config differs from the one the checkpoint was trained with "
                          f"(checkpoint -> now): {'; '.join(changes)}; pass --allow-config-change to resume anyway")
    return changes


def _leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
