"""A procedural demo data set, written to disk on first use, read by the real ADE20K and NYU loaders.

Nothing to download: `ensure_segmentation_demo` / `ensure_depth_demo` render the images deterministically from a
seed (same seed -> same bytes) in a few seconds, into a temporary folder renamed into place at the end, so an
interrupted generation is never taken for a complete one (a leftover ``.*.tmp-*`` folder can be deleted).

Layout under ``DATASET.DATA_PATH`` (``../dataset`` by default)::

    demo/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg     300 / 60 images, 128 x 128
    demo/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png
    demo/nyu_depth_v2/sync/scene_%03d/{rgb,sync_depth}_%05d.{jpg,png}                       200 train, 128 x 160
    demo/nyu_depth_v2/official_splits/test/scene_%03d/{rgb,sync_depth}_%05d.{jpg,png}       40 test
    demo/nyu_depth_v2/train_test_inputs/demo_{train,test}_files_with_gt.txt                 BTS lines, focal 100

Segmentation: textured shapes on a textured, low-saturation background. Raw labels follow ADE20K: 1 =
background, 2..6 = `SEGMENTATION_CLASSES[1:]` (each with its own hue and texture, so colour alone separates
them), and 0 ("other", ignored) on a small grey clutter patch in about a third of the images. Training ids are
raw - 1, so ``MODEL.NUM_CLASSES`` = `demo_num_classes()` = 7 (6 classes + the ignore slot).

Depth: a pinhole camera (focal 100 px, principal point at the centre) at height 1.0-1.6 m looking at a floor and
a frontal back wall at 5-9 m, with 1-3 frontal boxes standing on the floor at 1.2-5 m. Depth is the
true z in millimetres (uint16 png, NYU scale 1/1000); colours fade to a fog colour with distance; about a third of
the maps have a small hole of 0 (no ground truth). All depths lie in (1, 9.5) m: use ``MODEL.MAX_DEPTH 10``.
The images have no blank border, so the NYU border crop is skipped and the full 128 x 160 image is evaluated.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

DEMO_SEED = 0
DEMO_DIR = "demo"
SEGMENTATION_CLASSES = ("background", "disc", "square", "triangle", "stripes", "ring")
SEGMENTATION_SIZE = 128
SEGMENTATION_COUNTS = {"training": 300, "validation": 60}
DEPTH_HEIGHT, DEPTH_WIDTH = 128, 160
DEPTH_FOCAL = 100.0
DEPTH_COUNTS = {"train": 200, "test": 40}
DEPTH_IMAGES_PER_SCENE = 10

# Base RGB of each object class (index = raw label - 2) and the fog colour of the depth scenes.
_OBJECT_COLOURS = np.array([[210, 40, 40], [40, 180, 60], [50, 80, 220], [230, 210, 40], [200, 50, 200]], np.float32)
_FOG = np.array([200.0, 205.0, 215.0], np.float32)


def demo_num_classes() -> int:
    """``MODEL.NUM_CLASSES`` for the segmentation demo: its classes plus the ignore slot."""
    return len(SEGMENTATION_CLASSES) + 1


def demo_root(data_path: str) -> str:
    """The folder holding the demo trees: ``<data_path>/demo``."""
    return os.path.join(data_path, DEMO_DIR)


def _write_atomically(final_dir: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_dir)`` in a sibling temporary folder, then rename it to ``final_dir`` (kept if it exists)."""
    if os.path.isdir(final_dir):
        return
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    try:
        write(tmp)
        os.rename(tmp, final_dir)
    except OSError:
        if not os.path.isdir(final_dir):  # a concurrent process winning the rename is fine, anything else is not
            raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


# ---------------------------------------------------------------- segmentation


