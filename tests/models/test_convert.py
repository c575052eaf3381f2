"""`python -m models.convert`: a checkpoint in the released layout (names, module prefix, unused entries, shapes)
becomes this project's checkpoint; a checkpoint that does not fit fails with one line naming the key.

The released layout is built here from this project's model by the documented renaming below (the authors' module
names), so no test needs the authors' code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from models import build_model
from models.convert import main

# This project's name -> the released name, per model type (README, "Converting released checkpoints").
RENAMES = {
    "upernet": [(r"^psp\.", "PPN."), (r"^fpn\.laterals\.", "FPN.conv1x1."), (r"^fpn\.smooth\.", "FPN.smooth_conv."),
                (r"^fpn\.fusion\.", "FPN.conv_fusion."), (r"^out_conv\.", "out_conv1."),
                (r"^head\.conv\.", "out_conv2.0."), (r"^head\.classifier\.", "out_conv2.2."),
                (r"\.binarizer\.a$", ".binarizer.alpha")],
    "dpt": [(r"^layer_rn\.(\d)\.", lambda m: f"scratch.layer{int(m.group(1)) + 1}_rn."),
            (r"^fusions\.(\d)\.skip\.", lambda m: f"scratch.refinenet{int(m.group(1)) + 1}.resConfUnit1."),
            (r"^fusions\.(\d)\.refine\.", lambda m: f"scratch.refinenet{int(m.group(1)) + 1}.resConfUnit2."),
            (r"^output_conv1\.0\.", "scratch.output_conv1."), (r"^output_conv1\.1\.", "scratch.norm."),
            (r"^head\.conv\.0\.", "scratch.output_conv2.0."), (r"^head\.conv\.1\.", "scratch.output_conv2.1."),
            (r"^head\.classifier\.", "scratch.output_conv2.3.")],
}
# Entries of the released models that nothing computes with: inserted where the released state dict has them.
UNUSED = {"upernet": ("backbone.stages.3.2.", ["backbone.norm.weight", "backbone.norm.bias", "backbone.head.weight",
                                               "backbone.head.bias"]),
          "dpt": ("scratch.refinenet3.", ["scratch.refinenet4.resConfUnit1.conv1.weight",
                                          "scratch.refinenet4.resConfUnit1.conv1.bias"])}


def _released_name(model_type: str, key: str) -> str:
    for pattern, replacement in RENAMES[model_type]:
        key = re.sub(pattern, replacement, key)
    return key


def _released_checkpoint(model_type: str, method: str, task: str) -> tuple[dict, dict]:
    """(authors' Lightning checkpoint, our state dict it must convert to)."""
    kwargs = {"num_classes": 4} if task == "segmentation" else {"max_depth": 10.0}
    torch.manual_seed(0)
    ours = {k: (torch.randn(v.shape) if v.is_floating_point() else v) for k, v in
            build_model(task, model_type, method, **kwargs).state_dict().items()}
    after, unused = UNUSED[model_type]
    released: dict[str, torch.Tensor] = {"criterion.weight": torch.ones(4)}
    last = max(i for i, k in enumerate(ours) if k.startswith(after) or _released_name(model_type, k).startswith(after))
    for i, (key, value) in enumerate(ours.items()):
        name = _released_name(model_type, key)
        # The released per-channel biases of the PReLU shifts are (1, C, 1, 1).
        released[f"module.{name}"] = value.reshape(1, -1, 1, 1) if name.endswith("act.0.bias") else value
        if i == last:
            released.update({f"module.{k}": torch.randn(3) for k in unused})
    hyper = {"model_type": model_type, "binary_type": method, "dataset": "x", **kwargs}
    return {"state_dict": released, "hyper_parameters": hyper, "epoch": 7}, ours


@pytest.mark.parametrize(("model_type", "method", "task"),
                         [("upernet", "bidense", "segmentation"), ("dpt", "fp32_0", "depth")])
def test_released_checkpoint_round_trip(tmp_path: Path, model_type: str, method: str, task: str,
                                        capsys: pytest.CaptureFixture) -> None:
    ckpt, ours = _released_checkpoint(model_type, method, task)
    torch.save(ckpt, tmp_path / "released.ckpt")
    main([str(tmp_path / "released.ckpt"), str(tmp_path / "out.ckpt")])
    assert "wrote" in capsys.readouterr().out
    out = torch.load(tmp_path / "out.ckpt", weights_only=False)
    assert out["epoch"] == 7
    hyper = out["hyper_parameters"]
    assert (hyper["model_type"], hyper["binary_type"]) == (model_type, method)
    assert hyper.get("num_classes", hyper.get("max_depth")) in (4, 10.0)
    assert list(out["state_dict"]) == [f"model.{k}" for k in ours]
    for key, value in ours.items():
        assert torch.equal(out["state_dict"][f"model.{key}"], value), key
    model = build_model(task, model_type, method, **({"num_classes": 4} if task == "segmentation"
                                                     else {"max_depth": 10.0}))
    model.load_state_dict({k[len("model."):]: v for k, v in out["state_dict"].items()}, strict=True)


def test_method_is_inferred_without_hyper_parameters(tmp_path: Path) -> None:
    ckpt, ours = _released_checkpoint("dpt", "fp32_0", "depth")
    torch.save(ckpt["state_dict"], tmp_path / "bare.pt")  # a bare state dict: task and method not stored
    main([str(tmp_path / "bare.pt"), str(tmp_path / "out.ckpt"), "--task", "depth", "--max-depth", "80"])
    out = torch.load(tmp_path / "out.ckpt", weights_only=False)
    assert out["hyper_parameters"]["binary_type"] == "fp32_0" and out["hyper_parameters"]["max_depth"] == 80.0


def _fails(tmp_path: Path, ckpt: dict, capsys: pytest.CaptureFixture) -> str:
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "bad.ckpt"), str(tmp_path / "out.ckpt")])
    assert info.value.code == 1 and not (tmp_path / "out.ckpt").exists()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "bad.ckpt") in err
    return err


def test_a_wrong_shape_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, _ = _released_checkpoint("dpt", "fp32_0", "depth")
    ckpt["state_dict"]["module.scratch.layer2_rn.weight"] = torch.zeros(256, 96, 1, 1)
    assert "'scratch.layer2_rn.weight'" in _fails(tmp_path, ckpt, capsys)


def test_a_foreign_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, _ = _released_checkpoint("dpt", "fp32_0", "depth")
    state = ckpt["state_dict"]
    items = list(state.items())
    at = next(i for i, (k, _) in enumerate(items) if k.startswith("module.scratch.layer1_rn"))
    items.insert(at, ("module.scratch.extra.weight", torch.zeros(5)))
    ckpt["state_dict"] = dict(items)
    assert "'scratch.extra.weight'" in _fails(tmp_path, ckpt, capsys)


def test_a_checkpoint_of_another_model_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, _ = _released_checkpoint("dpt", "fp32_0", "depth")
    ckpt["hyper_parameters"]["binary_type"] = "bidense"
    assert "bidense" in _fails(tmp_path, ckpt, capsys)
