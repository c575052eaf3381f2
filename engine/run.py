"""The train and test flows shared by the four scripts; a script supplies its task and LightningModule class.

Train: config -> devices -> seed -> module (``--weights``: weights only) -> datamodule -> Trainer -> ``fit``
(``--resume``: the full state: weights, optimizer, scheduler, epoch, callbacks).
Test: config -> checkpoint checked against the config -> ``test`` -> metric table printed and written as JSON
beside the checkpoint (``<checkpoint stem>.test.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Protocol

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from yacs.config import CfgNode

from configs.loading import ConfigError, load_config
from datasets import build_datamodule, list_datasets
from engine.checkpoints import check_checkpoint_matches, check_resume_config, load_checkpoint
from engine.cli import Devices, parse_gpus
from engine.trainer import build_trainer, run_dir, save_config, seed_everything
from models import list_models, supported_methods
from models.pack import is_packed


class TaskModule(Protocol):
    """What the scripts' LightningModule classes provide to the shared flows."""

    @classmethod
    def from_config(cls, cfg: CfgNode, pretrained: bool = True) -> L.LightningModule: ...

    @staticmethod
    def identity(cfg: CfgNode) -> dict[str, Any]: ...

    @staticmethod
    def validation_plan(cfg: CfgNode) -> tuple[str | None, int]: ...


def fit(args: argparse.Namespace, task: str, module_cls: type[TaskModule]) -> Path:
    """Train as the command line asks; returns the run folder."""
    cfg = load_config(task, args.config, args.overrides)
    check_names(cfg, task, args.config)
    devices = parse_gpus(args.gpus, args.cpu_processes)
    if args.resume and args.weights:
        raise ConfigError("--resume and --weights exclude each other (--resume restores the weights too)")
    start = args.resume or args.weights
    ckpt = load_checkpoint(start) if start else None
    if ckpt is not None:
        check_checkpoint_matches(ckpt, start, module_cls.identity(cfg))
    if args.resume and is_packed(ckpt):
        raise ConfigError(f"--resume {args.resume} is a packed 1-bit file (weights only); resume from a full "
                          "checkpoint (last.ckpt), or start from its weights with --weights")
    if args.resume:
        changes = check_resume_config(ckpt, args.resume, cfg, args.allow_config_change)
        if changes and rank_zero_only.rank == 0:
            print(f"resuming with a changed config (--allow-config-change): {'; '.join(changes)}")
    datamodule = build_datamodule(cfg, task)
    _notice(devices)
    seed_everything(cfg.RANDOM_SEED)
    module = module_cls.from_config(cfg)
    if ckpt is not None and args.weights:
        module.load_state_dict(ckpt["state_dict"])
    folder = run_dir(cfg, args.config)
    monitor, eval_freq = module_cls.validation_plan(cfg)
    trainer = build_trainer(cfg, devices, folder, monitor, eval_freq)
    if rank_zero_only.rank == 0:
        save_config(cfg, folder)
        print(f"run folder: {folder}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=args.resume)
    return folder


def evaluate(args: argparse.Namespace, task: str, module_cls: type[TaskModule]) -> dict[str, float]:
    """Evaluate ``args.checkpoint`` on the evaluation set of ``args.config``; print and save the metrics."""
    cfg = load_config(task, args.config, args.overrides)
    check_names(cfg, task, args.config)
    devices = parse_gpus(args.gpus, args.cpu_processes)
    ckpt = load_checkpoint(args.checkpoint)
    check_checkpoint_matches(ckpt, args.checkpoint, module_cls.identity(cfg))
    datamodule = build_datamodule(cfg, task)
    _notice(devices)
    module = module_cls.from_config(cfg, pretrained=False)
    module.load_state_dict(ckpt["state_dict"])
    trainer = build_trainer(cfg, devices, None, None)
    logged = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    metrics = {name.split("/", 1)[-1]: float(value) for name, value in logged.items()}
    if rank_zero_only.rank == 0:
        print(format_table(metrics, title=f"{Path(args.checkpoint).name} on {cfg.DATASET.DATASET} ({task})"))
        out = Path(args.checkpoint).with_name(Path(args.checkpoint).stem + ".test.json")
        record = {
            "config": str(args.config),
            "checkpoint": str(args.checkpoint),
            "dataset": cfg.DATASET.DATASET,
            "epoch": ckpt.get("epoch"),
            "metrics": metrics,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"metrics written to {out}")
    return metrics


def check_names(cfg: CfgNode, task: str, config: str | Path) -> None:
    """ConfigError unless DATASET.DATASET, MODEL.MODEL_TYPE and MODEL.BINARY_TYPE name registered entries."""
    checks = [
        ("DATASET.DATASET", cfg.DATASET.DATASET, list_datasets(task)),
        ("MODEL.MODEL_TYPE", cfg.MODEL.MODEL_TYPE, list_models()),
    ]
    for key, value, valid in checks:
        if value not in valid:
            raise ConfigError(f"config {config}: {key} {value!r} is unknown for {task}; valid: {', '.join(valid)}")
    methods = supported_methods(cfg.MODEL.MODEL_TYPE)
    if cfg.MODEL.BINARY_TYPE not in methods:
        raise ConfigError(f"config {config}: MODEL.BINARY_TYPE {cfg.MODEL.BINARY_TYPE!r} is not defined for "
                          f"{cfg.MODEL.MODEL_TYPE}; valid: {', '.join(methods)}")


def format_table(metrics: dict[str, float], title: str) -> str:
    """A two-column text table of ``metrics`` (4 decimals)."""
    width = max(len(name) for name in metrics) if metrics else 6
    rows = [title, "-" * max(len(title), width + 12)]
    for name, value in metrics.items():
        rows.append(f"{name:<{width}}  {value:>10.4f}" if math.isfinite(value) else f"{name:<{width}}  {value:>10}")
    return "\n".join(rows)


def _notice(devices: Devices) -> None:
    if devices.notice and rank_zero_only.rank == 0:
        print(devices.notice)
