"""PASCAL VOC loader on a fixture tree: 255 -> ignore 21, split lists, the trainval warning, errors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from datasets.io import DataError
from datasets.pascal_voc import PascalVOC
from datasets.segmentation_transforms import SegmentationValTransform


def test_palette_labels_keep_classes_and_map_255_to_ignore(voc_tree):
    with pytest.warns(UserWarning, match="found 1 samples, the official split has 1449"):
        ds = PascalVOC(voc_tree.root, "val", 22, SegmentationValTransform(12))
    _, mask = ds[0]
    expected = np.where(voc_tree.raw == 255, 21, voc_tree.raw)[:, 2:14]
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert set(mask.unique().tolist()) == {0, 5, 20, 21}


def test_split_lists(voc_tree):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = PascalVOC(voc_tree.root, "train", 22, SegmentationValTransform(12))
    assert [os.path.basename(p) for p in train.images] == ["a.jpg", "b.jpg"]
    assert not any("contains every val image" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainval = PascalVOC(voc_tree.root, "trainval", 22, SegmentationValTransform(12))
    assert len(trainval) == 3
    assert any("contains every val image" in str(w.message) for w in caught)


def test_unknown_split(voc_tree):
    with pytest.raises(DataError, match="unknown PASCAL VOC split 'test'.*train, val, trainval"):
        PascalVOC(voc_tree.root, "test", 22, SegmentationValTransform(12))


def test_missing_split_file_names_it(voc_tree):
    os.remove(voc_tree.base / "ImageSets" / "Segmentation" / "val.txt")
    with pytest.raises(DataError, match=r"split file not found: .*val.txt \(expected VOCdevkit/VOC2012/"):
        PascalVOC(voc_tree.root, "val", 22, SegmentationValTransform(12))


def test_missing_listed_image_names_it(voc_tree):
    os.remove(voc_tree.base / "JPEGImages" / "c.jpg")
    with pytest.raises(DataError, match=r"val.txt not found: .*JPEGImages/c.jpg"):
        PascalVOC(voc_tree.root, "val", 22, SegmentationValTransform(12))


def test_missing_voc_folder(tmp_path):
    with pytest.raises(DataError, match="PASCAL VOC folder not found: .*VOC2012"):
        PascalVOC(str(tmp_path), "val", 22, SegmentationValTransform(12))
