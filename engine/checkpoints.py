"""Checkpoint files: atomic writes, safe loading with one-line errors, and the checks before a checkpoint is used
(README, Reliability).

- `AtomicCheckpointIO` / `atomic_save`: write to a temporary file ``.<name>.<pid>.tmp`` in the same folder, flush
  and fsync it, then ``os.replace`` it over the target, so a kill while saving leaves the previous file whole. A
  failed write of any kind (full disk, including the ``RuntimeError`` torch's zip writer raises there, unwritable
  folder) removes the temporary file and raises `CheckpointWriteError` naming the path, the previous checkpoint
  untouched. `remove_stale_temporaries` deletes the temporary files that killed runs left behind.
- `load_checkpoint`: the one safe loader of checkpoint files (``torch.load(weights_only=True)``: tensors,
  containers and plain values only, so a crafted file cannot run code); also what Lightning uses to read a
  ``--resume`` checkpoint (`AtomicCheckpointIO.load_checkpoint`).
- `check_checkpoint_matches`, `check_state_dict`, `check_not_finished`: compare the model identity, the weight
  names and shapes and the epochs done with the config and the model.
- `check_resume_config`: compares the config stored in a checkpoint (or, for a checkpoint without it, the run
  folder's ``config.yaml``) with the config of a ``--resume`` and refuses a change of any key that alters the
  training, naming the keys, unless the user allows it.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from yacs.config import CfgNode

from configs.loading import ConfigError, first_line
from engine.errors import CheckpointWriteError
from models.pack import checkpoint_from_packed, is_packed

CONFIG_KEY = "bidense_config"
# Keys that may differ on --resume: where things are, how many workers load them, when this invocation stops,
# how often it logs and whether the model is compiled; none changes the training itself.
RESUMABLE_KEYS = frozenset({
    "OUTPUT_DIR", "DATASET.DATA_PATH", "DATASET.GT_PATH", "DATASET.DATA_PATH_EVAL", "DATASET.GT_PATH_EVAL",
    "MODEL.PRETRAINED", "TRAINING.NUM_THREADS", "TRAINING.STOP_AT_EPOCH", "TRAINING.LOG_EVERY_N_STEPS",
    "TRAINING.COMPILE",
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

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's read of a ``--resume`` checkpoint: `load_checkpoint` (weights only, on the CPU)."""
        if "://" in str(path):
            return super().load_checkpoint(path, weights_only=True)
        return load_checkpoint(path)


