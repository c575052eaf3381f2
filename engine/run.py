"""The train and test flows shared by the four scripts; a script supplies its task and LightningModule class.

Train: config -> devices -> seed -> module (``--weights``: weights only) -> datamodule -> Trainer -> ``fit``
(``--resume``: the full state: weights, optimizer, scheduler, epoch, callbacks).
Test: config -> model from the checkpoint (`load_trained_module`: the checkpoint checked against the config) ->
``test`` -> metric table printed and written as JSON beside the checkpoint (``<checkpoint stem>.test.json``).
Predict mode of the test scripts (`engine.predict`) loads its model with the same `load_trained_module`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from yacs.config import CfgNode

from configs.loading import ConfigError, first_line, load_config
from datasets import build_datamodule, list_datasets
from engine.callbacks import last_checkpoint
from engine.checkpoints import (
    check_checkpoint_matches,
    check_not_finished,
    check_resumable,
    check_resume_config,
    check_state_dict,
    load_checkpoint,
    remove_stale_temporaries,
)
from engine.cli import Devices, parse_gpus
from engine.compilation import compile_model
from engine.console import params_ops_line
from engine.interrupt import lightning_signals, signal_name
from engine.trainer import accumulation, build_trainer, run_dir, save_config, seed_everything
from models import list_models, supported_methods
from models.pretrained import PretrainedWeightsUnavailable


class TaskModule(Protocol):
    """What the scripts' LightningModule classes provide to the shared flows."""

    @classmethod
    def from_config(cls, cfg: CfgNode, pretrained: bool = True) -> L.LightningModule: ...

    @staticmethod
    def identity(cfg: CfgNode) -> dict[str, Any]: ...

    @staticmethod
    def validation_plan(cfg: CfgNode) -> tuple[str | None, int]: ...

    @staticmethod
    def inference_size(cfg: CfgNode, height: int, width: int) -> tuple[int, int]: ...

    @staticmethod
    def write_prediction(cfg: CfgNode, image: np.ndarray, output: torch.Tensor, folder: Path,
                         stem: str) -> list[Path]: ...


