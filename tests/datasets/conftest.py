"""Fixture trees in the real on-disk layouts, a tiny config builder and a once-per-session demo set."""

from __future__ import annotations

import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image
from yacs.config import CfgNode

from datasets.demo import ensure_depth_demo, ensure_segmentation_demo


def save_rgb(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, quality=95)


def save_label(path, array: np.ndarray, palette: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def save_depth(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.fixture
def helpers():
    """The writers above, for tests that build their own trees."""
    return SimpleNamespace(save_rgb=save_rgb, save_label=save_label, save_depth=save_depth, random_image=random_image)


@pytest.fixture
def ade_tree(tmp_path):
    """DATA_PATH with ADEChallengeData2016: 2 train and 2 val 12x16 images; raw labels 0, 1, 37, 150 in columns."""
    base = tmp_path / "ADEChallengeData2016"
    raw = np.zeros((12, 16), np.uint8)
    raw[:, 4:8], raw[:, 8:12], raw[:, 12:] = 1, 37, 150
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in range(2):
            save_rgb(str(base / "images" / folder / f"{prefix}_{i:08d}.jpg"), random_image(12, 16, i))
            save_label(str(base / "annotations" / folder / f"{prefix}_{i:08d}.png"), raw)
    return SimpleNamespace(root=str(tmp_path), base=base, raw=raw)


@pytest.fixture
def voc_tree(tmp_path):
    """DATA_PATH with VOCdevkit/VOC2012: ids a, b (train), c (val); palette labels 0, 5, 20 and 255."""
    base = tmp_path / "VOCdevkit" / "VOC2012"
    raw = np.zeros((12, 16), np.uint8)
    raw[:, 4:8], raw[:, 8:12], raw[:, 12:] = 5, 20, 255
    for i, name in enumerate("abc"):
        save_rgb(str(base / "JPEGImages" / f"{name}.jpg"), random_image(12, 16, i))
        save_label(str(base / "SegmentationClass" / f"{name}.png"), raw, palette=True)
    splits = base / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("a\nb\n")
    (splits / "val.txt").write_text("c\n")
    (splits / "trainval.txt").write_text("a\nb\nc\n")
    return SimpleNamespace(root=str(tmp_path), base=base, raw=raw)


@pytest.fixture
def nyu_tree(tmp_path):
    """BTS NYU layout: two 480x640 test pairs under official_splits/test, lines with a leading '/'."""
    root = tmp_path / "nyu_depth_v2" / "official_splits" / "test"
    depths = []
    lines = []
    for i in range(2):
        depth = np.random.default_rng(10 + i).integers(0, 10000, (480, 640)).astype(np.uint16)
        depth[0, 0] = 0
        save_rgb(str(root / "bathroom" / f"rgb_{i:05d}.jpg"), random_image(480, 640, i))
        save_depth(str(root / "bathroom" / f"sync_depth_{i:05d}.png"), depth)
        depths.append(depth)
        lines.append(f"/bathroom/rgb_{i:05d}.jpg /bathroom/sync_depth_{i:05d}.png 518.8579\n")
    listing = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    listing.write_text("".join(lines))
    return SimpleNamespace(root=str(root), listing=str(listing), depths=depths)


@pytest.fixture
def kitti_tree(tmp_path):
    """BTS KITTI layout: 375x1242 images, annotated depth under another root, one 'None' line of three."""
    data = tmp_path / "kitti_dataset"
    gt = data / "data_depth_annotated"
    lines = []
    depths = []
    for i in range(2):
        image = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{i:010d}.png"
        depth_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{i:010d}.png"
        depth = np.random.default_rng(20 + i).integers(0, 80 * 256, (375, 1242)).astype(np.uint16)
        os.makedirs(os.path.dirname(data / image), exist_ok=True)
        cv2.imwrite(str(data / image), random_image(375, 1242, i))
        save_depth(str(gt / depth_rel), depth)
        depths.append(depth)
        lines.append(f"{image} {depth_rel} 721.5377\n")
    lines.insert(1, "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000099.png None 721.5377\n")
    listing = tmp_path / "eigen_test_files_with_gt.txt"
    listing.write_text("".join(lines))
    return SimpleNamespace(data=str(data), gt=str(gt), listing=str(listing), depths=depths)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """One generated demo tree (both tasks) shared by the session: its DATA_PATH and the depth paths."""
    data_path = str(tmp_path_factory.mktemp("demo_data"))
    seg_root = ensure_segmentation_demo(data_path)
    depth_paths = ensure_depth_demo(data_path)
    return SimpleNamespace(data_path=data_path, seg_root=seg_root, depth=depth_paths)


def make_cfg(task: str, **overrides) -> CfgNode:
    """A minimal config with the authors' keys; ``overrides`` are dotted keys with '.' written as '__'."""
    cfg = CfgNode()
    cfg.DATASET = CfgNode()
    cfg.TRAINING = CfgNode({"NUM_THREADS": 0, "BATCH_SIZE": 8, "BATCH_SIZE_ON_1_GPU": 4})
    cfg.MODEL = CfgNode({"NUM_CLASSES": 7, "MAX_DEPTH": 10})
    if task == "segmentation":
        cfg.DATASET.update({"DATASET": "demo", "DATA_PATH": "", "BASE_SIZE": 128, "CROP_SIZE": 64})
        cfg.DATASET.TRAIN_SPLIT = "train"
    else:
        cfg.DATASET.update({"DATASET": "demo", "DATA_PATH": "", "INPUT_HEIGHT": 96, "INPUT_WIDTH": 128})
        for key in ("GT_PATH", "FILENAMES_FILE", "DATA_PATH_EVAL", "GT_PATH_EVAL", "FILENAMES_FILE_EVAL"):
            cfg.DATASET[key] = ""
        cfg.PREPROCESSING = CfgNode({"DO_RANDOM_ROTATE": True, "DEGREE": 2.5, "DO_KB_CROP": False, "USE_RIGHT": False})
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


@pytest.fixture
def cfg_factory():
    return make_cfg
