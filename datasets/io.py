"""File reading shared by the data sets: decoding with errors that name the file, tree checks, count warnings.

Every user-facing problem with the data on disk raises `DataError` with a one-line message naming the path at
fault (and, for a missing folder, the tree that was expected there). A data set with fewer files than the
official count only warns (`warn_count`), so a partial download still trains.
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DataError",
    "check_same_size",
    "read_depth_png",
    "read_label",
    "read_rgb",
    "require_dir",
    "require_file",
    "warn_count",
]


class DataError(ValueError):
    """A data set on disk does not match what the loader expects; the message is one line naming the path.

    Raised inside a DataLoader worker, torch re-raises it in the main process as ``DataError(text)`` where
    ``text`` holds the worker's traceback; the message is then cut back to the worker's one line, and the full
    text is kept in ``worker_traceback``.
    """

    def __init__(self, message: str) -> None:
        self.worker_traceback: str | None = None
        if "\nOriginal Traceback" in message:
            self.worker_traceback = message
            message = message.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


def require_dir(path: str, what: str, expected_tree: str) -> None:
    """Raise `DataError` unless ``path`` is a directory; ``expected_tree`` is a short layout description."""
    if not os.path.isdir(path):
        raise DataError(f"{what} not found: {path} (expected {expected_tree})")


def require_file(path: str, what: str, expected: str) -> None:
    """Raise `DataError` unless ``path`` is a file."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path} (expected {expected})")


# PIL modes whose conversion to RGB is defined by PIL: 8-bit grey (1, L, LA), palette (P, PA), colour (RGB, RGBA,
# RGBX, CMYK, YCbCr, HSV). Alpha is dropped (the stored colours are kept, as OpenCV's colour read does).
_CONVERTIBLE = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"})
# 16-bit grey modes (PIL opens 16-bit grey PNG/TIFF as these) and 32-bit integer grey holding 16-bit values.
_GREY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def read_rgb(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``.

    8-bit grey, palette, CMYK, YCbCr and HSV images are converted to RGB by PIL, alpha is dropped; 16-bit grey
    images (and 32-bit integer grey images with values in 0..65535) are scaled to 8 bits,
    ``round(v * 255 / 65535)``, and repeated over the three channels (PIL's own RGB conversion would clip them
    to 255, white). Any other mode (floating point, LAB, ...) and an unreadable file raise `DataError` naming
    the file.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in _GREY16:
                values = np.asarray(im)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise DataError(f"image {path} (PIL mode {mode}) holds values outside 0..65535 "
                                    f"({values.min()}..{values.max()}); expected 8- or 16-bit pixels")
                grey = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            if mode not in _CONVERTIBLE:
                raise DataError(f"image {path} has PIL mode {mode}, which has no defined conversion to RGB; save it "
                                f"as 8-bit RGB, 8- or 16-bit grey or palette")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot decode image {path}: {err}") from err


def read_label(path: str) -> np.ndarray:
    """Decode a label png to its raw uint8 values ``[H, W]`` (palette indices for palette pngs, as VOC stores).

    A file that cannot be decoded, or that is not a single-channel 8-bit png (PIL mode P or L), raises `DataError`.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            values = np.asarray(im).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode label {path}: {err}") from err
    if mode not in ("P", "L"):
        raise DataError(f"label {path} has PIL mode {mode}; expected a single-channel 8-bit png (P or L)")
    return values


def read_depth_png(path: str, scale: float) -> np.ndarray:
    """Decode a 16-bit depth png and divide by ``scale`` (NYU 1000, KITTI 256): float32 metres ``[H, W]``.

    0 stays 0 (no ground truth). Any other bit depth or channel count raises `DataError` naming the file.
    """
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"cannot decode depth map {path}")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        raise DataError(
            f"depth map {path} is {raw.dtype} with {channels} channel(s); expected a single-channel 16-bit png"
        )
    return raw.astype(np.float32) / np.float32(scale)


def check_same_size(image: np.ndarray, target: np.ndarray, image_path: str, target_path: str) -> None:
    """Raise `DataError` when a label/depth map and its image differ in height or width."""
    if image.shape[:2] != target.shape[:2]:
        raise DataError(
            f"{target_path} is {target.shape[1]}x{target.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )


def warn_count(name: str, split: str, found: int, expected: int | None) -> None:
    """Warn (not fail) when a split holds fewer samples than the official count; ``expected=None`` skips it."""
    if expected is not None and found < expected:
        warnings.warn(
            f"{name} {split}: found {found} samples, the official split has {expected}; "
            "results will not be comparable with the paper",
            stacklevel=2,
        )
