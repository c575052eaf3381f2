"""PASCAL VOC 2012 segmentation (README, "Data preparation"): 21 classes (background included), 255 ignored.

Expected tree (``root`` = ``DATASET.DATA_PATH``, ``../dataset`` by default as in the authors' configs; prepared
as in DANet / PyTorch-Encoding)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png          (palette png, indices 0..20, 255 = border)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   (one <id> per line)

The training list is ``DATASET.TRAIN_SPLIT``: "train" (default) or "trainval", the authors' setting, which
contains every validation image (a warning says so; README, "Where this implementation differs from the released
code, and why", PASCAL VOC). Validation is ``val.txt``. Labels: 0..20 kept, 255 -> the ignore slot
``NUM_CLASSES - 1`` (= 21, ``NUM_CLASSES: 22`` as the authors).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from datasets.io import DataError, require_dir, require_file, warn_count
from datasets.segmentation_base import SegmentationPairs, SegmentationTransform

BASE_DIR = os.path.join("VOCdevkit", "VOC2012")
SPLITS = ("train", "val", "trainval")
OFFICIAL_COUNTS = {"train": 1464, "val": 1449, "trainval": 2913}
NUM_CLASSES = 22  # 21 classes + the ignore slot
# Training id of the padding of a training crop: the authors pad the raw mask with 0, VOC's background class.
PAD_LABEL = 0
EXPECTED_TREE = (
    "VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val,trainval}.txt}"
)


def list_pairs(root: str, split: str) -> tuple[list[str], list[str]]:
    """Image and label paths of the ids in ``ImageSets/Segmentation/<split>.txt``, in file order."""
    if split not in SPLITS:
        raise DataError(f"unknown PASCAL VOC split {split!r} (DATASET.TRAIN_SPLIT); valid: {', '.join(SPLITS)}")
    require_dir(root, "data root (DATASET.DATA_PATH)", "a folder holding VOCdevkit/VOC2012/")
    base = os.path.join(root, BASE_DIR)
    require_dir(base, "PASCAL VOC folder", EXPECTED_TREE)
    split_file = os.path.join(base, "ImageSets", "Segmentation", split + ".txt")
    require_file(split_file, "PASCAL VOC split file", EXPECTED_TREE)
    with open(split_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    images = [os.path.join(base, "JPEGImages", i + ".jpg") for i in ids]
    labels = [os.path.join(base, "SegmentationClass", i + ".png") for i in ids]
    for path in (p for pair in zip(images, labels, strict=True) for p in pair):
        if not os.path.isfile(path):
            raise DataError(f"PASCAL VOC file listed in {split_file} not found: {path}")
    if not images:
        raise DataError(f"PASCAL VOC split file {split_file} lists no ids")
    return images, labels


class PascalVOC(SegmentationPairs):
    """PASCAL VOC 2012 ``split`` ("train", "val" or "trainval") under ``root``."""

    def __init__(self, root: str, split: str, num_classes: int, transform: SegmentationTransform) -> None:
        images, labels = list_pairs(root, split)
        warn_count("PASCAL VOC", split, len(images), OFFICIAL_COUNTS[split])
        if split == "trainval":
            warnings.warn(
                "PASCAL VOC: training on trainval, which contains every val image used for evaluation "
                "(the authors' setting); set DATASET.TRAIN_SPLIT train for a clean split",
                stacklevel=2,
            )
        super().__init__(images, labels, num_classes, transform)

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """0..20 kept; 255 -> ignore slot."""
        return np.where(raw == 255, self.ignore_index, raw).astype(np.uint8)
