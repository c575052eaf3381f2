"""BTS depth transforms: crops, rotation alignment, flip, colour augmentation ranges, eval input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.depth_transforms import DepthEvalTransform, DepthTrainTransform, kb_crop
from datasets.io import DataError
from datasets.normalize import IMAGENET_MEAN, IMAGENET_STD


def _unnormalize(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean).permute(1, 2, 0).numpy()


def _position_scene(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth encodes the source pixel (1000 y + x); the image is a 0/255 checkerboard of 10x12 blocks."""
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (1000 * yy + xx).astype(np.float32)
    image = np.repeat((((yy // 10 + xx // 12) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    return image, depth


def _checker(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (y // 10 + x // 12) % 2


def test_kb_crop_is_bottom_centred():
    yy, xx = np.mgrid[0:375, 0:1242]
    out = kb_crop(1000 * yy + xx)
    assert out.shape == (352, 1216)
    assert out[0, 0] == 1000 * 23 + 13 and out[-1, -1] == 1000 * 374 + 1228


def test_nyu_border_and_random_crop_stay_inside_the_box_and_aligned():
    image, depth = _position_scene(480, 640)
    tf = DepthTrainTransform(416, 544, "nyu", (43, 45, 608, 472), do_kb_crop=False, rotate_degree=None)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        out_image, out_depth = tf(image, depth, g)
        assert out_image.shape == (3, 416, 544) and out_depth.shape == (1, 416, 544)
        code = out_depth[0].numpy().astype(np.int64)
        y, x = code // 1000, code % 1000
        assert y.min() >= 45 and y.max() <= 471 and x.min() >= 43 and x.max() <= 607
        assert y.max() - y.min() == 415 and x.max() - x.min() == 543
        # Colour augmentation keeps 0 at 0 and 1 above 0.6: the checkerboard survives.
        bright = _unnormalize(out_image).mean(-1) > 0.3
        np.testing.assert_array_equal(bright, _checker(y, x) == 1)


def test_rotation_moves_image_and_depth_together():
    image, depth = _position_scene(120, 160)
    tf = DepthTrainTransform(100, 140, "kitti", None, do_kb_crop=False, rotate_degree=5.0)
    g = torch.Generator().manual_seed(1)
    rotated = 0
    for _ in range(5):
        out_image, out_depth = tf(image, depth, g)
        code = out_depth[0].numpy().astype(np.int64)
        valid = code > 0  # the zero fill of the rotation
        y, x = code // 1000, code % 1000
        rotated += int(np.any(np.diff(y[valid.all(1)], axis=1) != 0))
        bright = _unnormalize(out_image).mean(-1) > 0.3
        assert (bright[valid] == (_checker(y, x)[valid] == 1)).mean() > 0.95
    assert rotated > 0


def test_flip_and_colour_happen_about_half_the_time():
    image = np.full((8, 8, 3), 128, np.uint8)
    image[:, :4] = 0
    depth = np.zeros((8, 8), np.float32)
    tf = DepthTrainTransform(8, 8, "nyu", None, do_kb_crop=False, rotate_degree=None)
    g = torch.Generator().manual_seed(0)
    flips = colours = 0
    for _ in range(400):
        out = _unnormalize(tf(image, depth, g)[0])
        flips += int(out[0, 0, 0] > 0.1)
        colours += int(abs(out[0, -1, 0] - 128 / 255) > 1e-4 and abs(out[0, 0, 0] - 128 / 255) > 1e-4)
    assert 160 < flips < 240 and 160 < colours < 240


@pytest.mark.parametrize("dataset, brightness", [("nyu", (0.75, 1.25)), ("kitti", (0.9, 1.1))])
def test_colour_augmentation_ranges(dataset, brightness):
    """x -> clip(x^gamma * brightness * colour_c): recover gamma and the gain from two input levels."""
    tf = DepthTrainTransform(4, 4, dataset, None, do_kb_crop=False, rotate_degree=None)
    x1, x2 = 0.1, 0.4
    image = np.full((2, 2, 3), x1, np.float32)
    image[1] = x2
    g = torch.Generator().manual_seed(0)
    gains = []
    for _ in range(200):
        out = tf.augment_colour(image, g)
        gamma = np.log(out[1, 0] / out[0, 0]) / np.log(x2 / x1)
        assert np.allclose(gamma, gamma[0], atol=1e-4)  # one gamma for all channels
        assert 0.9 - 1e-4 <= gamma[0] <= 1.1 + 1e-4
        gains.append(out[0, 0] / x1 ** gamma[0])
    gains = np.array(gains)
    assert gains.min() >= brightness[0] * 0.9 - 1e-4 and gains.max() <= brightness[1] * 1.1 + 1e-4
    assert gains.min() < brightness[0] * 1.0 and gains.max() > brightness[1] * 1.0  # the range is used


def test_eval_keeps_full_image_or_kb_crop():
    image = np.zeros((375, 1242, 3), np.uint8)
    depth = np.ones((375, 1242), np.float32)
    assert DepthEvalTransform(False)(image, depth)[0].shape == (3, 375, 1242)
    out_image, out_depth = DepthEvalTransform(True)(image, depth)
    assert out_image.shape == (3, 352, 1216) and out_depth.shape == (1, 352, 1216)


def test_crop_larger_than_image_is_an_error():
    tf = DepthTrainTransform(200, 200, "nyu", None, do_kb_crop=False, rotate_degree=None)
    with pytest.raises(DataError, match="smaller than INPUT_HEIGHT x INPUT_WIDTH 200x200"):
        tf(np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.float32))
