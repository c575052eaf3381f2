"""The shipped BTS split lists (train_test_inputs/) parse with the BTS loader and hold the published counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.bts import parse_filenames

LISTS = Path(__file__).resolve().parents[2] / "train_test_inputs"


@pytest.mark.parametrize(
    ("name", "entries", "without_gt"),
    [
        ("nyudepthv2_train_files_with_gt.txt", 24231, 0),
        ("nyudepthv2_test_files_with_gt.txt", 654, 0),
        ("eigen_train_files_with_gt.txt", 23158, 0),
        ("eigen_test_files_with_gt.txt", 652, 45),
    ],
)
def test_split_list_counts(name, entries, without_gt):
    found, skipped = parse_filenames(str(LISTS / name))
    assert (len(found), skipped) == (entries, without_gt)
    assert all(len(entry) == 2 and entry[0].endswith((".jpg", ".png")) and entry[1].endswith(".png")
               for entry in found)
