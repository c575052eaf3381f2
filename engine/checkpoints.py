"""Checkpoint files: atomic writes, loading with one-line errors, and the checks before a checkpoint is used.

- `AtomicCheckpointIO` / `atomic_save`: write to a temporary file in the same folder, flush and fsync it, then
  ``os.replace`` it over the target, so a kill while saving leaves the previous file whole. A failed write (full
  disk, unwritable folder) raises `CheckpointWriteError` naming the path, the previous checkpoint untouched.
- `load_checkpoint`, `check_checkpoint_matches`: read a Lightning checkpoint and compare the model identity it
  stores with the config's.
- `check_resume_config`: compares the config stored in a checkpoint (or, for a checkpoint without it, the run
  folder's ``config.yaml``) with the config of a ``--resume`` and refuses a change of any key that alters the
  training, naming the keys, unless the user allows it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from yacs.config import CfgNode

from configs.loading import ConfigError
from engine.errors import CheckpointWriteError, first_line
from models.pack import checkpoint_from_packed, is_packed

CONFIG_KEY = "bidense_config"
# Keys that may differ on --resume: where things are, how many workers load them, when this invocation stops
# and how often it logs; none changes the training itself.
RESUMABLE_KEYS = frozenset({
    "OUTPUT_DIR", "DATASET.DATA_PATH", "DATASET.GT_PATH", "DATASET.DATA_PATH_EVAL", "DATASET.GT_PATH_EVAL",
    "MODEL.PRETRAINED", "TRAINING.NUM_THREADS", "TRAINING.STOP_AT_EPOCH", "TRAINING.LOG_EVERY_N_STEPS",
})


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

def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, or ConfigError naming the file (missing, unreadable, not a checkpoint).

    A packed 1-bit file of ``python -m models.pack`` (recognised by its format marker, whatever its name) loads as
    ``{"format", "state_dict", "hyper_parameters", "epoch"}`` with the weights rebuilt (README, "Packed 1-bit
    checkpoints")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"checkpoint {path} cannot be loaded: {type(err).__name__}: {first_line(err)}") from err
    if is_packed(ckpt):
        return checkpoint_from_packed(ckpt, path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def check_checkpoint_matches(ckpt: dict[str, Any], path: str | Path, expected: dict[str, Any]) -> None:
    """ConfigError if the checkpoint's stored model identity (``hyper_parameters``) differs from ``expected``.

    ``expected`` maps hyper-parameter names (e.g. model_type, binary_type, num_classes) to the config's values.
    """
    stored = ckpt.get("hyper_parameters", {})
    diffs = [f"{key} {stored.get(key)!r} vs {value!r}" for key, value in expected.items() if stored.get(key) != value]
    if diffs:
        raise ConfigError(f"checkpoint {path} does not match the config (checkpoint vs config): {'; '.join(diffs)}")
