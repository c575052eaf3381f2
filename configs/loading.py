"""Load a YAML config over the yacs defaults, then apply ``KEY VALUE`` overrides, with one-line errors.

yacs' own ``merge_from_file`` raises a bare ``KeyError`` for a typo and refuses an ``int`` where the default is a
``float``; here every key is checked against the defaults first (naming the nearest valid key), values are decoded
the way yacs decodes them (``ast.literal_eval`` on strings, so the authors' ``MAX_LR: 1e-4`` is a float), and the
type is checked against the default with the lenient coercions a YAML writer expects (int -> float, number ->
string). An empty YAML file and a key given twice in one mapping (which YAML loaders silently resolve to the last
value) are errors, and the values are range-checked (README, Reliability).
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from configs.depth.default import get_cfg_defaults as _depth_defaults
from configs.segmentation.default import get_cfg_defaults as _segmentation_defaults

TASKS = ("segmentation", "depth")


class ConfigError(ValueError):
    """A user-facing configuration or command-line error; its message is one line naming the culprit."""


def get_defaults(task: str) -> CfgNode:
    """The yacs defaults of ``task`` ("segmentation" or "depth")."""
    if task == "segmentation":
        return _segmentation_defaults()
    if task == "depth":
        return _depth_defaults()
    raise ConfigError(f"unknown task {task!r}; available: {', '.join(TASKS)}")


def load_config(task: str, path: str | Path | None, overrides: Sequence[str] = ()) -> CfgNode:
    """Defaults of ``task``, merged with the YAML at ``path`` (if any), then with ``KEY VALUE`` ``overrides``.

    Raises:
        ConfigError: missing/unreadable/invalid YAML, unknown key (with the nearest valid key), wrong value type,
            odd number of override tokens.
    """
    cfg = get_defaults(task)
    if path is not None:
        for key, value in _flatten(_read_yaml(Path(path))):
            _set(cfg, key, value, source=f"config {path}")
    if len(overrides) % 2:
        raise ConfigError(
            f"overrides must be KEY VALUE pairs; got {len(overrides)} tokens: {' '.join(overrides)}"
        )
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        _set(cfg, key, value, source="command-line override")
    _check_values(cfg, task, source=f"config {path}" if path is not None else "config")
    cfg.freeze()
    return cfg


# numpy.random.seed accepts 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
PATH_KEYS = ("DATA_PATH", "GT_PATH", "DATA_PATH_EVAL", "GT_PATH_EVAL")

PRECISIONS = ("32", "32-true", "64", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")


def _check_values(cfg: CfgNode, task: str, source: str) -> None:
    """Range checks that the types alone do not catch."""
    t = cfg.TRAINING
    positive = {"TRAINING.BATCH_SIZE": t.BATCH_SIZE, "TRAINING.BATCH_SIZE_ON_1_GPU": t.BATCH_SIZE_ON_1_GPU,
                "TRAINING.NUM_EPOCHS": t.NUM_EPOCHS, "TRAINING.NUM_NODES": t.NUM_NODES, "TRAINING.MAX_LR": t.MAX_LR,
                "TRAINING.LIMIT_TRAIN_BATCHES": t.LIMIT_TRAIN_BATCHES,
                "TRAINING.LOG_EVERY_N_STEPS": t.LOG_EVERY_N_STEPS}
    if task == "depth":
        positive["MODEL.MAX_DEPTH"] = cfg.MODEL.MAX_DEPTH
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: key {key} must be positive, got {value}")
    for key, value in {"TRAINING.NUM_THREADS": t.NUM_THREADS, "TRAINING.LIMIT_VAL_BATCHES": t.LIMIT_VAL_BATCHES,
                       "TRAINING.WEIGHT_DECAY": t.WEIGHT_DECAY}.items():
        if value < 0:
            raise ConfigError(f"{source}: key {key} must not be negative, got {value}")
    if not 0 <= t.STOP_AT_EPOCH <= t.NUM_EPOCHS:
        raise ConfigError(f"{source}: key TRAINING.STOP_AT_EPOCH must lie in 0..NUM_EPOCHS ({t.NUM_EPOCHS}), "
                          f"got {t.STOP_AT_EPOCH}")
    if t.PRECISION not in PRECISIONS:
        raise ConfigError(f"{source}: key TRAINING.PRECISION {t.PRECISION!r} is not one of {', '.join(PRECISIONS)}")
    if task == "segmentation" and cfg.MODEL.NUM_CLASSES < 2:
        raise ConfigError(f"{source}: key MODEL.NUM_CLASSES must count the classes plus the ignore slot (>= 2), "
                          f"got {cfg.MODEL.NUM_CLASSES}")
    if not 0 <= cfg.RANDOM_SEED <= MAX_SEED:
        raise ConfigError(f"{source}: key RANDOM_SEED must lie in 0..{MAX_SEED}, got {cfg.RANDOM_SEED}")
    d = cfg.DATASET
    sizes = ({"DATASET.BASE_SIZE": d.BASE_SIZE, "DATASET.CROP_SIZE": d.CROP_SIZE} if task == "segmentation" else
             {"DATASET.INPUT_HEIGHT": d.INPUT_HEIGHT, "DATASET.INPUT_WIDTH": d.INPUT_WIDTH})
    for key, value in sizes.items():
        if value <= 1:
            raise ConfigError(f"{source}: key {key} must be at least 2 pixels, got {value}")
    freq_key = "TRAINING.EVAL_FREQ" if task == "segmentation" else "ONLINE_EVAL.EVAL_FREQ"
    freq = t.EVAL_FREQ if task == "segmentation" else cfg.ONLINE_EVAL.EVAL_FREQ
    if freq < 0:
        raise ConfigError(f"{source}: key {freq_key} must not be negative (0 = never), got {freq}")
    if task == "depth":
        e = cfg.ONLINE_EVAL
        if not 0 <= e.MIN_DEPTH_EVAL < e.MAX_DEPTH_EVAL:
            raise ConfigError(f"{source}: keys ONLINE_EVAL.MIN_DEPTH_EVAL ({e.MIN_DEPTH_EVAL}) and MAX_DEPTH_EVAL "
                              f"({e.MAX_DEPTH_EVAL}) must satisfy 0 <= MIN_DEPTH_EVAL < MAX_DEPTH_EVAL")
    for key in PATH_KEYS:
        value = d.get(key)
        if value and os.path.exists(value) and not os.path.isdir(value):
            raise ConfigError(f"{source}: key DATASET.{key} {value} is a file; it must name a folder")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the plain loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (a KeyError's key unquoted), else its type name."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from err
    if data is None:
        raise ConfigError(f"config file {path} is empty; it must hold a mapping of KEY: value")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of KEY: value, not {type(data).__name__}")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{full}.")
        else:
            yield full, value


def _valid_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.extend(_valid_keys(value, f"{full}.") if isinstance(value, CfgNode) else [full])
    return keys


def _set(cfg: CfgNode, key: str, value: Any, source: str) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, CfgNode):
            _unknown_key(cfg, key, source)
    if parts[-1] not in node or isinstance(node[parts[-1]], CfgNode):
        _unknown_key(cfg, key, source)
    node[parts[-1]] = _coerce(key, value, node[parts[-1]], source)


def _unknown_key(cfg: CfgNode, key: str, source: str) -> None:
    valid = _valid_keys(cfg)
    near = difflib.get_close_matches(key.upper(), valid, n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ConfigError(f"{source}: unknown key {key}{hint}")


def _decode(value: Any) -> Any:
    """yacs' decoding: a string that is a Python literal becomes that literal, anything else is kept."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