def fit(args: argparse.Namespace, task: str, module_cls: type[TaskModule]) -> Path:
    """Train as the command line asks; returns the run folder.

    The first process of every node prints the run folder, the effective batch (per-process batch x processes x
    accumulation steps) and, at the end, the final validation metrics, so that the nodes' logs can be compared
    (README, Training and evaluation).
    """
    cfg = load_config(task, args.config, args.overrides)
    check_names(cfg, task, args.config)
    devices = parse_gpus(args.gpus, args.cpu_processes)
    check_launcher(cfg)
    accumulation(cfg, devices)
    if args.resume and args.weights:
        raise ConfigError("--resume and --weights exclude each other (--resume restores the weights too)")
    if cfg.MODEL.PRETRAINED:
        load_checkpoint(cfg.MODEL.PRETRAINED, lightning=False, what="MODEL.PRETRAINED file")
    start = args.resume or args.weights
    ckpt = load_checkpoint(start) if start else None
    if ckpt is not None:
        check_checkpoint_matches(ckpt, start, module_cls.identity(cfg))
    if args.resume:
        check_resumable(ckpt, args.resume)
        changes = check_resume_config(ckpt, args.resume, cfg, args.allow_config_change)
        check_not_finished(ckpt, args.resume, cfg)
        if changes and rank_zero_only.rank == 0:
            print(f"resuming with a changed config (--allow-config-change): {'; '.join(changes)}")
        remove_stale_temporaries([Path(args.resume).parent])
    datamodule = build_datamodule(cfg, task)
    _notice(devices)
    seed_everything(cfg.RANDOM_SEED)
    module = build_module(module_cls, cfg, pretrained=ckpt is None)
    module.recorded_config = cfg.dump()
    if ckpt is not None:
        check_state_dict(ckpt, start, module.state_dict())
        if args.weights:
            module.load_state_dict(ckpt["state_dict"])
    del ckpt
    compile_model(module, cfg.TRAINING.COMPILE)
    folder = run_dir(cfg, args.config, task)
    monitor, eval_freq = module_cls.validation_plan(cfg)
    trainer = build_trainer(cfg, devices, folder, monitor, eval_freq)
    if rank_zero_only.rank == 0:
        save_config(cfg, folder)
    node_first = int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0) == 0
    if node_first:
        processes = devices.count * cfg.TRAINING.NUM_NODES
        steps = accumulation(cfg, devices)
        print(f"run folder: {folder}")
        print(f"effective batch {cfg.TRAINING.BATCH_SIZE_ON_1_GPU * processes * steps} = "
              f"{cfg.TRAINING.BATCH_SIZE_ON_1_GPU} per process x {processes} processes x {steps} accumulation steps")
        count_on = torch.device("cuda", devices.devices[0]) if devices.accelerator == "gpu" else None
        print(f"{cfg.MODEL.MODEL_TYPE} {cfg.MODEL.BINARY_TYPE}: "
              f"{params_ops_line(module.model, evaluation_input(cfg, task), count_on)}")

    def stopped(signum: int) -> str:
        last = last_checkpoint(trainer)
        name = signal_name(signum)
        if not last:
            return (f"interrupted by {name} in epoch {trainer.current_epoch}, before any checkpoint was written; "
                    f"start again with: {resume_command(args, None)}")
        return (f"interrupted by {name} in epoch {trainer.current_epoch}; checkpoint {last} is kept and the epoch "
                f"restarts from it; continue with: {resume_command(args, last)}")

    with lightning_signals(stopped):
        trainer.fit(module, datamodule=datamodule, ckpt_path=args.resume)
    final = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("valid/")}
    if node_first and final:
        print("final metrics: " + ", ".join(f"{name} {value!r}" for name, value in sorted(final.items())))
    return folder


def resume_command(args: argparse.Namespace, last: str | Path | None) -> str:
    """The command line that continues the run of ``args`` from checkpoint ``last`` (``None``: the same run
    again), quoted for a POSIX shell."""
    parts = [sys.argv[0], str(args.config)]
    if args.gpus is not None:
        parts += ["--gpus", args.gpus]
    if args.cpu_processes is not None:
        parts += ["--cpu-processes", str(args.cpu_processes)]
    if args.allow_config_change:
        parts.append("--allow-config-change")
    if last is not None:
        parts += ["--resume", str(last)]
    elif args.weights:
        parts += ["--weights", str(args.weights)]
    return shlex.join([Path(sys.executable).name, *parts, *args.overrides])


