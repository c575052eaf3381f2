"""The procedural demo set: deterministic bytes, atomic writing, read by the real loaders, learnable by colour."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from datasets import demo
from datasets.ade20k import ADE20K
from datasets.bts import BTSDepth
from datasets.depth_transforms import DepthEvalTransform
from datasets.segmentation_transforms import SegmentationValTransform


def _tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_seed_same_bytes(demo_data, tmp_path):
    again = demo.ensure_segmentation_demo(str(tmp_path))
    tree = "ADEChallengeData2016"
    assert _tree_bytes(os.path.join(again, tree)) == _tree_bytes(os.path.join(demo_data.seg_root, tree))
    first = demo._render_segmentation(np.random.default_rng((0, 0, 0, 0)))
    assert np.array_equal(first[0], demo._render_segmentation(np.random.default_rng((0, 0, 0, 0)))[0])
    assert not np.array_equal(first[0], demo._render_segmentation(np.random.default_rng((1, 0, 0, 0)))[0])


def test_depth_same_seed_same_bytes(demo_data, tmp_path):
    demo.ensure_depth_demo(str(tmp_path))
    tree = os.path.join("demo", "nyu_depth_v2")
    fresh = _tree_bytes(str(tmp_path / tree))
    assert len(fresh) == 2 * (200 + 40) + 2 + 1  # pairs, two filenames files, the stamp
    assert fresh == _tree_bytes(os.path.join(demo_data.data_path, tree))


def test_interrupted_generation_leaves_no_tree(tmp_path, monkeypatch):
    def crash(tree, seed):
        os.makedirs(os.path.join(tree, "images", "training"))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_segmentation", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_segmentation_demo(str(tmp_path))
    assert os.listdir(tmp_path / "demo") == []  # neither a final tree nor a leftover temporary folder


def test_existing_tree_is_reused_only_with_the_same_stamp(tmp_path, monkeypatch):
    tree = tmp_path / "demo" / "ADEChallengeData2016"
    tree.mkdir(parents=True)
    (tree / demo.STAMP_FILE).write_text(demo._stamp(3))
    monkeypatch.setattr(demo, "_write_segmentation", lambda tree, seed: pytest.fail("regenerated"))
    assert demo.ensure_segmentation_demo(str(tmp_path), seed=3) == str(tmp_path / "demo")

    written = []
    monkeypatch.setattr(demo, "_write_segmentation", lambda tree, seed: written.append(seed))
    demo.ensure_segmentation_demo(str(tmp_path), seed=4)  # another seed: the stale tree is replaced
    assert written == [4] and (tree / demo.STAMP_FILE).read_text() == demo._stamp(4)
    assert sorted(os.listdir(tmp_path / "demo")) == ["ADEChallengeData2016"]


def test_real_ade20k_loader_reads_the_segmentation_demo(demo_data):
    num_classes = demo.demo_num_classes()
    assert num_classes == len(demo.SEGMENTATION_CLASSES) + 1 == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no count warning for the demo
        train = ADE20K(demo_data.seg_root, "train", num_classes, SegmentationValTransform(128), official_counts=False)
        val = ADE20K(demo_data.seg_root, "val", num_classes, SegmentationValTransform(128), official_counts=False)
    assert (len(train), len(val)) == (300, 60)
    masks = np.stack([val[i][1].numpy() for i in range(len(val))])
    counts = np.bincount(masks.ravel(), minlength=num_classes)
    assert len(counts) == num_classes and (counts > 0).all()  # every class and the ignore slot appear
    assert counts[-1] < 0.01 * masks.size  # "other" is rare


def test_segmentation_demo_classes_are_separable_by_colour(demo_data):
    """A nearest-mean-colour pixel classifier fitted on train already beats chance by far on val."""
    train = ADE20K(demo_data.seg_root, "train", 7, lambda i, m: (i, m), official_counts=False)
    val = ADE20K(demo_data.seg_root, "val", 7, lambda i, m: (i, m), official_counts=False)
    means = np.zeros((6, 3))
    counts = np.zeros(6)
    for i in range(0, 300, 5):
        image, mask = train[i]
        for c in range(6):
            sel = mask == c
            means[c] += image[sel].sum(0)
            counts[c] += sel.sum()
    means /= counts[:, None]
    correct = total = 0
    for i in range(len(val)):
        image, mask = val[i]
        pred = np.argmin(((image[:, :, None, :].astype(float) - means[None, None]) ** 2).sum(-1), axis=-1)
        valid = mask < 6
        correct += (pred[valid] == mask[valid]).sum()
        total += valid.sum()
    assert correct / total > 0.8


def test_real_nyu_loader_reads_the_depth_demo(demo_data):
    p = demo_data.depth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = BTSDepth(
            p["FILENAMES_FILE_EVAL"], p["DATA_PATH_EVAL"], p["GT_PATH_EVAL"], "nyu", DepthEvalTransform(False), "eval"
        )
    assert len(ds) == demo.DEPTH_COUNTS["test"]
    depths = np.stack([ds[i][1].numpy() for i in range(len(ds))])
    assert depths.shape[1:] == (1, demo.DEPTH_HEIGHT, demo.DEPTH_WIDTH)
    valid = depths[depths > 0]
    assert valid.min() > 1.0 and valid.max() < 9.5
    assert (depths == 0).any()  # a few holes without ground truth
    # Depth grows towards the horizon on the floor: the bottom row is nearer than the image centre row.
    assert np.median(depths[:, 0, -1]) < np.median(depths[:, 0, demo.DEPTH_HEIGHT // 2])