def _render_shape(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask and RGB texture ``[H, W, 3]`` of one object of class index ``cls`` (0 = disc ... 4 = ring)."""
    size = SEGMENTATION_SIZE
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    r = rng.uniform(12, 30)
    if cls == 0:  # disc with dots
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        pattern = ((yy % 6 - 3) ** 2 + (xx % 6 - 3) ** 2) < 4
    elif cls == 1:  # square with a checkerboard
        mask = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r * 0.8)
        pattern = ((yy // 4 + xx // 4) % 2) == 0
    elif cls == 2:  # upward triangle with a vertical gradient
        top, bottom = cy - r, cy + r
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= (yy - top) * 0.6)
        pattern = ((yy - top) / (2 * r)) > 0.5
    elif cls == 3:  # band of diagonal stripes
        mask = (np.abs(yy - cy) <= r * 0.5) & (np.abs(xx - cx) <= r * 1.3)
        pattern = ((yy + xx) // 4 % 2) == 0
    else:  # ring with horizontal lines
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        pattern = (yy // 3 % 2) == 0
    colour = _OBJECT_COLOURS[cls] * rng.uniform(0.8, 1.1)
    texture = colour[None, None] * np.where(pattern, 1.0, 0.65)[..., None]
    return mask, texture


def _render_segmentation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 128 x 128 image (uint8 RGB) and its raw ADE-style label (uint8, 1 = background)."""
    size = SEGMENTATION_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grey = rng.uniform(70, 170)
    tint = grey + rng.uniform(-15, 15, 3)
    direction = rng.uniform(-1, 1, 2)
    gradient = (direction[0] * yy + direction[1] * xx) / size * 30
    image = tint[None, None] + gradient[..., None] + rng.normal(0, 10, (size, size, 1))
    label = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(0, len(SEGMENTATION_CLASSES) - 1))
        mask, texture = _render_shape(rng, yy, xx, cls)
        image[mask] = texture[mask]
        label[mask] = cls + 2
    if rng.uniform() < 1 / 3:  # a little "other" clutter, ignored like ADE20K's 0
        y0, x0 = rng.integers(0, size - 12, 2)
        h, w = rng.integers(6, 12, 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(90, 140, (h, w, 1))
        label[y0 : y0 + h, x0 : x0 + w] = 0
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write_segmentation(tree: str, seed: int) -> None:
    for split_index, (folder, count) in enumerate(SEGMENTATION_COUNTS.items()):
        prefix = "ADE_train" if folder == "training" else "ADE_val"
        image_dir = os.path.join(tree, "images", folder)
        label_dir = os.path.join(tree, "annotations", folder)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        for i in range(count):
            image, label = _render_segmentation(np.random.default_rng((seed, 0, split_index, i)))
            name = f"{prefix}_{i + 1:08d}"
            Image.fromarray(image).save(os.path.join(image_dir, name + ".jpg"), quality=95)
            Image.fromarray(label, mode="L").save(os.path.join(label_dir, name + ".png"))


def ensure_segmentation_demo(data_path: str, seed: int = DEMO_SEED) -> str:
    """Write the segmentation demo under ``<data_path>/demo`` unless present; returns that root for `ADE20K`."""
    root = demo_root(data_path)
    _write_atomically(os.path.join(root, "ADEChallengeData2016"), lambda tmp: _write_segmentation(tmp, seed))
    return root


# ---------------------------------------------------------------- depth


def _render_depth(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 128 x 160 scene: uint8 RGB and uint16 depth in millimetres (0 = hole)."""
    h, w, f = DEPTH_HEIGHT, DEPTH_WIDTH, DEPTH_FOCAL
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wall_z = rng.uniform(5.0, 9.0)
    cam_height = rng.uniform(1.0, 1.6)
    below = np.maximum(yy - cy, 1e-3)
    floor_z = np.where(yy > cy, f * cam_height / below, np.inf)
    depth = np.minimum(floor_z, wall_z).astype(np.float32)
    on_floor = floor_z < wall_z

    # Floor: 0.5 m tiles in world coordinates; wall: a pastel colour with stripes every 0.4 m.
    world_x = (xx - cx) * depth / f
    tiles = ((np.floor(world_x / 0.5) + np.floor(depth / 0.5)) % 2)[..., None]
    floor_rgb = rng.uniform(60, 200, 3) * (0.75 + 0.25 * tiles)
    wall_rgb = rng.uniform(100, 230, 3) * (0.85 + 0.15 * ((np.floor(world_x / 0.4) % 2)[..., None]))
    albedo = np.where(on_floor[..., None], floor_rgb, wall_rgb)

    for z in sorted(rng.uniform(1.2, min(wall_z - 0.3, 5.0), rng.integers(1, 4)), reverse=True):
        bottom = cy + f * cam_height / z
        top = bottom - f * rng.uniform(0.4, 1.5) / z
        centre = rng.uniform(0, w)
        half = f * rng.uniform(0.15, 0.5) / z
        box = (yy >= top) & (yy <= bottom) & (np.abs(xx - centre) <= half)
        depth[box] = z
        colour = rng.uniform(30, 255, 3) * (0.8 + 0.2 * ((yy // 5 % 2)[..., None]))
        albedo = np.where(box[..., None], colour, albedo)

    fog = (depth / 10.0)[..., None]
    image = albedo * (1 - fog) + _FOG * fog + rng.normal(0, 4, (h, w, 3))
    depth_mm = np.round(depth * 1000).astype(np.uint16)
    if rng.uniform() < 1 / 3:
        y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        depth_mm[y0 : y0 + 8, x0 : x0 + 8] = 0
    return np.clip(image, 0, 255).astype(np.uint8), depth_mm


def _write_depth(tree: str, seed: int) -> None:
    lists = os.path.join(tree, "train_test_inputs")
    os.makedirs(lists)
    for split_index, (split, count) in enumerate(DEPTH_COUNTS.items()):
        split_root = os.path.join(tree, "sync" if split == "train" else os.path.join("official_splits", "test"))
        lines = []
        for i in range(count):
            scene = f"scene_{i // DEPTH_IMAGES_PER_SCENE:03d}"
            os.makedirs(os.path.join(split_root, scene), exist_ok=True)
            image, depth_mm = _render_depth(np.random.default_rng((seed, 1, split_index, i)))
            rgb, dep = f"/{scene}/rgb_{i:05d}.jpg", f"/{scene}/sync_depth_{i:05d}.png"
            Image.fromarray(image).save(split_root + rgb, quality=95)
            cv2.imwrite(split_root + dep, depth_mm)
            lines.append(f"{rgb} {dep} {DEPTH_FOCAL}\n")
        with open(os.path.join(lists, f"demo_{split}_files_with_gt.txt"), "w") as fh:
            fh.writelines(lines)


def ensure_depth_demo(data_path: str, seed: int = DEMO_SEED) -> dict[str, str]:
    """Write the depth demo under ``<data_path>/demo`` unless present.

    Returns the BTS paths, keyed like the config: ``DATA_PATH``, ``GT_PATH``, ``FILENAMES_FILE``,
    ``DATA_PATH_EVAL``, ``GT_PATH_EVAL``, ``FILENAMES_FILE_EVAL``.
    """
    tree = os.path.join(demo_root(data_path), "nyu_depth_v2")
    _write_atomically(tree, lambda tmp: _write_depth(tmp, seed))
    train_root = os.path.join(tree, "sync")
    test_root = os.path.join(tree, "official_splits", "test")
    lists = os.path.join(tree, "train_test_inputs")
    return {
        "DATA_PATH": train_root,
        "GT_PATH": train_root,
        "FILENAMES_FILE": os.path.join(lists, "demo_train_files_with_gt.txt"),
        "DATA_PATH_EVAL": test_root,
        "GT_PATH_EVAL": test_root,
        "FILENAMES_FILE_EVAL": os.path.join(lists, "demo_test_files_with_gt.txt"),
    }
