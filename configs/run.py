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

from configs.cli import Devices, check_checkpoint_matches, load_checkpoint, parse_gpus
from configs.loading import ConfigError, load_config
from configs.trainer import build_trainer, run_dir, save_config, seed_everything
from datasets import build_datamodule


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
    devices = parse_gpus(args.gpus, args.cpu_processes)
    if args.resume and args.weights:
        raise ConfigError("--resume and --weights exclude each other (--resume restores the weights too)")
    _notice(devices)
    seed_everything(cfg.RANDOM_SEED)
    module = module_cls.from_config(cfg)
    start = args.resume or args.weights
    if start:
        ckpt = load_checkpoint(start)
        check_checkpoint_matches(ckpt, start, module_cls.identity(cfg))
        if args.weights:
            module.load_state_dict(ckpt["state_dict"])
    datamodule = build_datamodule(cfg, task)
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
    devices = parse_gpus(args.gpus, args.cpu_processes)
    _notice(devices)
    ckpt = load_checkpoint(args.checkpoint)
    check_checkpoint_matches(ckpt, args.checkpoint, module_cls.identity(cfg))
    module = module_cls.from_config(cfg, pretrained=False)
    module.load_state_dict(ckpt["state_dict"])
    datamodule = build_datamodule(cfg, task)
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
