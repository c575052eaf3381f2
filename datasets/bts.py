"""NYUv2 and KITTI in the BTS layout (README, "Data preparation"): a filenames file of ``rgb depth focal`` lines.

Each line holds an image path relative to the data root and a depth png path relative to the ground-truth root
(train: ``DATASET.DATA_PATH`` / ``DATASET.GT_PATH`` / ``DATASET.FILENAMES_FILE``; evaluation: the ``*_EVAL``
keys), then the focal length, e.g. (the authors' configs)::

    NYU   DATA_PATH = GT_PATH = ../dataset/nyu_depth_v2/sync/
          FILENAMES_FILE = train_test_inputs/nyudepthv2_train_files_with_gt.txt
          line: /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579
          eval: ../dataset/nyu_depth_v2/official_splits/test/ with nyudepthv2_test_files_with_gt.txt (654 lines)
    KITTI DATA_PATH = ../dataset/kitti_dataset/, GT_PATH = ../dataset/kitti_dataset/data_depth_annotated/
          FILENAMES_FILE = train_test_inputs/eigen_train_files_with_gt.txt
          line: 2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
                2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377
          eval: eigen_test_files_with_gt.txt, 697 lines of which 45 have depth "None": 652 are evaluated

A leading "/" in a listed path is relative to the root, as in the authors' loader. Lines whose depth is "None"
are skipped. Depth pngs are 16-bit: metres = value / 1000 (NYU) or value / 256 (KITTI); 0 = no ground truth.
With ``PREPROCESSING.USE_RIGHT`` (KITTI), training lines need two more columns (right image, right depth),
picked with p = 0.5. Filenames files are read relative to the working directory, as the authors do.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets import rng
from datasets.io import DataError, check_same_size, read_depth_png, read_rgb, require_dir, require_file, warn_count

DEPTH_SCALE = {"nyu": 1000.0, "kitti": 256.0}
OFFICIAL_EVAL_COUNTS = {"nyu": 654, "kitti": 652}
DepthTransform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def parse_filenames(filenames_file: str, use_right: bool = False) -> tuple[list[tuple[str, ...]], int]:
    """The ``(rgb, depth[, rgb_right, depth_right])`` entries of a BTS filenames file and the count of "None" lines.

    Blank lines are ignored; a line with fewer than 3 fields (5 with ``use_right``) raises `DataError` naming it.
    """
    require_file(filenames_file, "filenames file", "a text file of 'rgb_path depth_path focal' lines")
    needed = 5 if use_right else 3
    entries, skipped = [], 0
    with open(filenames_file) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < needed:
                raise DataError(
                    f"{filenames_file} line {number} has {len(fields)} fields, expected {needed} "
                    f"({'rgb depth focal rgb_right depth_right' if use_right else 'rgb depth focal'})"
                )
            if fields[1] == "None":
                skipped += 1
                continue
            entries.append((fields[0], fields[1], *fields[3:5]) if use_right else (fields[0], fields[1]))
    return entries, skipped


def _join(root: str, relative: str) -> str:
    return os.path.join(root, relative.lstrip("/"))


class BTSDepth(Dataset):
    """The image/depth pairs of one BTS filenames file; items are ``(image [3, h, w], depth [1, h, w] metres)``.

    Args:
        filenames_file, data_path, gt_path: the list and the two roots its paths are relative to.
        dataset: "nyu" or "kitti", selects the depth scale (1000 or 256).
        transform: a `datasets.depth_transforms` transform.
        split: "train" or "eval", for messages.
        expected_count: the official number of usable lines (a warning when fewer), or None.
        use_right: KITTI training on the right camera too (see module).
        name: the data set's name in messages (default: ``dataset`` in capitals).
    """

    def __init__(
        self,
        filenames_file: str,
        data_path: str,
        gt_path: str,
        dataset: str,
        transform: DepthTransform,
        split: str,
        expected_count: int | None = None,
        use_right: bool = False,
        name: str | None = None,
    ) -> None:
        if dataset not in DEPTH_SCALE:
            raise DataError(f"unknown depth data set {dataset!r}; valid: {', '.join(DEPTH_SCALE)}")
        require_dir(data_path, "image root", f"the folder the image paths in {filenames_file} are relative to")
        require_dir(gt_path, "ground-truth root", f"the folder the depth paths in {filenames_file} are relative to")
        entries, _ = parse_filenames(filenames_file, use_right)
        if not entries:
            raise DataError(f"filenames file {filenames_file} lists no image with ground truth")
        self.samples = [
            tuple(_join(data_path if k % 2 == 0 else gt_path, p) for k, p in enumerate(entry)) for entry in entries
        ]
        missing = [p for sample in self.samples for p in sample if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) listed in {filenames_file} not found under image root {data_path} / "
                f"ground-truth root {gt_path}, first: {missing[0]}"
            )
        warn_count(name or dataset.upper(), split, len(self.samples), expected_count)
        self.scale = DEPTH_SCALE[dataset]
        self.transform = transform
        self.use_right = use_right

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image_path, depth_path = sample[2:4] if self.use_right and rng.coin(0.5) else sample[:2]
        image = read_rgb(image_path)
        depth = read_depth_png(depth_path, self.scale)
        check_same_size(image, depth, image_path, depth_path)
        try:
            return self.transform(image, depth)
        except DataError as err:
            raise DataError(f"{image_path}: {err}") from err
