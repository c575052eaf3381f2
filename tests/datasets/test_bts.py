"""BTS-layout NYU and KITTI loaders: depth scaling, KB crop, 'None' lines, counts and errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from datasets.bts import BTSDepth, parse_filenames
from datasets.depth_transforms import DepthEvalTransform, DepthTrainTransform
from datasets.io import DataError


def test_nyu_eval_full_image_and_millimetre_scale(nyu_tree):
    with pytest.warns(UserWarning, match="NYU eval: found 2 samples, the official split has 654"):
        ds = BTSDepth(nyu_tree.listing, nyu_tree.root, nyu_tree.root, "nyu", DepthEvalTransform(False), "eval", 654)
    image, depth = ds[1]
    assert image.shape == (3, 480, 640) and depth.shape == (1, 480, 640)
    assert depth.dtype == torch.float32
    np.testing.assert_allclose(depth[0].numpy(), nyu_tree.depths[1] / 1000.0, rtol=1e-6)


def test_nyu_train_border_crop_then_random_crop(nyu_tree):
    tf = DepthTrainTransform(416, 544, "nyu", (43, 45, 608, 472), do_kb_crop=False, rotate_degree=None)
    ds = BTSDepth(nyu_tree.listing, nyu_tree.root, nyu_tree.root, "nyu", tf, "train")
    torch.manual_seed(0)
    _, depth = ds[0]
    assert depth.shape == (1, 416, 544)
    # The crop is a window of the bordered region rows 45:472, cols 43:608 (possibly flipped).
    region = nyu_tree.depths[0][45:472, 43:608].astype(np.float32) / np.float32(1000)
    got = depth[0].numpy()
    windows = [
        (y, x)
        for y in range(472 - 45 - 416 + 1)
        for x in range(608 - 43 - 544 + 1)
        for w in [region[y : y + 416, x : x + 544]]
        if np.array_equal(w, got) or np.array_equal(w[:, ::-1], got)
    ]
    assert len(windows) == 1


def test_kitti_kb_crop_none_lines_and_256_scale(kitti_tree):
    tf = DepthEvalTransform(True)
    with pytest.warns(UserWarning, match="KITTI eval: found 2 samples, the official split has 652"):
        ds = BTSDepth(kitti_tree.listing, kitti_tree.data, kitti_tree.gt, "kitti", tf, "eval", 652)
    assert len(ds) == 2  # the 'None' line is skipped
    image, depth = ds[1]
    assert image.shape == (3, 352, 1216) and depth.shape == (1, 352, 1216)
    top, left = 375 - 352, (1242 - 1216) // 2  # bottom-centred
    np.testing.assert_allclose(depth[0].numpy(), kitti_tree.depths[1][top:, left : left + 1216] / 256.0, rtol=1e-6)


def test_parse_filenames_counts_none_and_rejects_short_lines(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.png b.png 1.0\n\nc.png None 1.0\n")
    assert parse_filenames(str(listing)) == ([("a.png", "b.png")], 1)
    listing.write_text("a.png b.png 1.0\nc.png d.png\n")
    with pytest.raises(DataError, match=r"list.txt line 2 has 2 fields, expected 3"):
        parse_filenames(str(listing))


def test_use_right_needs_five_columns(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("l.png ld.png 721.5 r.png rd.png\n")
    assert parse_filenames(str(listing), use_right=True) == ([("l.png", "ld.png", "r.png", "rd.png")], 0)
    listing.write_text("l.png ld.png 721.5\n")
    with pytest.raises(DataError, match="expected 5"):
        parse_filenames(str(listing), use_right=True)


def test_missing_filenames_file_and_roots(nyu_tree, tmp_path):
    tf = DepthEvalTransform(False)
    with pytest.raises(DataError, match="filenames file not found: .*nope.txt"):
        BTSDepth(str(tmp_path / "nope.txt"), nyu_tree.root, nyu_tree.root, "nyu", tf, "eval")
    with pytest.raises(DataError, match="image root not found: .*missing"):
        BTSDepth(nyu_tree.listing, str(tmp_path / "missing"), nyu_tree.root, "nyu", tf, "eval")


def test_missing_listed_file(nyu_tree):
    os.remove(os.path.join(nyu_tree.root, "bathroom", "sync_depth_00001.png"))
    with pytest.raises(DataError, match="1 file.* not found .*first: .*sync_depth_00001.png"):
        BTSDepth(nyu_tree.listing, nyu_tree.root, nyu_tree.root, "nyu", DepthEvalTransform(False), "eval")


def test_8_bit_depth_png_is_rejected(nyu_tree, helpers):
    path = os.path.join(nyu_tree.root, "bathroom", "sync_depth_00000.png")
    helpers.save_depth(path, np.full((480, 640), 7, np.uint8))
    ds = BTSDepth(nyu_tree.listing, nyu_tree.root, nyu_tree.root, "nyu", DepthEvalTransform(False), "eval")
    with pytest.raises(DataError, match=r"sync_depth_00000.png is uint8 .*expected a single-channel 16-bit png"):
        ds[0]


def test_depth_size_mismatch_and_undecodable_image(nyu_tree, helpers):
    helpers.save_depth(os.path.join(nyu_tree.root, "bathroom", "sync_depth_00000.png"), np.ones((48, 64), np.uint16))
    with open(os.path.join(nyu_tree.root, "bathroom", "rgb_00001.jpg"), "wb") as f:
        f.write(b"\x00garbage")
    ds = BTSDepth(nyu_tree.listing, nyu_tree.root, nyu_tree.root, "nyu", DepthEvalTransform(False), "eval")
    with pytest.raises(DataError, match="sync_depth_00000.png is 64x48 but its image .*rgb_00000.jpg is 640x480"):
        ds[0]
    with pytest.raises(DataError, match="cannot decode image .*rgb_00001.jpg"):
        ds[1]


def test_kb_crop_too_small_image_names_it(kitti_tree, helpers):
    listing = kitti_tree.listing
    first = open(listing).readline().split()
    helpers.save_rgb(os.path.join(kitti_tree.data, first[0]), np.zeros((300, 1000, 3)))
    helpers.save_depth(os.path.join(kitti_tree.gt, first[1]), np.zeros((300, 1000), np.uint16))
    with pytest.warns(UserWarning):
        ds = BTSDepth(listing, kitti_tree.data, kitti_tree.gt, "kitti", DepthEvalTransform(True), "eval", 652)
    with pytest.raises(DataError, match=r"0000000000.png: KB crop needs at least 352x1216"):
        ds[0]
