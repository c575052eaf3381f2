"""DPT as the authors' released code computes it (README, "Deviations from the released code"): BatchNorm count
and placement of the float decoders and of the ViT baselines' ReActNet decoder, the ReLU'd shortcut of the float
residual conv unit and the shifted shortcut of the baselines' one, zero-initialised position embedding / cls token
of the binary backbones, and the input resize without antialiasing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binary import get_method
from binary.layers import BinaryConv2d, BinaryConvTranspose2d
from models import build_model, supported_methods
from models.dpt import DPT, ResidualConvUnit


def _build(task: str, method: str) -> DPT:
    kwargs = {"num_classes": 5} if task == "segmentation" else {"max_depth": 10.0}
    torch.manual_seed(0)
    return build_model(task, "dpt", method, **kwargs)


def _rcu_norms() -> set[str]:
    """BatchNorm of every residual conv unit that is called: fusions 0-2 have a skip and a refine unit, the
    deepest (3) only a refine unit; each unit has conv1 and conv2, each a Sequential(conv, BN)."""
    units = [f"fusions.{i}.skip" for i in range(3)] + [f"fusions.{i}.refine" for i in range(4)]
    return {f"{unit}.{conv}.1" for unit in units for conv in ("conv1", "conv2")}


# Released: fp32_0 = BN after output_conv1 (its `scratch.norm`) and after the head's 3x3 conv, plus BN in the
# RCUs for segmentation (use_bn); fp32 = the same without the output_conv1 BN and, for depth, the head BN.
EXPECTED_NORMS = {
    ("segmentation", "fp32_0"): {"output_conv1.1", "head.conv.1"} | _rcu_norms(),
    ("depth", "fp32_0"): {"output_conv1.1", "head.conv.1"},
    ("segmentation", "fp32"): {"head.conv.1"} | _rcu_norms(),
    ("depth", "fp32"): set(),
}


@pytest.mark.parametrize(("task", "method"), sorted(EXPECTED_NORMS))
def test_float_decoder_batchnorm_count_and_placement(task: str, method: str) -> None:
    model = _build(task, method)
    decoder = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert decoder == EXPECTED_NORMS[(task, method)]
    for name in decoder:  # each BN directly follows its conv inside one Sequential
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        assert isinstance(parent, nn.Sequential) and isinstance(parent[0], nn.Conv2d)
        assert parent[0].out_channels == parent[1].num_features
    # Every other decoder conv is a plain conv: biased projections / resamplings, bias-free layer_rn.
    assert all(isinstance(p, nn.Conv2d) and p.bias is not None for p in model.projects)
    assert all(isinstance(r, nn.Conv2d) and r.bias is None for r in model.layer_rn)
    assert isinstance(model.resize_layers[0], nn.ConvTranspose2d) and model.resize_layers[0].bias is not None


def test_fp32_0_state_dict_entries() -> None:
    # Released: 320 entries for segmentation, 241 for depth, of which the never-called skip unit of the deepest
    # fusion block holds 14 (two biased convs and two BN) and 4 (two biased convs) respectively.
    assert len(_build("segmentation", "fp32_0").state_dict()) == 320 - 14
    assert len(_build("depth", "fp32_0").state_dict()) == 241 - 4


@pytest.mark.parametrize("norm", [False, True])
def test_float_rcu_adds_the_relud_input(norm: bool) -> None:
    torch.manual_seed(0)
    from binary import get_method

    unit = ResidualConvUnit(get_method("fp32_0"), 4, norm=norm).eval()
    with torch.no_grad():
        for module in unit.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 5, 5)  # about half negative: ReLU(x) and x differ

    def conv_bn(seq: nn.Module, y: torch.Tensor) -> torch.Tensor:
        conv = seq[0] if norm else seq
        y = F.conv2d(y, conv.weight, conv.bias, padding=1)
        if norm:
            bn = seq[1]
            y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
        return y

    r = x.clamp_min(0)
    expected = r + conv_bn(unit.conv2, conv_bn(unit.conv1, r).clamp_min(0))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), expected)
        assert not torch.allclose(unit(x), expected - r + x)


@pytest.mark.parametrize("method", supported_methods("dpt"))
def test_position_embedding_and_cls_token_start_at_zero_for_binary_backbones(method: str) -> None:
    backbone = _build("depth", method).backbone
    if method in ("fp32", "fp32_0"):  # the DINOv2 initialisation: trunc-normal(0.02) / normal(1e-6)
        assert 0.015 < backbone.pos_embed.std().item() < 0.025
        assert 0 < backbone.cls_token.abs().max().item() < 1e-4
    else:  # the released binary backbones never initialise them
        assert torch.count_nonzero(backbone.pos_embed) == 0
        assert torch.count_nonzero(backbone.cls_token) == 0


def test_input_resize_has_no_antialiasing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build("depth", "fp32_0").eval()
    seen = {}
    taken = model.backbone.get_intermediate_layers

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        seen["x"] = x
        return taken(x, *args, **kwargs)

    monkeypatch.setattr(model.backbone, "get_intermediate_layers", spy)
    x = torch.rand(1, 3, 80, 110)  # backbone size 56 x 84: a strong downscale, where antialiasing matters
    with torch.no_grad():
        model(x)
    # Bilinear, half-pixel centres, no antialias: each output pixel interpolates the two nearest input pixels.
    h, w = 56, 84
    ys = ((torch.arange(h) + 0.5) * 80 / h - 0.5).clamp(0, 79)
    xs = ((torch.arange(w) + 0.5) * 110 / w - 0.5).clamp(0, 109)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp(max=79), (x0 + 1).clamp(max=109)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    img = x[0]
    expected = ((1 - wy) * (1 - wx) * img[:, y0][:, :, x0] + (1 - wy) * wx * img[:, y0][:, :, x1]
                + wy * (1 - wx) * img[:, y1][:, :, x0] + wy * wx * img[:, y1][:, :, x1])
    torch.testing.assert_close(seen["x"][0], expected, atol=1e-5, rtol=1e-5)
    antialiased = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    assert (antialiased - seen["x"]).abs().max() > 1e-2


VIT_BASELINES = ("bibert", "bit", "bivit")


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize("method", VIT_BASELINES)
def test_vit_baseline_decoder_as_the_authors(task: str, method: str) -> None:
    """The authors' ViT-baseline DPT decoder: BatchNorm only in the residual conv units (and in the segmentation
    head); bare bias-free binary projections, layer_rn and stride-2 resampling; biased binary x4 / x2 transposed
    convs; output_conv1 a biased float conv; the depth head's 3x3 a biased float conv without BatchNorm."""
    model = _build(task, method)
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms == _rcu_norms() | ({"head.conv.1"} if task == "segmentation" else set())
    assert all(type(p) is BinaryConv2d and p.bias is None for p in model.projects)
    assert all(type(r) is BinaryConv2d and r.bias is None for r in model.layer_rn)
    for i in (0, 1):
        assert type(model.resize_layers[i]) is BinaryConvTranspose2d and model.resize_layers[i].bias is not None
    assert type(model.resize_layers[3]) is BinaryConv2d and model.resize_layers[3].bias is None
    assert type(model.output_conv1) is nn.Conv2d and model.output_conv1.bias is not None
    if task == "depth":
        assert type(model.head.conv) is nn.Conv2d and model.head.conv.bias is not None
    else:
        assert type(model.head.conv[0]) is nn.Conv2d and model.head.conv[0].bias is None


