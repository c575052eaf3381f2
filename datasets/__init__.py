"""Data sets and datamodules of BiDense: ADE20K, PASCAL VOC, NYUv2, KITTI and a procedural demo
(README, "Data preparation").

`build_datamodule(cfg, task)` turns a yacs config into a LightningDataModule. Batches:

- segmentation: ``(image float32 [B, 3, S, S] ImageNet-normalised, mask int64 [B, S, S])``, ``S = CROP_SIZE``,
  the ignore label being ``MODEL.NUM_CLASSES - 1`` (ADE20K 151, PASCAL VOC 22, demo 7);
- depth: ``(image float32 [B, 3, h, w], depth float32 [B, 1, h, w] metres, 0 = no ground truth)``; evaluation
  batches hold one full image (NYU 480 x 640, KITTI KB crop 352 x 1216).

Where the data lives: segmentation sets under ``DATASET.DATA_PATH`` (``../dataset`` when unset, the authors'
convention): ``<DATA_PATH>/ADEChallengeData2016``, ``<DATA_PATH>/VOCdevkit/VOC2012``. Depth sets from the BTS keys
``DATASET.{DATA_PATH,GT_PATH,FILENAMES_FILE}`` and their ``*_EVAL`` twins. The demo (either task) is written on
first use under ``<DATA_PATH>/demo`` (see `datasets.demo`), and only ``DATA_PATH`` is read for it.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import Dataset
from yacs.config import CfgNode

from datasets import ade20k, pascal_voc
from datasets.bts import OFFICIAL_EVAL_COUNTS, BTSDepth
from datasets.datamodule import DenseDataModule
from datasets.demo import demo_num_classes, ensure_depth_demo, ensure_segmentation_demo
from datasets.depth_transforms import NYU_BORDER_BOX, DepthEvalTransform, DepthTrainTransform
from datasets.io import DataError
from datasets.samplers import UnpaddedDistributedSampler
from datasets.segmentation_transforms import SegmentationTrainTransform, SegmentationValTransform

__all__ = [
    "DataError",
    "DenseDataModule",
    "UnpaddedDistributedSampler",
    "build_datamodule",
    "demo_num_classes",
    "list_datasets",
]

DEFAULT_DATA_PATH = "../dataset"
TASKS = ("segmentation", "depth")
_SEGMENTATION_NUM_CLASSES = {"ade20k": ade20k.NUM_CLASSES, "pascal_voc": pascal_voc.NUM_CLASSES, "demo": None}
_DEPTH_DATASETS = ("nyu", "kitti", "demo")


def list_datasets(task: str | None = None) -> list[str]:
    """Valid ``DATASET.DATASET`` names for ``task`` ("segmentation" or "depth"), or for both when None."""
    if task is None:
        return sorted(set(_SEGMENTATION_NUM_CLASSES) | set(_DEPTH_DATASETS))
    _check_task(task)
    return sorted(_SEGMENTATION_NUM_CLASSES) if task == "segmentation" else sorted(_DEPTH_DATASETS)


def build_datamodule(cfg: CfgNode, task: str) -> L.LightningDataModule:
    """The datamodule of ``cfg.DATASET.DATASET`` for ``task``; an unknown name raises `DataError` listing the valid."""
    _check_task(task)
    name = cfg.DATASET.DATASET
    if name not in list_datasets(task):
        raise DataError(f"unknown {task} DATASET.DATASET {name!r}; valid: {', '.join(list_datasets(task))}")
    if task == "segmentation":
        return _segmentation_datamodule(cfg, name)
    return _depth_datamodule(cfg, name)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def _data_path(cfg: CfgNode) -> str:
    return cfg.DATASET.DATA_PATH or DEFAULT_DATA_PATH


def _segmentation_datamodule(cfg: CfgNode, name: str) -> DenseDataModule:
    expected = _SEGMENTATION_NUM_CLASSES[name] or demo_num_classes()
    num_classes = cfg.MODEL.NUM_CLASSES
    if num_classes != expected:
        raise DataError(f"MODEL.NUM_CLASSES is {num_classes} but {name} needs {expected} (its classes + 1 ignore slot)")
    root = _data_path(cfg)
    # The authors pad the raw training mask with 0: the ignore slot after ADE20K's label - 1, background for VOC.
    train_tf = SegmentationTrainTransform(cfg.DATASET.BASE_SIZE, cfg.DATASET.CROP_SIZE, ignore_index=num_classes - 1,
                                          pad_label=pascal_voc.PAD_LABEL if name == "pascal_voc" else None)
    val_tf = SegmentationValTransform(cfg.DATASET.CROP_SIZE)
    prepare = None
    if name == "ade20k":

        def make(split: str, tf: Callable) -> Dataset:
            return ade20k.ADE20K(root, split, num_classes, tf)

    elif name == "pascal_voc":
        train_split = cfg.DATASET.get("TRAIN_SPLIT", "train")

        def make(split: str, tf: Callable) -> Dataset:
            return pascal_voc.PascalVOC(root, train_split if split == "train" else split, num_classes, tf)

    else:

        def prepare() -> None:
            ensure_segmentation_demo(root)

        def make(split: str, tf: Callable) -> Dataset:
            return ade20k.ADE20K(ensure_segmentation_demo(root), split, num_classes, tf, official_counts=False)

    return DenseDataModule(
        make_train=lambda: make("train", train_tf),
        make_val=lambda: make("val", val_tf),
        batch_size=cfg.TRAINING.BATCH_SIZE_ON_1_GPU,
        val_batch_size=cfg.TRAINING.BATCH_SIZE_ON_1_GPU,
        num_workers=cfg.TRAINING.NUM_THREADS,
        prepare=prepare,
    )


def _depth_datamodule(cfg: CfgNode, name: str) -> DenseDataModule:
    pre = cfg.PREPROCESSING
    rotate_degree = float(pre.DEGREE) if pre.DO_RANDOM_ROTATE else None
    use_right = bool(pre.get("USE_RIGHT", False)) and name == "kitti"
    root = _data_path(cfg)
    prepare = None
    if name == "demo":

        def paths() -> dict[str, str]:
            return ensure_depth_demo(root)

        def prepare() -> None:
            ensure_depth_demo(root)

    else:

        def paths() -> dict[str, str]:
            return {key: _required(cfg, key) for key in _BTS_KEYS}

    semantics = "kitti" if name == "kitti" else "nyu"  # the demo is a small NYU-style set
    train_tf = DepthTrainTransform(
        cfg.DATASET.INPUT_HEIGHT,
        cfg.DATASET.INPUT_WIDTH,
        dataset=semantics,
        border_box=NYU_BORDER_BOX if name == "nyu" else None,
        do_kb_crop=bool(pre.DO_KB_CROP),
        rotate_degree=rotate_degree,
    )
    eval_tf = DepthEvalTransform(bool(pre.DO_KB_CROP))
    label = "demo" if name == "demo" else None

    def make_train() -> Dataset:
        p = paths()
        return BTSDepth(
            p["FILENAMES_FILE"], p["DATA_PATH"], p["GT_PATH"], semantics, train_tf, "train",
            use_right=use_right, name=label,
        )  # fmt: skip

    def make_val() -> Dataset:
        p = paths()
        expected = None if name == "demo" else OFFICIAL_EVAL_COUNTS[name]
        return BTSDepth(
            p["FILENAMES_FILE_EVAL"], p["DATA_PATH_EVAL"], p["GT_PATH_EVAL"], semantics, eval_tf, "eval",
            expected_count=expected, name=label,
        )  # fmt: skip

    return DenseDataModule(
        make_train=make_train,
        make_val=make_val,
        batch_size=cfg.TRAINING.BATCH_SIZE_ON_1_GPU,
        val_batch_size=1,
        num_workers=cfg.TRAINING.NUM_THREADS,
        prepare=prepare,
    )


_BTS_KEYS = ("DATA_PATH", "GT_PATH", "FILENAMES_FILE", "DATA_PATH_EVAL", "GT_PATH_EVAL", "FILENAMES_FILE_EVAL")


def _required(cfg: CfgNode, key: str) -> str:
    value = cfg.DATASET.get(key)
    if not value:
        raise DataError(f"DATASET.{key} is not set; the BTS depth loaders need it (see datasets/bts.py)")
    return value
