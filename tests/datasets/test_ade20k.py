"""ADE20K loader on a fixture tree in the real layout: label - 1 with 0 -> ignore, errors, count warnings."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from datasets.ade20k import ADE20K
from datasets.io import DataError
from datasets.segmentation_transforms import SegmentationValTransform


def test_labels_are_shifted_and_zero_is_ignored(ade_tree):
    with pytest.warns(UserWarning, match="found 2 samples, the official split has 2000"):
        ds = ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))
    image, mask = ds[0]
    # 12x16 with crop 12: no resize, centre crop of columns round(4 / 2) = 2 .. 14.
    expected = np.where(ade_tree.raw == 0, 150, ade_tree.raw.astype(np.int64) - 1)[:, 2:14]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32
    assert mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert set(mask.unique().tolist()) == {0, 36, 149, 150}


def test_train_split_warns_with_official_count(ade_tree):
    with pytest.warns(UserWarning, match="found 2 samples, the official split has 20210"):
        ds = ADE20K(ade_tree.root, "train", 151, SegmentationValTransform(12))
    assert len(ds) == 2 and all(p.endswith(".jpg") for p in ds.images)


@pytest.mark.parametrize(
    "remove, message",
    [
        ("", "data root"),
        ("ADEChallengeData2016", "ADE20K folder not found"),
        ("ADEChallengeData2016/annotations/validation", "annotation folder not found"),
        ("ADEChallengeData2016/images/validation", "image folder not found"),
    ],
)
def test_missing_folders_name_the_path_and_tree(ade_tree, remove, message):
    root = ade_tree.root if remove else os.path.join(ade_tree.root, "nowhere")
    if remove:
        shutil.rmtree(os.path.join(ade_tree.root, remove))
    with pytest.raises(DataError, match=message) as err:
        ADE20K(root, "val", 151, SegmentationValTransform(12))
    assert "\n" not in str(err.value)
    assert "ADEChallengeData2016" in str(err.value)


def test_missing_label_for_an_image(ade_tree):
    os.remove(ade_tree.base / "annotations" / "validation" / "ADE_val_00000001.png")
    with pytest.raises(DataError, match="ADE_val_00000001.png"):
        ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))


def test_undecodable_image_names_the_file(ade_tree):
    (ade_tree.base / "images" / "validation" / "ADE_val_00000000.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning):
        ds = ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))
    with pytest.raises(DataError, match="cannot decode image .*ADE_val_00000000.jpg"):
        ds[0]


def test_error_in_a_loader_worker_stays_one_line(ade_tree):
    (ade_tree.base / "images" / "validation" / "ADE_val_00000001.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning):
        ds = ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert str(err.value).startswith("cannot decode image ") and "ADE_val_00000001.jpg" in str(err.value)
    assert "\n" not in str(err.value) and "Original Traceback" in err.value.worker_traceback


def test_label_size_mismatch_names_both_files(ade_tree, helpers):
    helpers.save_label(str(ade_tree.base / "annotations" / "validation" / "ADE_val_00000000.png"), np.ones((5, 5)))
    with pytest.warns(UserWarning):
        ds = ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))
    with pytest.raises(DataError, match=r"ADE_val_00000000.png is 5x5 but its image .* is 16x12"):
        ds[0]


def test_label_above_the_ignore_slot_is_reported(ade_tree):
    with pytest.warns(UserWarning):
        ds = ADE20K(ade_tree.root, "val", 7, SegmentationValTransform(12))
    with pytest.raises(DataError, match="holds value 149 .* ignore slot 6"):
        ds[0]


def test_rgb_label_png_is_rejected(ade_tree, helpers):
    helpers.save_rgb(str(ade_tree.base / "annotations" / "validation" / "ADE_val_00000000.png"), np.ones((12, 16, 3)))
    with pytest.warns(UserWarning):
        ds = ADE20K(ade_tree.root, "val", 151, SegmentationValTransform(12))
    with pytest.raises(DataError, match="ADE_val_00000000.png has PIL mode RGB; expected a single-channel 8-bit"):
        ds[0]