def test_bivit_state_dict_entries() -> None:
    # The authors' BiViT DPT: 377 entries for segmentation (with 151 classes or any other count), 373 for depth,
    # of which the never-called skip unit of the deepest fusion block holds 18 (two biased binary convs with their
    # shifts, two BN, two LearnableBias).
    assert len(_build("segmentation", "bivit").state_dict()) == 377 - 18
    assert len(_build("depth", "bivit").state_dict()) == 373 - 18


def test_vit_baseline_residual_unit_carries_the_shifted_input() -> None:
    """y = x + b1; y = y + BN(conv1(ReLU(y))); y = y + b2; out = y + BN(conv2(ReLU(y))), with non-zero shifts."""
    torch.manual_seed(0)
    unit = ResidualConvUnit(get_method("bivit"), 4).eval()
    with torch.no_grad():
        for p in unit.parameters():
            p.normal_()
    x = torch.randn(2, 4, 5, 5)
    b1, b2 = unit.shift1.bias.detach().view(1, 4, 1, 1), unit.shift2.bias.detach().view(1, 4, 1, 1)
    with torch.no_grad():
        y = x + b1
        y = y + unit.conv1(torch.relu(y))
        y = y + b2
        expected = y + unit.conv2(torch.relu(y))
        assert torch.allclose(unit(x), expected, atol=1e-6)
        assert not torch.allclose(unit(x), expected - b1, atol=1e-3)
