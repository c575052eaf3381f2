"""The BTS depth pipeline, as the authors' `DataLoadPreprocess` applies it.

Inputs: an RGB uint8 image ``[H, W, 3]`` and a float32 depth map ``[H, W]`` in metres (0 = no ground truth).
Outputs: ``(image float32 [3, h, w] ImageNet-normalised, depth float32 [1, h, w])``.

Train (`DepthTrainTransform`), in this order:
  1. KB crop (KITTI, ``DO_KB_CROP``): the bottom-centred 352 x 1216 window, top = H - 352, left = int((W - 1216) / 2);
  2. border crop (NYU): rows 45:472, cols 43:608 (PIL box (43, 45, 608, 472)), removing the blank registration border;
  3. random rotation (``DO_RANDOM_ROTATE``) by angle ~ U(-DEGREE, DEGREE) degrees about the centre, counter-clockwise,
     zero fill: bilinear for the image, nearest for depth (2.5 NYU, 1.0 KITTI);
  4. random ``INPUT_HEIGHT x INPUT_WIDTH`` crop (416 x 544 NYU, 352 x 704 KITTI);
  5. horizontal flip with p = 0.5;
  6. with p = 0.5 colour augmentation on RGB in [0, 1]: x^gamma, gamma ~ U(0.9, 1.1); times brightness
     ~ U(0.75, 1.25) (NYU) or U(0.9, 1.1) (KITTI); times a per-channel colour ~ U(0.9, 1.1)^3; clip to [0, 1];
  7. ImageNet normalisation.
Eval (`DepthEvalTransform`): the full image (NYU 480 x 640), KB-cropped to 352 x 1216 when ``DO_KB_CROP`` (KITTI).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from datasets import rng
from datasets.io import DataError
from datasets.normalize import to_normalized_tensor

KB_CROP_HEIGHT, KB_CROP_WIDTH = 352, 1216
NYU_BORDER_BOX = (43, 45, 608, 472)  # (left, top, right, bottom), the authors' PIL crop box
BRIGHTNESS_RANGE = {"nyu": (0.75, 1.25), "kitti": (0.9, 1.1)}


def kb_crop(array: np.ndarray) -> np.ndarray:
    """The bottom-centred 352 x 1216 KITTI benchmark crop of an ``[H, W, ...]`` array."""
    h, w = array.shape[:2]
    if h < KB_CROP_HEIGHT or w < KB_CROP_WIDTH:
        raise DataError(f"KB crop needs at least {KB_CROP_HEIGHT}x{KB_CROP_WIDTH} (HxW), got {h}x{w}")
    top, left = h - KB_CROP_HEIGHT, int((w - KB_CROP_WIDTH) / 2)
    return array[top : top + KB_CROP_HEIGHT, left : left + KB_CROP_WIDTH]


def border_crop(array: np.ndarray, box: tuple[int, int, int, int] = NYU_BORDER_BOX) -> np.ndarray:
    """Crop an ``[H, W, ...]`` array to the PIL-style box ``(left, top, right, bottom)``."""
    left, top, right, bottom = box
    h, w = array.shape[:2]
    if h < bottom or w < right:
        raise DataError(f"border crop box {box} needs at least {bottom}x{right} (HxW), got {h}x{w}")
    return array[top:bottom, left:right]


def rotate(array: np.ndarray, angle: float, interpolation: int) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees about the image centre, same size, zero fill (as PIL rotate)."""
    h, w = array.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(array, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _to_tensors(image: np.ndarray, depth: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return to_normalized_tensor(image), torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)[None])


class DepthTrainTransform:
    """The BTS train augmentation (see module); ``dataset`` ("nyu" or "kitti") picks the brightness range.

    Args:
        input_height, input_width: the random crop (``DATASET.INPUT_HEIGHT/INPUT_WIDTH``).
        dataset: "nyu" or "kitti".
        border_box: the NYU border crop box, or None to skip it (KITTI, and the demo set which has no border).
        do_kb_crop: apply the KB crop first (``PREPROCESSING.DO_KB_CROP``).
        rotate_degree: max rotation in degrees (``PREPROCESSING.DEGREE``), or None for no rotation.
    """

    def __init__(
        self,
        input_height: int,
        input_width: int,
        dataset: str,
        border_box: tuple[int, int, int, int] | None,
        do_kb_crop: bool,
        rotate_degree: float | None,
    ) -> None:
        if dataset not in BRIGHTNESS_RANGE:
            valid = ", ".join(BRIGHTNESS_RANGE)
            raise DataError(f"unknown depth data set {dataset!r} for augmentation; valid: {valid}")
        self.input_height = input_height
        self.input_width = input_width
        self.brightness = BRIGHTNESS_RANGE[dataset]
        self.border_box = border_box
        self.do_kb_crop = do_kb_crop
        self.rotate_degree = rotate_degree

    def __call__(
        self, image: np.ndarray, depth: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.do_kb_crop:
            image, depth = kb_crop(image), kb_crop(depth)
        if self.border_box is not None:
            image, depth = border_crop(image, self.border_box), border_crop(depth, self.border_box)
        if self.rotate_degree is not None:
            angle = rng.uniform(-self.rotate_degree, self.rotate_degree, generator)
            image = rotate(image, angle, cv2.INTER_LINEAR)
            depth = rotate(depth, angle, cv2.INTER_NEAREST)

        h, w = depth.shape
        ch, cw = self.input_height, self.input_width
        if h < ch or w < cw:
            raise DataError(f"image of {h}x{w} (HxW) after crops is smaller than INPUT_HEIGHT x INPUT_WIDTH {ch}x{cw}")
        x = rng.randint(0, w - cw, generator)
        y = rng.randint(0, h - ch, generator)
        image = image[y : y + ch, x : x + cw].astype(np.float32) / 255.0
        depth = depth[y : y + ch, x : x + cw]

        if rng.coin(0.5, generator):
            image, depth = image[:, ::-1], depth[:, ::-1]
        if rng.coin(0.5, generator):
            image = self.augment_colour(image, generator)
        return _to_tensors(image, depth)

    def augment_colour(self, image: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """Gamma, brightness and per-channel colour on RGB in [0, 1], then clip (step 6 of the module)."""
        gamma = rng.uniform(0.9, 1.1, generator)
        brightness = rng.uniform(*self.brightness, generator)
        colours = np.asarray([rng.uniform(0.9, 1.1, generator) for _ in range(3)], dtype=np.float32)
        out = np.power(image, np.float32(gamma)) * np.float32(brightness) * colours
        return np.clip(out, 0.0, 1.0)


class DepthEvalTransform:
    """Evaluation input: the full image, KB-cropped when ``do_kb_crop`` (see module)."""

    def __init__(self, do_kb_crop: bool) -> None:
        self.do_kb_crop = do_kb_crop

    def __call__(self, image: np.ndarray, depth: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.do_kb_crop:
            image, depth = kb_crop(image), kb_crop(depth)
        return _to_tensors(image, depth)
