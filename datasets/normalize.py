"""ImageNet normalisation shared by both tasks, as released: x' = (x - mean) / std on RGB in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_normalized_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` RGB (uint8 in [0, 255] or float in [0, 1]) -> float32 ``[3, H, W]``, ImageNet-normalised."""
    x = image.astype(np.float32)
    if image.dtype == np.uint8:
        x /= 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
