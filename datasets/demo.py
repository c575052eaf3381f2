"""A procedural demo data set, written to disk on first use, read by the real ADE20K and NYU loaders.

Nothing to download: `ensure_segmentation_demo` / `ensure_depth_demo` render the images deterministically from a
seed (same seed -> same bytes) in a few seconds, into a temporary folder renamed into place at the end, so an
interrupted generation is never taken for a complete one (a leftover ``.*.tmp-*`` folder can be deleted). Each
tree holds a ``demo_stamp.txt`` naming the generator version and seed; a tree with another stamp is rewritten.

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
DEMO_VERSION = 1  # bump when the rendering changes: trees stamped with another version are rewritten
STAMP_FILE = "demo_stamp.txt"
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


def _stamp(seed: int) -> str:
    return f"BiDense demo generator version {DEMO_VERSION}, seed {seed}\n"


def _write_atomically(final_dir: str, write: Callable[[str], None], seed: int) -> None:
    """Run ``write(tmp_dir)`` in a sibling temporary folder, then rename it to ``final_dir``.

    A ``final_dir`` stamped with this generator version and seed is kept; one with another stamp (an older
    generator, another seed) is moved aside, deleted and written again.
    """
    stamp_path = os.path.join(final_dir, STAMP_FILE)
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if f.read() == _stamp(seed):
                return
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(final_dir):
        stale = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.stale-", dir=parent)
        os.rename(final_dir, os.path.join(stale, "tree"))
        shutil.rmtree(stale)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    try:
        write(tmp)
        with open(os.path.join(tmp, STAMP_FILE), "w") as f:
            f.write(_stamp(seed))
        os.rename(tmp, final_dir)
    except OSError:
        if not os.path.isdir(final_dir):  # a concurrent process winning the rename is fine, anything else is not
            raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


# ---------------------------------------------------------------- segmentation


_YY, _XX = np.mgrid[0:SEGMENTATION_SIZE, 0:SEGMENTATION_SIZE].astype(np.float32)
_IY, _IX = _YY.astype(np.int32), _XX.astype(np.int32)
# Texture of each object class on the whole canvas (True = full colour, False = 65 %); the triangle's is its own.
_PATTERNS = (
    ((_IY % 6 - 3) ** 2 + (_IX % 6 - 3) ** 2) < 4,  # disc: dots
    ((_IY // 4 + _IX // 4) % 2) == 0,  # square: checkerboard
    None,  # triangle: a two-tone vertical gradient
    ((_IY + _IX) // 4 % 2) == 0,  # stripes: diagonal
    (_IY // 3 % 2) == 0,  # ring: horizontal lines
)


def _render_shape(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask and pattern (bool ``[H, W]``) of one object of class index ``cls`` (0 = disc ... 4 = ring)."""
    size = SEGMENTATION_SIZE
    cy, cx = (float(v) for v in rng.uniform(0.15, 0.85, 2) * size)
    r = float(rng.uniform(12, 30))
    dy, dx = _YY - cy, _XX - cx
    if cls == 0:
        mask = dy**2 + dx**2 <= r**2
    elif cls == 1:
        mask = (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    elif cls == 2:
        mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.6)
        return mask, dy > 0
    elif cls == 3:
        mask = (np.abs(dy) <= r * 0.5) & (np.abs(dx) <= r * 1.3)
    else:
        d2 = dy**2 + dx**2
        mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    return mask, _PATTERNS[cls]


def _render_segmentation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 128 x 128 image (uint8 RGB) and its raw ADE-style label (uint8, 1 = background)."""
    size = SEGMENTATION_SIZE
    tint = (rng.uniform(70, 170) + rng.uniform(-15, 15, 3)).astype(np.float32)
    direction = rng.uniform(-1, 1, 2) * 30 / size
    gradient = float(direction[0]) * _YY + float(direction[1]) * _XX
    noise = rng.standard_normal((size, size, 1), dtype=np.float32) * 10
    image = tint + gradient[..., None] + noise
    label = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(0, len(SEGMENTATION_CLASSES) - 1))
        mask, pattern = _render_shape(rng, cls)
        colour = _OBJECT_COLOURS[cls] * np.float32(rng.uniform(0.8, 1.1))
        image[mask] = colour * np.where(pattern[mask], 1.0, 0.65).astype(np.float32)[:, None]
        label[mask] = cls + 2
    if rng.uniform() < 1 / 3:  # a little "other" clutter, ignored like ADE20K's 0
        y0, x0 = rng.integers(0, size - 12, 2)
        h, w = rng.integers(6, 12, 2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(90, 140, (h, w, 1))
        label[y0 : y0 + h, x0 : x0 + w] = 0
    image += rng.standard_normal(image.shape, dtype=np.float32) * 6
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
    _write_atomically(os.path.join(root, "ADEChallengeData2016"), lambda tmp: _write_segmentation(tmp, seed), seed)
    return root


# ---------------------------------------------------------------- depth


_DY, _DX = np.mgrid[0:DEPTH_HEIGHT, 0:DEPTH_WIDTH].astype(np.float32)


def _render_depth(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 128 x 160 scene: uint8 RGB and uint16 depth in millimetres (0 = hole)."""
    h, w, f = DEPTH_HEIGHT, DEPTH_WIDTH, DEPTH_FOCAL
    cy, cx = (h - 1) / 2, (w - 1) / 2
    wall_z = float(rng.uniform(5.0, 9.0))
    cam_height = float(rng.uniform(1.0, 1.6))
    floor_z = np.where(_DY > cy, f * cam_height / np.maximum(_DY - cy, 1e-3), np.inf)
    depth = np.minimum(floor_z, wall_z).astype(np.float32)
    on_floor = floor_z < wall_z

    # Floor: 0.5 m tiles in world coordinates; wall: a pastel colour with stripes every 0.4 m.
    world_x = (_DX - cx) * depth / f
    tiles = (np.floor(world_x / 0.5) + np.floor(depth / 0.5)) % 2
    floor_rgb = rng.uniform(60, 200, 3).astype(np.float32)
    wall_rgb = rng.uniform(100, 230, 3).astype(np.float32)
    albedo = wall_rgb * (0.85 + 0.15 * (np.floor(world_x / 0.4) % 2))[..., None]
    albedo[on_floor] = floor_rgb * (0.75 + 0.25 * tiles[on_floor])[:, None]

    for z in sorted(rng.uniform(1.2, min(wall_z - 0.3, 5.0), rng.integers(1, 4)), reverse=True):
        z = float(z)
        bottom = cy + f * cam_height / z
        top = bottom - f * float(rng.uniform(0.4, 1.5)) / z
        centre = float(rng.uniform(0, w))
        half = f * float(rng.uniform(0.15, 0.5)) / z
        box = (_DY >= top) & (_DY <= bottom) & (np.abs(_DX - centre) <= half)
        depth[box] = z
        colour = rng.uniform(30, 255, 3).astype(np.float32)
        albedo[box] = colour * (0.8 + 0.2 * (_DY[box] // 5 % 2))[:, None]

    fog = (depth / 10.0)[..., None]
    image = albedo * (1 - fog) + _FOG * fog + rng.standard_normal((h, w, 3), dtype=np.float32) * 4
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
    _write_atomically(tree, lambda tmp: _write_depth(tmp, seed), seed)
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