def check_launcher(cfg: CfgNode) -> None:
    """ConfigError when ``TRAINING.NUM_NODES > 1`` but this process was not started by torchrun or SLURM ``srun``
    (without them every process would wait for the others forever)."""
    nodes = cfg.TRAINING.NUM_NODES
    if nodes == 1:
        return
    torchrun = all(key in os.environ for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"))
    srun = "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ
    if not (torchrun or srun):
        raise ConfigError(f"TRAINING.NUM_NODES {nodes}: start one process per GPU on each of the {nodes} nodes "
                          f"with torchrun (--nnodes {nodes} --nproc-per-node GPUS --rdzv-id JOB --rdzv-endpoint "
                          f"HOST:PORT) or SLURM srun (--nodes {nodes} --ntasks-per-node GPUS); this process was "
                          f"started by neither")


def build_module(module_cls: type[TaskModule], cfg: CfgNode, pretrained: bool = True) -> L.LightningModule:
    """``module_cls.from_config(cfg, pretrained)``; a MODEL.PRETRAINED file that does not fit the backbone is a
    ConfigError naming the key and the file (the file itself was read safely by `fit` before: `load_checkpoint`),
    and so are standard weights that are neither cached nor downloadable (`models.pretrained`).
    ``pretrained=False`` (the weights come from a checkpoint) loads and fetches nothing."""
    path = cfg.MODEL.PRETRAINED
    if not pretrained:
        return module_cls.from_config(cfg, pretrained=False)
    if not path:
        try:
            return module_cls.from_config(cfg)
        except PretrainedWeightsUnavailable as err:
            raise ConfigError(str(err)) from err
    try:
        return module_cls.from_config(cfg)
    except Exception as err:  # the loaders raise many types for a file that is not a checkpoint of this backbone
        raise ConfigError(f"MODEL.PRETRAINED {path} cannot be loaded into {cfg.MODEL.MODEL_TYPE} "
                          f"{cfg.MODEL.BINARY_TYPE}: {type(err).__name__}: {first_line(err)}") from err


def evaluate(args: argparse.Namespace, task: str, module_cls: type[TaskModule]) -> dict[str, float]:
    """Evaluate ``args.checkpoint`` on the evaluation set of ``args.config``; print and save the metrics."""
    cfg = load_config(task, args.config, args.overrides)
    check_names(cfg, task, args.config)
    devices = parse_gpus(args.gpus, args.cpu_processes)
    check_launcher(cfg)
    if getattr(args, "out", None) is not None:
        raise ConfigError("--out DIR goes with --predict IMAGE_OR_FOLDER (without --predict the test scripts "
                          "evaluate and write <checkpoint stem>.test.json beside the checkpoint)")
    module, epoch = load_trained_module(args.checkpoint, cfg, module_cls)
    compile_model(module, cfg.TRAINING.COMPILE)
    datamodule = build_datamodule(cfg, task)
    _notice(devices)
    trainer = build_trainer(cfg, devices, None, None)
    with lightning_signals(lambda signum: f"interrupted by {signal_name(signum)} during evaluation; nothing written"):
        logged = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    metrics = {name.split("/", 1)[-1]: float(value) for name, value in logged.items()}
    if rank_zero_only.rank == 0:
        print(format_table(metrics, title=f"{Path(args.checkpoint).name} on {cfg.DATASET.DATASET} ({task})"))
        out = Path(args.checkpoint).with_name(Path(args.checkpoint).stem + ".test.json")
        record = {
            "config": str(args.config),
            "checkpoint": str(args.checkpoint),
            "dataset": cfg.DATASET.DATASET,
            "epoch": epoch,
            "metrics": metrics,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"metrics written to {out}")
    return metrics


def load_trained_module(checkpoint: str | Path, cfg: CfgNode,
                        module_cls: type[TaskModule]) -> tuple[L.LightningModule, int | None]:
    """The task module of ``cfg`` with the weights of ``checkpoint``, and the epoch it was saved at (or None).

    The one loading step of evaluation and prediction: the file is read (one-line ConfigError if it is missing or
    not a checkpoint), its stored model identity (model, method, classes / maximum depth) must equal the config's,
    and its ``state_dict`` must fit the module exactly. Full and weights-only checkpoints load alike.
    """
    ckpt = load_checkpoint(checkpoint)
    check_checkpoint_matches(ckpt, checkpoint, module_cls.identity(cfg))
    module = module_cls.from_config(cfg, pretrained=False)
    check_state_dict(ckpt, checkpoint, module.state_dict())
    module.load_state_dict(ckpt["state_dict"])
    return module, ckpt.get("epoch")


def evaluation_input(cfg: CfgNode, task: str) -> tuple[int, int]:
    """The config's evaluation input (H, W): ``CROP_SIZE`` squared (segmentation), ``INPUT_HEIGHT x INPUT_WIDTH``
    (depth), as ``python -m models.summary`` counts."""
    if task == "segmentation":
        return cfg.DATASET.CROP_SIZE, cfg.DATASET.CROP_SIZE
    return cfg.DATASET.INPUT_HEIGHT, cfg.DATASET.INPUT_WIDTH


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
