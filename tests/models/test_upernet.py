"""UPerNet-ConvNeXt-T: every (task x method) builds, runs forward and backward, and keeps the released structure."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import models
from binary import get_method, list_methods
from binary.counting import BinaryLayer
from models.backbones.convnext import ConvNeXt
from models.upernet import FPNFuse

UPERNET_BINARY_TYPES = models.supported_methods("upernet")


@pytest.mark.parametrize("binary_type", UPERNET_BINARY_TYPES)
@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_forward_backward_shapes(task: str, binary_type: str) -> None:
    torch.manual_seed(0)
    model = models.build_model(task, "upernet", binary_type, num_classes=5, max_depth=10.0)
    model.train()
    # Batch 2: in training mode BatchNorm needs more than one value per channel after the 1x1 PSP pooling.
    # 32x32 is the smallest input (stage 4 at 1x1) and keeps the 16 cases fast.
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    if task == "segmentation":
        assert out.shape == (2, 5, 32, 32)
    else:
        assert out.shape == (2, 1, 32, 32)
        assert out.min() > 0 and out.max() < 10.0
    out.float().square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    stem = model.backbone.downsample_layers[0][0]
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    classifier = model.get_submodule(model.classifier_name)
    assert isinstance(classifier, nn.Conv2d) and not isinstance(classifier, BinaryLayer)
    assert classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("binary_type", ["fp32", "fp32_0", "bidense"])
def test_odd_input_size_eval(binary_type: str) -> None:
    model = models.build_model("segmentation", "upernet", binary_type, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 72))
    assert out.shape == (1, 3, 40, 72)


def test_backbone_feature_shapes() -> None:
    features = ConvNeXt(get_method("fp32_0"), depths=(1, 1, 1, 1)).eval()(torch.randn(1, 3, 32, 64))
    assert [tuple(f.shape) for f in features] == [(1, 96, 8, 16), (1, 192, 4, 8), (1, 384, 2, 4), (1, 768, 1, 2)]


def test_smooth_conv_is_shared_and_listed_three_times() -> None:
    model = models.build_model("segmentation", "upernet", "fp32_0", num_classes=3)
    smooth = model.fpn.smooth
    assert smooth[0] is smooth[1] is smooth[2]
    keys = [k for k in model.state_dict() if k.startswith("fpn.smooth.") and k.endswith("0.weight")]
    assert sorted(keys) == ["fpn.smooth.0.0.weight", "fpn.smooth.1.0.weight", "fpn.smooth.2.0.weight"]


def test_fpn_pairs_adjacent_levels_and_residual_smooth() -> None:
    """fp32_0 FPN against an independent computation: P_i = s(m_i) + m_i, m_i = up(L_{i+1}) + L_i, as released."""
    torch.manual_seed(0)
    fpn = FPNFuse(get_method("fp32_0"), [4, 8, 16, 32], fpn_out=4).eval()
    feats = [torch.randn(1, c, s, s) for c, s in zip([4, 8, 16, 32], [16, 8, 4, 2], strict=True)]

    def up(x: torch.Tensor, size: int) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)

    lat = [feats[0]] + [conv(f) for conv, f in zip(fpn.laterals, feats[1:], strict=True)]
    smooth = fpn.smooth[0]
    p = [smooth(m) + m for m in (up(lat[1], 16) + lat[0], up(lat[2], 8) + lat[1], up(lat[3], 4) + lat[2])]
    expected = fpn.fusion(torch.cat([p[0], up(p[1], 16), up(p[2], 16), up(lat[3], 16)], dim=1))
    torch.testing.assert_close(fpn(feats), expected)


def test_fp32_is_the_official_convnext() -> None:
    model = models.build_model("segmentation", "upernet", "fp32", num_classes=3)
    block = model.backbone.stages[0][0]
    assert isinstance(block.norm, nn.LayerNorm) and isinstance(block.act, nn.GELU)
    torch.testing.assert_close(block.gamma.detach(), torch.full((96,), 1e-6))
    assert isinstance(model.fpn.laterals[0], nn.Conv2d) and model.fpn.laterals[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def test_fp32_0_block_against_reference() -> None:
    """fp32_0 block: y = x + BN(dw(x)); out = x + BN(pw2(GELU(BN(pw1(y))))), as released."""
    torch.manual_seed(0)
    model = models.build_model("segmentation", "upernet", "fp32_0", num_classes=3).eval()
    block = model.backbone.stages[0][0]
    x = torch.randn(1, 96, 8, 8)
    dw, pw1, pw2 = block.dwconv, block.pwconv1, block.pwconv2
    y = x + dw[1](dw[0](x))
    expected = x + pw2[1](pw2[0](nn.functional.gelu(pw1[1](pw1[0](y)))))
    torch.testing.assert_close(block(x), expected)


def test_bypass_block_has_no_explicit_residual_and_no_conv_bias() -> None:
    """bidense block: pw2(act(pw1(dw(x)))), the residual paths inside the units; convs without bias, as released."""
    torch.manual_seed(0)
    model = models.build_model("segmentation", "upernet", "bidense", num_classes=3).eval()
    block = model.backbone.stages[1][0]
    x = torch.randn(2, 192, 6, 6)
    expected = block.pwconv2(block.act(block.pwconv1(block.dwconv(x))))
    torch.testing.assert_close(block(x), expected)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and isinstance(m, BinaryLayer)]
    assert convs and all(m.bias is None for m in convs)
    assert not any(isinstance(m, (nn.LayerNorm, nn.GELU)) for m in model.modules())


_SLOTS = re.compile(
    r"backbone\.downsample_layers\.\d+|backbone\.stages\.\d+\.\d+\.(dwconv|pwconv1|act|pwconv2)"
    r"|psp\.stages\.\d+\.\d+|psp\.bottleneck\.\d+|fpn\.(laterals|smooth)\.\d+|fpn\.fusion\.\d+"
    r"|out_conv|head\.(conv|act|classifier)"
)
_CONV_SLOTS = re.compile(
    r"backbone\.downsample_layers\.[1-9]|.*(dwconv|pwconv1|pwconv2)|psp\.stages\.\d+\.1|psp\.bottleneck\.0"
    r"|fpn\.(laterals|smooth)\.\d+|fpn\.fusion\.0|out_conv|head\.conv"
)


def _slots(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules(remove_duplicate=False) if _SLOTS.fullmatch(name)}


def test_bidense_and_fp32_0_share_the_float_skeleton() -> None:
    """Same slots in the same order, same stem and classifier; every conv slot of bidense holds a binary layer
    and none of fp32_0 does: only the layers the method supplies differ."""
    if "bidense" not in UPERNET_BINARY_TYPES:
        pytest.fail("the bidense method is not registered")
    float_model = models.build_model("segmentation", "upernet", "fp32_0", num_classes=151)
    binary_model = models.build_model("segmentation", "upernet", "bidense", num_classes=151)
    float_slots, binary_slots = _slots(float_model), _slots(binary_model)
    assert list(float_slots) == list(binary_slots)
    assert len(float_slots) == 4 + 18 * 4 + 4 * 3 + 3 + 3 + 3 + 2 + 1 + 3
    for name in ("backbone.downsample_layers.0", float_model.classifier_name):
        a, b = float_model.get_submodule(name), binary_model.get_submodule(name)
        assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    conv_slots = [name for name in float_slots if _CONV_SLOTS.fullmatch(name)]
    assert len(conv_slots) == 3 + 18 * 3 + 4 + 1 + 3 + 3 + 1 + 1 + 1
    for name in conv_slots:
        assert any(isinstance(m, BinaryLayer) for m in binary_slots[name].modules()), name
        assert not any(isinstance(m, BinaryLayer) for m in float_slots[name].modules()), name
    for name in set(float_slots) - set(conv_slots):
        assert not any(isinstance(m, BinaryLayer) for m in binary_slots[name].modules()), name


def test_unknown_names_fail_with_the_valid_list() -> None:
    with pytest.raises(ValueError, match="available: .*upernet"):
        models.build_model("segmentation", "unet", "fp32_0", num_classes=3)
    with pytest.raises(ValueError, match="available: depth, segmentation"):
        models.build_model("detection", "upernet", "fp32_0")
    with pytest.raises(KeyError, match="fp32_0"):
        models.build_model("segmentation", "upernet", "xnor", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        models.build_model("segmentation", "upernet", "fp32_0")
    with pytest.raises(ValueError, match="max_depth"):
        models.build_model("depth", "upernet", "fp32_0")
    assert "upernet" in models.list_models()


def test_unsupported_method_fails_clearly() -> None:
    unsupported = [binary_type for binary_type in list_methods() if binary_type not in UPERNET_BINARY_TYPES]
    assert unsupported, "expected the ViT-only methods to be registered"
    for binary_type in unsupported:
        with pytest.raises(ValueError, match=f"not defined for method {binary_type!r}; available: .*fp32_0"):
            models.build_model("segmentation", "upernet", binary_type, num_classes=3)


def test_pretrained_only_for_the_standard_model(tmp_path) -> None:
    with pytest.raises(ValueError, match="only the standard float model"):
        models.build_model("segmentation", "upernet", "fp32_0", num_classes=3, pretrained=str(tmp_path / "x.pth"))


@pytest.mark.parametrize("binary_type", ["fp32_0", "bnn"])
def test_shared_smooth_conv_runs_coarse_to_fine_as_released(binary_type: str) -> None:
    """The released FPN smooths 1/16, then 1/8, then 1/4 with ONE shared unit: after a training step its BatchNorm
    running mean is the exponential average of the three levels' batch means in that order."""
    torch.manual_seed(0)
    model = models.build_model("segmentation", "upernet", binary_type, num_classes=3).train()
    norm = next(m for m in model.fpn.smooth[0].modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        norm.running_mean.uniform_(-1.0, 1.0)
    start = norm.running_mean.clone()
    batch_means: dict[int, torch.Tensor] = {}  # spatial height -> per-channel mean of the BN input
    hook = norm.register_forward_pre_hook(
        lambda m, inputs: batch_means.__setitem__(inputs[0].shape[-2], inputs[0].mean(dim=(0, 2, 3)).detach())
    )
    model(torch.randn(2, 3, 64, 64))
    hook.remove()
    assert sorted(batch_means) == [4, 8, 16]  # 1/16, 1/8, 1/4 of 64

    def ema(order: list[int]) -> torch.Tensor:
        mean = start.clone()
        for height in order:
            mean = (1 - norm.momentum) * mean + norm.momentum * batch_means[height]
        return mean

    torch.testing.assert_close(norm.running_mean, ema([4, 8, 16]))
    assert not torch.allclose(norm.running_mean, ema([16, 8, 4]))