# Keys that follow Lightning's ``limit_*_batches``: an integer is a number of batches, a float a fraction, so an
# integer written for them stays an integer (``1`` is one batch, ``1.0`` all of them).
BATCH_LIMIT_KEYS = ("TRAINING.LIMIT_TRAIN_BATCHES", "TRAINING.LIMIT_VAL_BATCHES")


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` converted to the type of ``default`` (any number for `BATCH_LIMIT_KEYS`, whose integers and floats
    mean different things, whatever the value it replaces), or ConfigError."""
    if isinstance(default, str):
        decoded = _decode(value)
        return decoded if isinstance(decoded, str) else _as_str(key, value, decoded, source)
    decoded = _decode(value)
    if isinstance(decoded, str) and decoded.lower() in ("true", "false"):
        decoded = decoded.lower() == "true"
    if default is None or (key in BATCH_LIMIT_KEYS and isinstance(decoded, int | float)
                           and not isinstance(decoded, bool)):
        return decoded
    if isinstance(default, bool):
        if isinstance(decoded, bool):
            return decoded
    elif isinstance(default, int):
        if isinstance(decoded, int) and not isinstance(decoded, bool):
            return decoded
    elif isinstance(default, float):
        if isinstance(decoded, int | float) and not isinstance(decoded, bool):
            return float(decoded)
    elif isinstance(default, list | tuple) and isinstance(decoded, list | tuple):
        return type(default)(decoded)
    raise ConfigError(f"{source}: key {key} expects {type(default).__name__}, got {value!r}")


def _as_str(key: str, raw: Any, decoded: Any, source: str) -> str:
    if isinstance(decoded, int | float) and not isinstance(decoded, bool):
        return str(raw)
    raise ConfigError(f"{source}: key {key} expects str, got {raw!r}")
