"""DPT-ViT-S/14: every (task x method) model trains on a tiny input; decoder shapes, resizing, residual forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from binary import get_method
from models import build_model, supported_methods
from models.backbones.vit import LayerScale, PatchEmbed
from models.dpt import DPT, ResidualConvUnit

BINARY_TYPES = supported_methods("dpt")
NUM_CLASSES, MAX_DEPTH = 5, 10.0


def _build(task: str, name: str, **kwargs: object) -> DPT:
    extra = {"num_classes": NUM_CLASSES} if task == "segmentation" else {"max_depth": MAX_DEPTH}
    return build_model(task, "dpt", name, **extra, **kwargs)


def test_the_released_dpt_methods_are_available() -> None:
    assert {"fp32", "fp32_0", "bivit"} <= set(BINARY_TYPES)
    assert "react" not in BINARY_TYPES  # a CNN baseline has no binary ViT


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize("binary_type", BINARY_TYPES)
def test_every_dpt_trains_on_a_tiny_input(task: str, binary_type: str) -> None:
    torch.manual_seed(0)
    model = _build(task, binary_type).train()
    x = torch.randn(1, 3, 56, 56)
    out = model(x)
    if task == "segmentation":
        assert out.shape == (1, NUM_CLASSES, 56, 56)
    else:
        assert out.shape == (1, 1, 56, 56)
        assert torch.all(out > 0) and torch.all(out < MAX_DEPTH)
    out.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{binary_type}: {param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{binary_type}: {param_name} has a non-finite gradient"
    classifier = model.get_submodule(model.classifier_name)
    assert isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1)
    assert classifier.out_channels == (NUM_CLASSES if task == "segmentation" else 1)


@pytest.fixture(scope="module")
def fp32_0_depth() -> DPT:
    return _build("depth", "fp32_0").eval()


def test_decoder_shapes_and_last_four_blocks(fp32_0_depth: DPT, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fp32_0_depth
    seen: dict[str, object] = {}
    taken = model.backbone.get_intermediate_layers

    def spy(x: torch.Tensor, n: object = 1, **kwargs: object) -> tuple:
        seen["input"], seen["n"] = tuple(x.shape), n
        return taken(x, n, **kwargs)

    monkeypatch.setattr(model.backbone, "get_intermediate_layers", spy)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, key=key: shapes.__setitem__(key, tuple(o.shape)))
        for key, module in model.named_modules()
        if key in {f"layer_rn.{i}" for i in range(4)} | {f"projects.{i}" for i in range(4)} | {"output_conv1"}
    ]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 60, 90))  # not multiples of 28: backbone sees 56 x 84 (grid 4 x 6)
    for hook in hooks:
        hook.remove()
    assert seen == {"input": (1, 3, 56, 84), "n": 4}
    assert out.shape == (1, 1, 60, 90)
    assert [shapes[f"projects.{i}"] for i in range(4)] == [(1, c, 4, 6) for c in (48, 96, 192, 384)]
    assert [shapes[f"layer_rn.{i}"] for i in range(4)] == [(1, 256, 16, 24), (1, 256, 8, 12), (1, 256, 4, 6),
                                                           (1, 256, 2, 3)]
    assert shapes["output_conv1"] == (1, 128, 32, 48)


def test_too_small_input_fails_clearly(fp32_0_depth: DPT) -> None:
    with pytest.raises(ValueError, match="at least 28x28, got 20x56"):
        fp32_0_depth(torch.randn(1, 3, 20, 56))


def _zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()


@pytest.mark.parametrize("binary_type", ["fp32", "fp32_0", *[m for m in BINARY_TYPES if get_method(m).binary]])
def test_residual_conv_unit_form(binary_type: str) -> None:
    """Zeroed conv units expose the residual structure: bypass methods have none outside their units, the other
    binary methods one around each unit, the float ones one around the pair, carrying ReLU(x) as released."""
    method = get_method(binary_type)
    torch.manual_seed(0)
    unit = ResidualConvUnit(method, 8).eval()
    x = torch.randn(2, 8, 5, 5)
    _zero_(unit.conv2)
    with torch.no_grad():
        first = unit.conv1(unit.act1(x))
        only_first = unit(x)
        _zero_(unit.conv1)
        both = unit(x)
        acts = unit.act2(unit.act1(x))
    if method.bypass:
        # a zeroed bypass unit passes its input through its full-precision bypass (C_in = C_out: identity)
        assert torch.allclose(both, acts, atol=1e-6)
    elif method.binary:
        assert torch.allclose(only_first, x + first, atol=1e-6) and not torch.allclose(only_first, x)
        assert torch.allclose(both, x)
    else:
        assert torch.allclose(only_first, x.relu()) and torch.allclose(both, x.relu())


def test_fp32_is_the_standard_dpt() -> None:
    seg, depth = _build("segmentation", "fp32"), _build("depth", "fp32")
    assert isinstance(seg.projects[0], nn.Conv2d) and seg.projects[0].bias is not None
    assert isinstance(seg.resize_layers[0], nn.ConvTranspose2d) and seg.resize_layers[0].stride == (4, 4)
    assert isinstance(seg.resize_layers[3], nn.Conv2d) and seg.resize_layers[3].stride == (2, 2)
    assert isinstance(seg.layer_rn[0], nn.Conv2d) and seg.layer_rn[0].bias is None
    assert isinstance(seg.output_conv1, nn.Conv2d)
    # BatchNorm in the residual conv units for segmentation only (released code)
    assert any(isinstance(m, nn.BatchNorm2d) for m in seg.fusions.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in depth.fusions.modules())
    assert seg.fusions[3].skip is None and seg.fusions[2].skip is not None


def test_non_binary_parts_are_the_same_for_every_method() -> None:
    """Methods change only the layers they supply: the FP patch embedding, LayerNorms, LayerScales, position
    embedding and classifier sit at the same places in every non-standard model, as released."""

    def fp_parts(model: DPT) -> dict[str, object]:
        parts: dict[str, object] = {
            name: type(module).__name__
            for name, module in model.named_modules()
            if isinstance(module, (nn.LayerNorm, LayerScale, PatchEmbed))
        }
        parts[model.classifier_name] = model.get_submodule(model.classifier_name)
        parts.update({name: tuple(p.shape) for name, p in model.backbone.named_parameters(recurse=False)})
        return parts

    reference = fp_parts(_build("segmentation", "fp32_0"))
    # patch embed, 12 x (2 LayerNorms + 2 LayerScales), final norm, classifier, cls token, position embedding
    assert len(reference) == 1 + 12 * 4 + 1 + 1 + 2
    for binary_type in BINARY_TYPES:
        if binary_type != "fp32_0" and not get_method(binary_type).standard:
            parts = fp_parts(_build("segmentation", binary_type))
            assert parts.keys() == reference.keys(), binary_type
            assert isinstance(parts["head.classifier"], nn.Conv2d) and type(parts["head.classifier"]) is nn.Conv2d
            assert all(parts[k] == reference[k] for k in reference if k != "head.classifier"), binary_type


def test_pretrained_backbone_is_loaded(tmp_path) -> None:
    source = _build("depth", "fp32")
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = _build("depth", "fp32", pretrained=str(path))
    fresh = _build("depth", "fp32", pretrained="")
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    assert not torch.equal(fresh.backbone.pos_embed, source.backbone.pos_embed)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _build("depth", "fp32", pretrained=str(tmp_path / "missing.pth"))
