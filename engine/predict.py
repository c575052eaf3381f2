"""Predict mode of the test scripts: a checkpoint run on one's own images, the task's pictures written per image.

    python test_segmentation.py CONFIG CKPT --predict IMAGE_OR_FOLDER [--out DIR] [--gpus 0]
    python test_depth.py CONFIG CKPT --predict IMAGE_OR_FOLDER [--out DIR] [--gpus 0]

The model comes from `engine.run.load_trained_module`, the loading and identity check of evaluation. Each image
(README, Predictions on your own images):

1. is decoded to RGB; a file that cannot be decoded is skipped with one line and the run goes on;
2. is resized to the task module's ``inference_size`` (segmentation: the short side to ``DATASET.CROP_SIZE``, the
   validation scale; depth: unchanged, the scale the depth is read at), bilinear as the data pipelines;
3. is ImageNet-normalised as in training and padded at the bottom and right, by repeating the edge pixels, to a
   multiple of the model's size unit `SIZE_UNIT` (UPerNet 32: the ConvNeXt stem and three 2x down-samplings;
   DPT 28: two ViT-S/14 patches, as DPT keeps its patch grid even, so that DPT's own input resize is a no-op);
4. runs through the model in eval mode, float32, batch 1; the padding is cropped off the output;
5. goes to the task module's ``write_prediction``, which resizes the output to the image's own size and writes
   its PNG files into the output folder (default ``<checkpoint stem>_predictions/`` beside the checkpoint).

The task-specific half (inference size, palette, depth scale) lives with the task modules, as their identity and
validation plan do, so this flow knows no task.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from configs.loading import ConfigError, first_line, load_config
from datasets.io import DataError, read_rgb
from datasets.normalize import to_normalized_tensor
from engine.cli import Devices, parse_gpus
from engine.errors import RunFault
from engine.run import TaskModule, check_names, load_trained_module

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")

# MODEL_TYPE -> the multiple the padded input's height and width must be.
SIZE_UNIT = {"upernet": 32, "dpt": 28}


def predict(args: argparse.Namespace, task: str, module_cls: type[TaskModule]) -> list[Path]:
    """Predict on ``args.predict`` (an image or a folder) with ``args.checkpoint``; returns the files written."""
    cfg = load_config(task, args.config, args.overrides)
    check_names(cfg, task, args.config)
    device = predict_device(parse_gpus(args.gpus, args.cpu_processes))
    images, others = select_images(Path(args.predict))
    out = Path(args.out) if args.out else default_output(args.checkpoint)
    module, _ = load_trained_module(args.checkpoint, cfg, module_cls)
    module.to(device).eval()
    for path in others:
        print(f"skipped {path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFault(f"cannot create the output folder {out}: {err.strerror or err}") from err
    stems = output_stems(images)
    unit = SIZE_UNIT[cfg.MODEL.MODEL_TYPE]
    written: list[Path] = []
    done = 0
    for path in tqdm(images, desc="predict", unit="image"):
        try:
            image = read_rgb(str(path))
        except DataError as err:
            tqdm.write(f"skipped {path}: {first_line(err)}", file=sys.stderr)
            continue
        size = module_cls.inference_size(cfg, *image.shape[:2])
        output = infer(module, image, size, unit, device)
        written += module_cls.write_prediction(cfg, image, output, out, stems[path])
        done += 1
    if not done:
        raise RunFault(f"--predict {args.predict}: none of the {len(images)} image file(s) could be decoded")
    print(f"{done} of {len(images)} image(s) predicted; {len(written)} files written to {out}")
    return written


def predict_device(devices: Devices) -> torch.device:
    """The one device predict runs on: the first GPU of ``--gpus`` (with a notice when several are given), else the
    CPU. ConfigError for ``--cpu-processes`` above 1 (predict runs in one process)."""
    if devices.accelerator == "gpu":
        if devices.count > 1:
            print(f"--predict runs on one device: cuda:{devices.devices[0]}")
        return torch.device("cuda", devices.devices[0])
    if devices.count > 1:
        raise ConfigError(f"--predict runs in one process; drop --cpu-processes {devices.count}")
    if devices.notice:
        print(devices.notice)
    return torch.device("cpu")


def select_images(source: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) of ``source``: the file itself, or a folder's files (not its subfolders), sorted.

    Images are the files whose suffix is one of `IMAGE_SUFFIXES` (any case); a single file is taken as an image
    whatever its suffix. ConfigError when ``source`` does not exist or holds no image file.
    """
    if source.is_file():
        return [source], []
    if not source.is_dir():
        raise ConfigError(f"--predict {source}: no such file or folder")
    files = sorted(p for p in source.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ConfigError(f"--predict {source}: the folder holds no image file ({len(files)} other file(s); "
                          f"expected {', '.join(IMAGE_SUFFIXES)})")
    return images, [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


def default_output(checkpoint: str | Path) -> Path:
    """``<checkpoint stem>_predictions/`` in the checkpoint's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_predictions")


def output_stems(images: list[Path]) -> dict[Path, str]:
    """The name each image's outputs start with: its stem, or ``<stem>_<suffix>`` where two images share a stem."""
    counts = Counter(p.stem for p in images)
    return {p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix[1:].lower()}" for p in images}


def pad_to_unit(x: torch.Tensor, unit: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom and right by repeating the edge pixels, to the next multiples of
    ``unit`` (at least ``unit``)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % unit, -w % unit
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


@torch.no_grad()
def infer(model: torch.nn.Module, image: np.ndarray, size: tuple[int, int], unit: int,
          device: torch.device) -> torch.Tensor:
    """The model's output ``[C, h, w]`` for RGB uint8 ``image`` ``[H, W, 3]`` seen at ``size = (h, w)``.

    The image is resized to ``size`` (PIL bilinear, as the data pipelines), normalised, padded with `pad_to_unit`,
    run, and the padding cropped off the output.
    """
    h, w = size
    if (h, w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = pad_to_unit(to_normalized_tensor(image)[None].to(device), unit)
    return model(x)[0, :, :h, :w].float()


def class_map(logits: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """``argmax_c`` of the logits ``[C, h, w]`` bilinearly resized to ``size`` (``align_corners=False``).

    Classes are resized ``chunk`` at a time with a running maximum, so memory holds ``chunk`` full-size maps
    rather than C (150 for ADE20K); ties go to the lowest class, as ``argmax``.
    """
    best = ids = torch.empty(0)
    for start in range(0, logits.shape[0], chunk):
        part = F.interpolate(logits[None, start:start + chunk], size=size, mode="bilinear", align_corners=False)[0]
        value, index = part.max(dim=0)
        if start == 0:
            best, ids = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            ids = torch.where(better, index + start, ids)
    return ids


def resize_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[C, h, w]`` -> ``[C, *size]``, bilinear (``align_corners=False``); unchanged when the size already fits."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    return F.interpolate(values[None], size=size, mode="bilinear", align_corners=False)[0]


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``[H, W]`` uint8 / uint16 or ``[H, W, 3]`` RGB uint8 ``array`` as a PNG; RunFault naming ``path``."""
    data = np.ascontiguousarray(array[..., ::-1] if array.ndim == 3 else array)
    try:
        ok = cv2.imwrite(str(path), data)
    except cv2.error as err:
        raise RunFault(f"cannot write {path}: {first_line(err)}") from err
    if not ok:
        raise RunFault(f"cannot write {path}")
    return path
