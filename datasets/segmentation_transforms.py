"""The segmentation pipeline of DANet / PyTorch-Encoding `BaseDataset`, as released.

Inputs are an RGB uint8 image ``[H, W, 3]`` and a mask ``[H, W]`` of uint8 *training ids* (the data set has
already mapped its raw labels; the ignore slot is ``ignore_index = NUM_CLASSES - 1``). Outputs are
``(image float32 [3, S, S] ImageNet-normalised, mask int64 [S, S])`` with ``S = crop_size``.

Train (`SegmentationTrainTransform`):
  1. horizontal flip with p = 0.5;
  2. rescale so the long side is L ~ U{int(0.5 B), ..., int(2.0 B)} (B = BASE_SIZE), the short side
     ``int(short * L / long + 0.5)``; bilinear for the image, nearest for the mask (PIL, as the authors);
  3. pad bottom/right to at least S: image with 0, mask with ``pad_label``, the training id of a raw 0 label, as
     the authors pad the raw mask with 0: ADE20K's ``label - 1`` turns it into the ignore slot (the default), but
     for PASCAL VOC it is class 0, *background* (README, "Deviations from the released code");
  4. a random S x S crop.
Val (`SegmentationValTransform`): resize so the short side is S (the long side ``int(long * S / short)``), then the
centre S x S crop (offset ``round((size - S) / 2)``). No sliding window, no flip or multi-scale test.

Random numbers come from `datasets.rng` (torch's generator), so Lightning's worker seeding makes them
reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from datasets import rng
from datasets.normalize import to_normalized_tensor


def _resize(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image, nearest mask, to ``width x height``."""
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return image, mask


def _to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return to_normalized_tensor(image), torch.from_numpy(mask.astype(np.int64))


class SegmentationTrainTransform:
    """Random flip, long-side rescale in [0.5, 2.0] x ``base_size``, pad, random ``crop_size`` crop (see module)."""

    def __init__(self, base_size: int, crop_size: int, ignore_index: int, pad_label: int | None = None) -> None:
        self.base_size = base_size
        self.crop_size = crop_size
        self.ignore_index = ignore_index
        self.pad_label = ignore_index if pad_label is None else pad_label

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rng.coin(0.5, generator):
            image, mask = image[:, ::-1], mask[:, ::-1]
        image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)

        h, w = mask.shape
        long_size = rng.randint(int(self.base_size * 0.5), int(self.base_size * 2.0), generator)
        if h > w:
            oh, ow = long_size, int(w * long_size / h + 0.5)
        else:
            ow, oh = long_size, int(h * long_size / w + 0.5)
        image, mask = _resize(image, mask, ow, oh)

        s = self.crop_size
        pad_h, pad_w = max(s - oh, 0), max(s - ow, 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.pad_label)

        h, w = mask.shape
        x1 = rng.randint(0, w - s, generator)
        y1 = rng.randint(0, h - s, generator)
        return _to_tensors(image[y1 : y1 + s, x1 : x1 + s], mask[y1 : y1 + s, x1 : x1 + s])


class SegmentationValTransform:
    """Short side to ``crop_size``, then the centre ``crop_size`` square (see module)."""

    def __init__(self, crop_size: int) -> None:
        self.crop_size = crop_size

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.crop_size
        h, w = mask.shape
        if w > h:
            oh, ow = s, int(w * s / h)
        else:
            ow, oh = s, int(h * s / w)
        image, mask = _resize(image, mask, ow, oh)
        x1 = int(round((ow - s) / 2.0))
        y1 = int(round((oh - s) / 2.0))
        return _to_tensors(image[y1 : y1 + s, x1 : x1 + s], mask[y1 : y1 + s, x1 : x1 + s])
