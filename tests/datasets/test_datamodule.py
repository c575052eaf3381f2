"""build_datamodule: names, batch formats, loaders, the unpadded DDP evaluation sampler, worker seeding."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

import datasets
from datasets import DataError, UnpaddedDistributedSampler, build_datamodule, list_datasets


def test_list_datasets():
    assert list_datasets("segmentation") == ["ade20k", "demo", "pascal_voc"]
    assert list_datasets("depth") == ["demo", "kitti", "nyu"]
    assert list_datasets() == ["ade20k", "demo", "kitti", "nyu", "pascal_voc"]


def test_unknown_names_are_one_line_errors(cfg_factory):
    with pytest.raises(
        DataError, match=r"unknown segmentation DATASET.DATASET 'ade21k'; valid: ade20k, demo, pascal_voc"
    ):
        build_datamodule(cfg_factory("segmentation", DATASET__DATASET="ade21k"), "segmentation")
    with pytest.raises(DataError, match="unknown depth DATASET.DATASET 'ade20k'; valid: demo, kitti, nyu"):
        build_datamodule(cfg_factory("depth", DATASET__DATASET="ade20k"), "depth")
    with pytest.raises(DataError, match="unknown task 'detection'"):
        build_datamodule(cfg_factory("depth"), "detection")


def test_num_classes_must_match_the_dataset(cfg_factory):
    with pytest.raises(DataError, match="MODEL.NUM_CLASSES is 150 but ade20k needs 151"):
        build_datamodule(cfg_factory("segmentation", DATASET__DATASET="ade20k", MODEL__NUM_CLASSES=150), "segmentation")


def test_depth_paths_must_be_set(cfg_factory, tmp_path):
    dm = build_datamodule(cfg_factory("depth", DATASET__DATASET="nyu", DATASET__DATA_PATH=str(tmp_path)), "depth")
    with pytest.raises(DataError, match="DATASET.GT_PATH is not set"):
        dm.setup("fit")


def test_segmentation_demo_batches(cfg_factory, demo_data):
    dm = build_datamodule(cfg_factory("segmentation", DATASET__DATA_PATH=demo_data.data_path), "segmentation")
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    assert len(train) == 300 // 4  # drop_last
    image, mask = next(iter(train))
    assert image.shape == (4, 3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (4, 64, 64) and mask.dtype == torch.int64
    assert 0 <= int(mask.min()) and int(mask.max()) <= 6
    image, mask = next(iter(dm.val_dataloader()))
    assert image.shape == (4, 3, 64, 64) and mask.shape == (4, 64, 64)
    assert len(dm.test_dataloader()) == 60 // 4


def test_depth_demo_batches(cfg_factory, demo_data):
    dm = build_datamodule(cfg_factory("depth", DATASET__DATA_PATH=demo_data.data_path), "depth")
    dm.setup("fit")
    image, depth = next(iter(dm.train_dataloader()))
    assert image.shape == (4, 3, 96, 128) and depth.shape == (4, 1, 96, 128) and depth.dtype == torch.float32
    image, depth = next(iter(dm.val_dataloader()))
    assert image.shape == (1, 3, 128, 160) and depth.shape == (1, 1, 128, 160)
    assert len(dm.val_dataloader()) == 40


def test_too_small_training_set_is_an_error(cfg_factory, demo_data):
    cfg = cfg_factory("depth", DATASET__DATA_PATH=demo_data.data_path, TRAINING__BATCH_SIZE_ON_1_GPU=500)
    with pytest.raises(DataError, match="training set has 200 samples, fewer than one batch"):
        build_datamodule(cfg, "depth").setup("fit")


def test_unpadded_sampler_covers_each_index_once():
    data = list(range(10))
    shards = [list(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == data
    assert [len(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)] == [4, 3, 3]


def test_evaluation_loader_is_unpadded_under_several_processes(cfg_factory, demo_data):
    dm = build_datamodule(cfg_factory("depth", DATASET__DATA_PATH=demo_data.data_path), "depth")
    dm.setup("validate")
    dm.trainer = SimpleNamespace(world_size=3, global_rank=1)
    loader = dm.val_dataloader()
    assert isinstance(loader.sampler, UnpaddedDistributedSampler)
    assert list(loader.sampler) == list(range(1, 40, 3))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert not isinstance(dm.val_dataloader().sampler, UnpaddedDistributedSampler)


def test_worker_augmentation_is_reproducible_under_seed_everything(cfg_factory, demo_data):
    cfg = cfg_factory("segmentation", DATASET__DATA_PATH=demo_data.data_path, TRAINING__NUM_THREADS=1)
    dm = datasets.build_datamodule(cfg, "segmentation")
    dm.setup("fit")

    def first_batch():
        L.seed_everything(5, workers=True, verbose=False)
        loader = dm.train_dataloader()
        assert not loader.persistent_workers  # restarted each epoch, seeded from the epoch (engine.callbacks.EpochSeed)
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.filterwarnings("ignore:PASCAL VOC")
@pytest.mark.parametrize("split, n_train", [("train", 2), ("trainval", 3)])
def test_voc_train_split_comes_from_the_config(cfg_factory, voc_tree, split, n_train):
    cfg = cfg_factory(
        "segmentation",
        DATASET__DATASET="pascal_voc",
        DATASET__DATA_PATH=voc_tree.root,
        DATASET__TRAIN_SPLIT=split,
        DATASET__CROP_SIZE=8,
        DATASET__BASE_SIZE=16,
        MODEL__NUM_CLASSES=22,
        TRAINING__BATCH_SIZE_ON_1_GPU=1,
    )
    dm = build_datamodule(cfg, "segmentation")
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (n_train, 1)
    _, mask = next(iter(dm.val_dataloader()))
    assert mask.shape == (1, 8, 8) and int(mask.max()) <= 21


@pytest.mark.filterwarnings("ignore:PASCAL VOC")
@pytest.mark.parametrize("dataset, pad_label", [("pascal_voc", 0), ("demo", None)])
def test_training_crops_pad_the_label_as_the_authors(cfg_factory, voc_tree, dataset, pad_label):
    # Released: the raw mask is padded with 0 -> background for VOC, the ignore slot after ADE20K's label - 1.
    overrides = {"DATASET__DATASET": dataset, "DATASET__CROP_SIZE": 8, "DATASET__BASE_SIZE": 16,
                 "TRAINING__BATCH_SIZE_ON_1_GPU": 1}
    if dataset == "pascal_voc":
        overrides |= {"DATASET__DATA_PATH": voc_tree.root, "MODEL__NUM_CLASSES": 22}
    else:
        from datasets import demo_num_classes

        overrides["MODEL__NUM_CLASSES"] = demo_num_classes()
    cfg = cfg_factory("segmentation", **overrides)
    dm = build_datamodule(cfg, "segmentation")
    transform = dm.make_train().transform
    assert transform.pad_label == (cfg.MODEL.NUM_CLASSES - 1 if pad_label is None else pad_label)
