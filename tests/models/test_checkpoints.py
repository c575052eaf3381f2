"""ConvNeXt-T ImageNet checkpoints load into the fp32 (standard) backbone: the official release layout
(`convnext_tiny_1k_224_ema.pth`, tensors under "model") and timm's layout; bad files fail in one line."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import models
from binary import get_method
from models.backbones.convnext import ConvNeXt, load_convnext_checkpoint

DIMS, DEPTHS = (96, 192, 384, 768), (3, 3, 9, 3)


def official_convnext_tiny_shapes() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official ConvNeXt-T release, written out from its definition."""
    shapes = {
        "downsample_layers.0.0.weight": (96, 3, 4, 4),
        "downsample_layers.0.0.bias": (96,),
        "downsample_layers.0.1.weight": (96,),
        "downsample_layers.0.1.bias": (96,),
    }
    for i in range(1, 4):
        d_in, d_out = DIMS[i - 1], DIMS[i]
        shapes |= {
            f"downsample_layers.{i}.0.weight": (d_in,),
            f"downsample_layers.{i}.0.bias": (d_in,),
            f"downsample_layers.{i}.1.weight": (d_out, d_in, 2, 2),
            f"downsample_layers.{i}.1.bias": (d_out,),
        }
    for i, (d, depth) in enumerate(zip(DIMS, DEPTHS, strict=True)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            shapes |= {
                p + "gamma": (d,),
                p + "dwconv.weight": (d, 1, 7, 7),
                p + "dwconv.bias": (d,),
                p + "norm.weight": (d,),
                p + "norm.bias": (d,),
                p + "pwconv1.weight": (4 * d, d),
                p + "pwconv1.bias": (4 * d,),
                p + "pwconv2.weight": (d, 4 * d),
                p + "pwconv2.bias": (d,),
            }
    shapes |= {"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)}
    return shapes


@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = {k: torch.randn(s) for k, s in official_convnext_tiny_shapes().items()}
    path = tmp_path_factory.mktemp("ckpt") / "convnext_tiny_1k_224_ema.pth"
    torch.save({"model": state}, path)
    return str(path), state


def test_official_layout_loads_every_tensor(official_file) -> None:
    path, state = official_file
    model = models.build_model("segmentation", "upernet", "fp32", num_classes=3, pretrained=path)
    loaded = model.backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith(("norm.", "head."))}
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_timm_layout_loads_and_computes_the_same_features(tmp_path) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("convnext_tiny", pretrained=False).eval()
    path = tmp_path / "timm_convnext_tiny.pth"
    torch.save(reference.state_dict(), path)
    backbone = ConvNeXt(get_method("fp32")).eval()
    load_convnext_checkpoint(backbone, path)
    assert torch.equal(backbone.stages[2][5].pwconv1.weight, reference.stages[2].blocks[5].mlp.fc1.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], reference.forward_features(x), rtol=1e-4, atol=1e-4)


def test_missing_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        models.build_model("segmentation", "upernet", "fp32", num_classes=3, pretrained=str(path))


def test_missing_and_mismatched_keys_name_the_first_bad_key(official_file, tmp_path) -> None:
    _, state = official_file
    backbone = ConvNeXt(get_method("fp32"))
    missing = dict(state)
    del missing["stages.1.2.pwconv2.weight"], missing["stages.3.0.gamma"]
    path = tmp_path / "missing.pth"
    torch.save({"model": missing}, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*lacks 'stages\.1\.2\.pwconv2\.weight'[^\n]*$"):
        load_convnext_checkpoint(backbone, path)
    wrong = dict(state)
    wrong["downsample_layers.2.1.weight"] = torch.zeros(384, 192, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save({"model": wrong}, path)
    with pytest.raises(ValueError, match=r"'downsample_layers\.2\.1\.weight' has shape \(384, 192, 3, 3\), expected "
                                         r"\(384, 192, 2, 2\)"):
        load_convnext_checkpoint(backbone, path)
