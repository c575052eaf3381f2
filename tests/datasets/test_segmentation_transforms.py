"""DANet segmentation transforms: shapes, padding to ignore, image/mask alignment, val resize + centre crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.normalize import IMAGENET_MEAN, IMAGENET_STD
from datasets.segmentation_transforms import SegmentationTrainTransform, SegmentationValTransform

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _unnormalize(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _blocks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image whose colour says the class of each 8x8 block, and that class mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // 8) + 2 * (xx // 8)) % 4
    return PALETTE[mask], mask.astype(np.uint8)


@pytest.mark.parametrize("h, w", [(40, 90), (90, 40), (10, 12), (64, 64)])
def test_train_output_shapes(h, w):
    image, mask = _blocks(h, w)
    tf = SegmentationTrainTransform(64, 48, ignore_index=9)
    out_image, out_mask = tf(image, mask, torch.Generator().manual_seed(1))
    assert out_image.shape == (3, 48, 48) and out_image.dtype == torch.float32
    assert out_mask.shape == (48, 48) and out_mask.dtype == torch.int64


def test_train_mask_follows_the_image_colour():
    image, mask = _blocks(60, 80)
    tf = SegmentationTrainTransform(base_size=80, crop_size=48, ignore_index=9)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out_image, out_mask = tf(image, mask, g)
        rgb, m = _unnormalize(out_image), out_mask.numpy()
        valid = m != 9
        nearest = np.argmin(((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1), axis=-1)
        # Bilinear colour vs nearest label may differ only along block edges.
        assert (nearest[valid] == m[valid]).mean() > 0.9


def test_padding_is_zero_image_and_ignore_mask():
    image = np.full((20, 30, 3), 120, np.uint8)
    mask = np.ones((20, 30), np.uint8)
    # Long side <= 2 * 16 = 32 < crop 64: every draw pads.
    tf = SegmentationTrainTransform(base_size=16, crop_size=64, ignore_index=5)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        out_image, out_mask = tf(image, mask, g)
        padded_pixels = np.all(np.abs(_unnormalize(out_image)) < 1e-3, axis=-1)
        assert padded_pixels.any()
        np.testing.assert_array_equal(padded_pixels, out_mask.numpy() == 5)
        assert set(out_mask.unique().tolist()) == {1, 5}


def test_rescale_long_side_range():
    # Crop = padded size: the valid (non-ignore) area is exactly the rescaled image, long side in [0.5, 2.0] x base.
    image = np.full((50, 100, 3), 100, np.uint8)
    mask = np.zeros((50, 100), np.uint8)
    tf = SegmentationTrainTransform(base_size=20, crop_size=40, ignore_index=3)
    g = torch.Generator().manual_seed(0)
    widths = set()
    for _ in range(200):
        _, out_mask = tf(image, mask, g)
        valid_cols = (out_mask.numpy() == 0).any(axis=0)
        valid_rows = (out_mask.numpy() == 0).any(axis=1)
        w, h = int(valid_cols.sum()), int(valid_rows.sum())
        assert h == int(w * 50 / 100 + 0.5)
        widths.add(w)
    assert min(widths) == 10 and max(widths) == 40  # long side drawn from {10, ..., 40}


def test_train_is_reproducible_from_the_generator():
    image, mask = _blocks(60, 80)
    tf = SegmentationTrainTransform(80, 48, ignore_index=9)
    a = tf(image, mask, torch.Generator().manual_seed(7))
    b = tf(image, mask, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_val_short_side_resize_and_centre_crop():
    h, w = 40, 20
    mask = (np.arange(h)[:, None] // 4 * np.ones((1, w), int)).astype(np.uint8)  # 10 horizontal bands
    image = np.zeros((h, w, 3), np.uint8)
    out_image, out_mask = SegmentationValTransform(10)(image, mask)
    assert out_image.shape == (3, 10, 10) and out_mask.shape == (10, 10)
    # Width 20 -> 10, height 40 -> 20 (scale 1/2); nearest output row i samples source row 2i + 1; crop rows 5..14.
    expected_rows = np.array([(2 * i + 1) // 4 for i in range(5, 15)])
    np.testing.assert_array_equal(out_mask.numpy(), np.repeat(expected_rows[:, None], 10, axis=1))


def test_padding_with_a_pad_label_as_the_authors_raw_zero():
    # PASCAL VOC: the authors pad the raw mask with 0, which is class 0 (background), not the ignore slot.
    image = np.full((20, 30, 3), 120, np.uint8)
    mask = np.full((20, 30), 3, np.uint8)
    tf = SegmentationTrainTransform(base_size=16, crop_size=64, ignore_index=5, pad_label=0)
    out_image, out_mask = tf(image, mask, torch.Generator().manual_seed(3))
    padded_pixels = np.all(np.abs(_unnormalize(out_image)) < 1e-3, axis=-1)
    assert padded_pixels.any()
    np.testing.assert_array_equal(padded_pixels, out_mask.numpy() == 0)
    assert set(out_mask.unique().tolist()) == {0, 3}
