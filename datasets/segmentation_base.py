"""A segmentation data set as a list of (image, label png) pairs plus a raw-label -> training-id mapping."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.io import DataError, check_same_size, read_label, read_rgb

SegmentationTransform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SegmentationPairs(Dataset):
    """Reads pair ``i``, maps its raw label with `map_label`, checks sizes and values, applies ``transform``.

    Subclasses list the pairs and define `map_label` (raw uint8 label -> uint8 training ids in
    ``[0, num_classes - 1]``, where ``num_classes - 1`` is the ignore slot). Items are
    ``(image float32 [3, S, S], mask int64 [S, S])``.
    """

    def __init__(
        self, images: list[str], labels: list[str], num_classes: int, transform: SegmentationTransform
    ) -> None:
        if not 2 <= num_classes <= 256:
            raise DataError(f"MODEL.NUM_CLASSES must be in [2, 256] for 8-bit label pngs, got {num_classes}")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.ignore_index = num_classes - 1
        self.transform = transform

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values -> training ids (uint8), the ignore slot being ``num_classes - 1``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.images[index], self.labels[index]
        image = read_rgb(image_path)
        raw = read_label(label_path)
        check_same_size(image, raw, image_path, label_path)
        mask = self.map_label(raw)
        top = int(mask.max())
        if top > self.ignore_index:
            raise DataError(
                f"label {label_path} holds value {top} after mapping, above the ignore slot {self.ignore_index} "
                f"(MODEL.NUM_CLASSES {self.num_classes} too small for this data set?)"
            )
        return self.transform(image, mask)
