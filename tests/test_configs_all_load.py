"""Every shipped YAML under configs/ loads, names what it builds, and builds (README, Training recipe).

A config's file name is ``{model}_{method}_{dataset}.yaml`` and must agree with ``MODEL.MODEL_TYPE``,
``MODEL.BINARY_TYPE`` and ``DATASET.DATASET``; its folder (``segmentation`` / ``depth``) is its task.  Each
(task, model, method) combination is built once (ADE20K head for segmentation), without a forward pass, and its
final prediction conv is checked (151 classes, or a single depth channel); ``MODEL.NUM_CLASSES`` is checked against
its data set.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from torch import nn

from binary import list_methods
from configs import load_config
from datasets import demo_num_classes, list_datasets
from models import build_model, list_models, supported_methods

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
YAMLS = sorted(CONFIGS.glob("*/*.yaml"))
# MODEL.NUM_CLASSES of each segmentation set: its classes plus the ignore slot (ADE20K 150 + 1, VOC 21 + 1).
NUM_CLASSES = {"ade20k": 151, "pascal_voc": 22, "demo": demo_num_classes()}
# MODEL.MAX_DEPTH of each depth set (the BTS caps: NYUv2 10 m, KITTI 80 m; the demo is NYU-style).
MAX_DEPTH = {"nyu": 10.0, "kitti": 80.0, "demo": 10.0}
# Training crop of the real data sets (README, Training recipe): segmentation CROP_SIZE, depth
# INPUT_HEIGHT x INPUT_WIDTH.
CROP = {"ade20k": (480, 480), "pascal_voc": (480, 480), "nyu": (416, 544), "kitti": (352, 704)}


def _split_name(path: Path, datasets: list[str]) -> tuple[str, str, str]:
    """``(model, method, dataset)`` from ``{model}_{method}_{dataset}.yaml``; method and dataset may hold '_'."""
    model, rest = path.stem.split("_", 1)
    dataset = max((name for name in datasets if rest.endswith(f"_{name}")), key=len, default=None)
    assert dataset is not None, f"{path.name}: file name ends in no data set of {datasets}"
    return model, rest[: -len(dataset) - 1], dataset


@functools.cache
def _prediction_channels(task: str, model_type: str, binary_type: str) -> int:
    kwargs = {"num_classes": NUM_CLASSES["ade20k"]} if task == "segmentation" else {"max_depth": 10.0}
    model = build_model(task, model_type, binary_type, **kwargs)
    classifier: nn.Conv2d = model.get_submodule(model.classifier_name)
    return classifier.out_channels


def test_every_task_folder_has_configs() -> None:
    assert {path.parent.name for path in YAMLS} == {"segmentation", "depth"}
    # Every baseline and the cfb ablation have their configs.
    names = {path.name for path in YAMLS}
    for method in ("bnn", "react", "adabin", "bisrnet", "cfb"):
        for dataset in ("ade20k", "pascal_voc", "nyu", "kitti"):
            assert f"upernet_{method}_{dataset}.yaml" in names
    for method in ("bibert", "bit", "bivit"):
        assert {f"dpt_{method}_ade20k.yaml", f"dpt_{method}_kitti.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_loads_and_names_what_it_builds(path: Path) -> None:
    task = path.parent.name
    cfg = load_config(task, path)
    model, method, dataset = _split_name(path, list_datasets(task))
    assert (cfg.MODEL.MODEL_TYPE, cfg.MODEL.BINARY_TYPE, cfg.DATASET.DATASET) == (model, method, dataset)
    assert model in list_models()
    assert method in list_methods()
    assert method in supported_methods(model)
    assert cfg.TRAINING.BATCH_SIZE % cfg.TRAINING.BATCH_SIZE_ON_1_GPU == 0
    if task == "segmentation":
        assert (cfg.DATASET.CROP_SIZE, cfg.DATASET.CROP_SIZE) == CROP.get(dataset, (cfg.DATASET.CROP_SIZE,) * 2)
        assert cfg.MODEL.NUM_CLASSES == NUM_CLASSES[dataset]
        assert _prediction_channels(task, model, method) == NUM_CLASSES["ade20k"]
    else:
        size = (cfg.DATASET.INPUT_HEIGHT, cfg.DATASET.INPUT_WIDTH)
        assert size == CROP.get(dataset, size)
        assert cfg.MODEL.MAX_DEPTH == MAX_DEPTH[dataset]
        assert _prediction_channels(task, model, method) == 1


@pytest.mark.parametrize(
    ("name", "epochs", "total", "per_gpu", "lr"),
    [
        ("segmentation/upernet_bnn_ade20k.yaml", 50, 32, 8, 1e-4),
        ("segmentation/upernet_react_ade20k.yaml", 50, 32, 4, 1e-4),
        ("segmentation/upernet_cfb_ade20k.yaml", 50, 32, 4, 1e-4),
        ("segmentation/upernet_bnn_pascal_voc.yaml", 200, 32, 8, 1e-4),
        ("segmentation/upernet_adabin_pascal_voc.yaml", 200, 32, 4, 1e-4),
        ("segmentation/dpt_bibert_ade20k.yaml", 50, 32, 4, 2e-4),
        ("depth/upernet_bnn_nyu.yaml", 50, 32, 8, 6e-5),
        ("depth/upernet_cfb_nyu.yaml", 50, 32, 8, 6e-5),
        ("depth/upernet_bisrnet_nyu.yaml", 50, 32, 4, 6e-5),
        ("depth/upernet_bnn_kitti.yaml", 50, 64, 8, 1e-4),
        ("depth/upernet_react_kitti.yaml", 50, 64, 4, 1e-4),
        ("depth/dpt_bivit_kitti.yaml", 50, 32, 4, 3e-5),
    ],
)
def test_baseline_schedules_follow_paper(name: str, epochs: int, total: int, per_gpu: int, lr: float) -> None:
    """Spot checks of the released per-config settings (README, Training recipe)."""
    path = CONFIGS / name
    cfg = load_config(path.parent.name, path)
    t = cfg.TRAINING
    assert (t.NUM_EPOCHS, t.BATCH_SIZE, t.BATCH_SIZE_ON_1_GPU) == (epochs, total, per_gpu)
    assert t.MAX_LR == pytest.approx(lr)