# A disk with less free space than this after a failed write is reported as full.
FULL_DISK_BYTES = 1 << 20


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically; `CheckpointWriteError` naming ``path`` if it cannot be written.

    Any failure (``OSError``, torch's ``RuntimeError`` from its zip writer on a full disk, anything else) removes
    the temporary file and leaves the previous file at ``path`` as it was; an interruption (``KeyboardInterrupt``)
    does the same and propagates.
    """
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
        except BaseException as err:
            full = _disk_full(path.parent)
            tmp.unlink(missing_ok=True)
            if full and isinstance(err, Exception) and not isinstance(err, OSError):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from err
            raise
        _fsync_dir(path.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        raise CheckpointWriteError(f"cannot save checkpoint {path}: {reason}; the previous file there (if any) is "
                                   f"intact") from err
    except Exception as err:
        raise CheckpointWriteError(f"cannot save checkpoint {path}: {type(err).__name__}: {first_line(err)}; the "
                                   f"previous file there (if any) is intact") from err


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")
# A temporary file is stale once its writer is gone and it has not changed for this long (a writer on another
# machine sharing the folder keeps changing it while it writes).
STALE_AFTER_S = 60.0


def remove_stale_temporaries(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.tmp``) of killed checkpoint writes in ``folders``.

    A file is stale when no process ``pid`` exists on this machine and it is older than `STALE_AFTER_S`.
    Returns the files removed; a file that cannot be removed is left.
    """
    removed = []
    now = time.time()
    for folder in folders:
        for tmp in Path(folder).glob(".*.tmp"):
            match = TEMPORARY.match(tmp.name)
            if match is None or _process_exists(int(match.group(1))):
                continue
            try:
                if now - tmp.stat().st_mtime < STALE_AFTER_S:
                    continue
                tmp.unlink()
            except OSError:
                continue
            removed.append(tmp)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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


def load_checkpoint(path: str | Path, *, lightning: bool = True, allowed_globals: Sequence[Any] = (),
                    what: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint file safely: ``torch.load(weights_only=True)`` on the CPU, nothing in it executed.

    Only tensors, containers and plain values are rebuilt (torch's weights-only set). The Lightning checkpoints
    this project writes need nothing more: their hyper-parameters, loop, callback, optimizer and scheduler states
    are dicts, lists, strings and numbers (README, Reliability); a file format that stores other types passes
    them in ``allowed_globals`` (classes or functions, as for ``torch.serialization.safe_globals``).

    Args:
        path: the file.
        lightning: require a Lightning checkpoint (a dict with ``state_dict``); otherwise any dict.
        allowed_globals: further types the file may contain.
        what: how the file is named in the messages ("checkpoint", "MODEL.PRETRAINED file", ...).

    With ``lightning``, a packed 1-bit file of ``python -m models.pack`` (recognised by its format marker, whatever
    its name) loads as ``{"format", "state_dict", "hyper_parameters", "epoch"}`` with the weights rebuilt (README,
    "Packed 1-bit checkpoints").

    Raises:
        ConfigError: one line naming the file: missing, not loadable, needing a type outside the allowed set
            (named), or not a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} not found")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if unsafe:
            raise ConfigError(f"{what} {path} is refused: it contains {unsafe.group(1)}, which is not a tensor or "
                              f"plain value and could run code when loaded") from err
        raise ConfigError(f"{what} {path} cannot be loaded: {type(err).__name__}: {first_line(err)}") from err
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"{what} {path} cannot be loaded: {type(err).__name__}: {first_line(err)}") from err
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{what} {path} holds a {type(ckpt).__name__}, not a dict")
    if lightning and is_packed(ckpt):
        return checkpoint_from_packed(ckpt, path)
    if lightning and "state_dict" not in ckpt:
        raise ConfigError(f"{what} {path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def check_state_dict(ckpt: dict[str, Any], path: str | Path, model: Mapping[str, torch.Tensor]) -> None:
    """ConfigError listing every weight the model has and the checkpoint lacks, every extra weight and every shape
    mismatch (all names, on one line), so that a strict ``load_state_dict`` cannot fail afterwards."""
    stored = ckpt["state_dict"]
    missing = [key for key in model if key not in stored]
    unexpected = [key for key in stored if key not in model]
    shapes = [f"{key} {tuple(stored[key].shape)} vs {tuple(value.shape)}" for key, value in model.items()
              if key in stored and isinstance(stored[key], torch.Tensor) and stored[key].shape != value.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (checkpoint vs model): {'; '.join(shapes)}")
    if parts:
        raise ConfigError(f"checkpoint {path} does not fit the model's weights: {'; '.join(parts)}")


def epochs_done(ckpt: dict[str, Any]) -> int:
    """Training epochs a checkpoint has completed (Lightning's processed-epoch count; else ``epoch + 1``)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1


def check_not_finished(ckpt: dict[str, Any], path: str | Path, cfg: CfgNode) -> None:
    """ConfigError when a ``--resume`` checkpoint has already trained every epoch this invocation would run
    (``STOP_AT_EPOCH`` or ``NUM_EPOCHS``): there is nothing to do."""
    done = epochs_done(ckpt)
    t = cfg.TRAINING
    target = t.STOP_AT_EPOCH or t.NUM_EPOCHS
    if done >= target:
        key = f"TRAINING.STOP_AT_EPOCH {t.STOP_AT_EPOCH}" if t.STOP_AT_EPOCH else f"TRAINING.NUM_EPOCHS {t.NUM_EPOCHS}"
        raise ConfigError(f"--resume {path}: the checkpoint has already trained {done} epochs and {key} asks for "
                          f"{target}: nothing to do (raise TRAINING.NUM_EPOCHS with --allow-config-change to train "
                          f"longer)")


def check_checkpoint_matches(ckpt: dict[str, Any], path: str | Path, expected: dict[str, Any]) -> None:
    """ConfigError if the checkpoint's stored model identity (``hyper_parameters``) differs from ``expected``.

    ``expected`` maps hyper-parameter names (e.g. model_type, binary_type, num_classes) to the config's values.
    """
    stored = ckpt.get("hyper_parameters", {})
    diffs = [f"{key} {stored.get(key)!r} vs {value!r}" for key, value in expected.items() if stored.get(key) != value]
    if diffs:
        raise ConfigError(f"checkpoint {path} does not match the config (checkpoint vs config): {'; '.join(diffs)}")


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """ConfigError unless the checkpoint holds the training state ``--resume`` restores (optimizer states).

    The best-epoch files are weights-only (README, Training and evaluation): they evaluate and initialise
    (``--weights``) but cannot continue a run.
    """
    if is_packed(ckpt):
        what = "is a packed 1-bit file (weights only, no training state)"
    elif "optimizer_states" not in ckpt:
        what = "holds the weights only (no optimizer state, as the best-epoch checkpoints)"
    else:
        return
    raise ConfigError(f"--resume {path}: the file {what}; resume from the run's last.ckpt, or start a new run from "
                      f"these weights with --weights {path}")
