"""Benchmark: does the data pipeline keep up with the GPU? Training transforms in images/s per worker.

Synthetic files of the real sizes are written to a temporary folder in the real layouts and read through the real
data modules (`datasets.build_datamodule` on the released YAMLs, only the data paths changed):

- ADE20K: 683 x 512 JPEG images (ADE20K's typical size; smooth random content, so that they compress like photos)
  and 8-bit PNG labels, through `datasets.ade20k.ADE20K` and its training transform (flip, rescale of the long side
  to U[0.5, 2] x 520, pad, 480 x 480 crop; README, Training recipe);
- KITTI: 375 x 1242 RGB PNG images and 16-bit depth PNGs (about 5% of the pixels with ground truth, as the
  annotated maps), through `datasets.bts.BTSDepth` and its training transform (KB crop, rotation, 352 x 704 crop,
  flip, colour; README, Training recipe).

Each set is measured in one process (``dataset[i]`` in a loop: images/s of one worker), then through the training
DataLoader with ``--workers`` worker processes (images/s in all and per worker, after the first batch, which
includes the workers' start). Files are read from the page cache, so disk speed is not measured. The README states
the workers per GPU the released settings need, from these figures and a GPU step time.

    python -m benchmarks.bench_data [--images 24] [--passes 2] [--workers 1 2] [--default-allocator]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import cv2
import numpy as np
import torch

from benchmarks.common import add_allocator_argument, apply_allocator
from configs.loading import load_config
from datasets import build_datamodule
from datasets.datamodule import DenseDataModule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADE_CONFIG = os.path.join(REPO, "configs/segmentation/upernet_bidense_ade20k.yaml")
KITTI_CONFIG = os.path.join(REPO, "configs/depth/upernet_bidense_kitti.yaml")


def _photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: a bilinearly upsampled coarse random field plus mild noise (compresses like a photo)."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def write_ade20k(root: str, count: int, rng: np.random.Generator) -> None:
    """``count`` 683 x 512 training pairs and 2 validation pairs in the ADE20K layout under ``root``."""
    for split, n in (("training", count), ("validation", 2)):
        images = os.path.join(root, "ADEChallengeData2016", "images", split)
        labels = os.path.join(root, "ADEChallengeData2016", "annotations", split)
        os.makedirs(images)
        os.makedirs(labels)
        for i in range(n):
            image = _photo_like(rng, 512, 683)
            label = cv2.resize(rng.integers(0, 151, (16, 22)).astype(np.uint8), (683, 512),
                               interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(os.path.join(images, f"ADE_{split}_{i:08d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            cv2.imwrite(os.path.join(labels, f"ADE_{split}_{i:08d}.png"), label)


def write_kitti(root: str, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` 375 x 1242 RGB + 16-bit depth PNG pairs under ``root``; the overrides pointing the KITTI config
    at them (one BTS filenames file serves training and evaluation)."""
    os.makedirs(os.path.join(root, "rgb"))
    os.makedirs(os.path.join(root, "depth"))
    lines = []
    for i in range(count):
        image = _photo_like(rng, 375, 1242)
        depth = np.where(rng.random((375, 1242)) < 0.05, rng.uniform(1, 80, (375, 1242)) * 256, 0).astype(np.uint16)
        cv2.imwrite(os.path.join(root, "rgb", f"{i:010d}.png"), image)
        cv2.imwrite(os.path.join(root, "depth", f"{i:010d}.png"), depth)
        lines.append(f"rgb/{i:010d}.png depth/{i:010d}.png 721.5377")
    listing = os.path.join(root, "files.txt")
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    overrides = []
    for key in ("DATA_PATH", "GT_PATH", "DATA_PATH_EVAL", "GT_PATH_EVAL"):
        overrides += [f"DATASET.{key}", root]
    return overrides + ["DATASET.FILENAMES_FILE", listing, "DATASET.FILENAMES_FILE_EVAL", listing]


def _datamodule(task: str, config: str, overrides: list[str], workers: int) -> tuple[DenseDataModule, int]:
    """The released config's data module on the synthetic files, set up for training, and its per-GPU batch."""
    cfg = load_config(task, config, [*overrides, "TRAINING.NUM_THREADS", str(workers)])
    module = build_datamodule(cfg, task)
    module.setup("fit")
    return module, cfg.TRAINING.BATCH_SIZE_ON_1_GPU


def per_process(dataset: torch.utils.data.Dataset, passes: int) -> float:
    """Images/s of ``dataset[i]`` in this process (one worker's work), after one warm-up item."""
    dataset[0]
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(len(dataset)):
            dataset[i]
    return passes * len(dataset) / (time.perf_counter() - start)


def through_loader(make: Callable[[], torch.utils.data.DataLoader], passes: int) -> float:
    """Images/s of the training DataLoader after its first batch (which includes the workers' start)."""
    loader = make()
    images, start = 0, None
    for _ in range(passes):
        for image, _target in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += image.shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="synthetic training images per data set")
    parser.add_argument("--passes", type=int, default=2, help="passes over them per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    add_allocator_argument(parser)
    args = parser.parse_args()
    allocator = apply_allocator(args)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", message=".*official.*")  # the synthetic sets are smaller than the real ones
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_ade20k(os.path.join(tmp, "ade"), args.images, rng)
        kitti_overrides = write_kitti(os.path.join(tmp, "kitti"), args.images, rng)
        cases = [
            ("ADE20K 683x512 jpg -> 480 crop", "segmentation", ADE_CONFIG,
             ["DATASET.DATA_PATH", os.path.join(tmp, "ade")]),
            ("KITTI 375x1242 png -> 352x704", "depth", KITTI_CONFIG, kitti_overrides),
        ]
        print(f"training transforms, {args.images} images x {args.passes} passes, {os.cpu_count()} CPU cores; "
              f"{allocator}; images/s (per worker)")
        header = f"{'pipeline':<34}{'1 process':>11}"
        header += "".join(f"{f'{w} workers (per)':>22}" for w in args.workers)
        print(header)
        for label, task, config, overrides in cases:
            module, batch = _datamodule(task, config, overrides, 0)
            row = f"{label:<34}{per_process(module.train_set, args.passes):>11.1f}"
            for workers in args.workers:
                module, batch = _datamodule(task, config, overrides, workers)
                rate = through_loader(module.train_dataloader, args.passes)
                row += f"{rate:>12.1f} ({rate / workers:>5.1f})   "
            print(row + f"  [per-GPU batch {batch}]")


if __name__ == "__main__":
    main()
