"""ADE20K (SceneParsing ADEChallengeData2016), as released: 150 classes, label - 1, raw 0 ("other") ignored.

Expected tree (``root`` = ``DATASET.DATA_PATH``, ``../dataset`` by default as in the authors' configs)::

    root/ADEChallengeData2016/images/training/*.jpg        (20,210)
    root/ADEChallengeData2016/images/validation/*.jpg      (2,000)
    root/ADEChallengeData2016/annotations/training/*.png   (same stem as the image)
    root/ADEChallengeData2016/annotations/validation/*.png

Labels: raw value v in 1..150 -> class v - 1; raw 0 -> the ignore slot ``NUM_CLASSES - 1`` (= 150, with
``NUM_CLASSES: 151`` as the authors). Fewer images than the official counts only warn.
"""

from __future__ import annotations

import os

import numpy as np

from datasets.io import DataError, require_dir, warn_count
from datasets.segmentation_base import SegmentationPairs, SegmentationTransform

BASE_DIR = "ADEChallengeData2016"
SPLIT_DIRS = {"train": "training", "val": "validation"}
OFFICIAL_COUNTS = {"train": 20210, "val": 2000}
NUM_CLASSES = 151  # 150 classes + the ignore slot
EXPECTED_TREE = (
    f"{BASE_DIR}/images/{{training,validation}}/*.jpg and {BASE_DIR}/annotations/{{training,validation}}/*.png"
)


def list_pairs(root: str, split: str) -> tuple[list[str], list[str]]:
    """Sorted image paths of ``split`` ("train" or "val") under ``root`` and the label png of each."""
    if split not in SPLIT_DIRS:
        raise DataError(f"unknown ADE20K split {split!r}; valid: {', '.join(SPLIT_DIRS)}")
    base = os.path.join(root, BASE_DIR)
    require_dir(root, "data root (DATASET.DATA_PATH)", f"a folder holding {BASE_DIR}/")
    require_dir(base, "ADE20K folder", EXPECTED_TREE)
    image_dir = os.path.join(base, "images", SPLIT_DIRS[split])
    label_dir = os.path.join(base, "annotations", SPLIT_DIRS[split])
    require_dir(image_dir, f"ADE20K {split} image folder", EXPECTED_TREE)
    require_dir(label_dir, f"ADE20K {split} annotation folder", EXPECTED_TREE)
    images, labels = [], []
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() != ".jpg":
            continue
        label = os.path.join(label_dir, stem + ".png")
        if not os.path.isfile(label):
            raise DataError(f"ADE20K label not found: {label} (for image {os.path.join(image_dir, name)})")
        images.append(os.path.join(image_dir, name))
        labels.append(label)
    if not images:
        raise DataError(f"no .jpg images in {image_dir} (expected {EXPECTED_TREE})")
    return images, labels


class ADE20K(SegmentationPairs):
    """ADE20K ``split`` under ``root``; ``official_counts=False`` (the demo set) silences the count warning."""

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        transform: SegmentationTransform,
        official_counts: bool = True,
    ) -> None:
        images, labels = list_pairs(root, split)
        warn_count("ADE20K", split, len(images), OFFICIAL_COUNTS[split] if official_counts else None)
        super().__init__(images, labels, num_classes, transform)

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """v -> v - 1 for v >= 1; 0 -> ignore slot."""
        return np.where(raw == 0, self.ignore_index, raw.astype(np.int16) - 1).astype(np.uint8)
