"""UPerNet (Xiao et al., ECCV 2018) on ConvNeXt-T, defined once for every binarization method (as released).

Decoder, with ``fpn_out = dims[0] = 96`` and ``features = 256``:

* PSP on the last stage (768 ch): for each bin b in (1, 2, 4, 6),
  ``up(act(conv1x1(AdaptiveAvgPool(b)(x))))`` to 192 channels, concatenated with x, then
  ``Dropout2d(0.1)(act(conv3x3(.)))`` back to 768 channels;
* FPN: laterals 1x1 to 96 channels on stages 2-4; for each pair of adjacent levels
  ``P_i = smooth(up(L_{i+1}) + L_i)`` (``+ P_i``'s input again for the residual variant), with ONE smooth conv
  shared by the three levels as released (``ModuleList([m] * 3)``, so the state dict lists it three times) and
  applied coarse to fine (1/16, 1/8, 1/4) as released, which fixes the order of its BatchNorm running-statistic
  updates;
  the levels and the PSP output are upsampled to 1/4 and fused by ``act(conv3x3(cat))`` to 96 channels;
* ``out_conv`` 3x3 to ``features // 2 = 128`` at 1/4 resolution, bilinear upsampling (align_corners=True) to the
  input size, then the head (`models.heads`) at full resolution.

Every upsampling is bilinear with align_corners=True.  Variants by method flag:

* ``method.bypass`` (``bidense``, ``cfb``): all convs are the method's units; activations ``method.act`` with
  roles "psp" and "fusion"; no explicit residuals.
* neither flag (``fp32_0``, CNN baselines): the same units, plus the residual ``x + smooth(x)``.
* ``method.standard`` (``fp32``): the authors' float UperNet: laterals, smooth and ``out_conv`` are plain
  biased convs, PSP / fusion conv units are conv + BN followed by ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from binary import Method
from models.backbones.convnext import ConvNeXt, load_convnext_checkpoint
from models.heads import build_head
from models.pretrained import resolve_pretrained


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _act(method: Method, channels: int, role: str) -> nn.Module:
    """The nonlinearity after a decoder unit: ReLU in the standard UperNet, else the method's."""
    return nn.ReLU() if method.standard else method.act(channels, role)


def _plain_conv(method: Method, in_channels: int, out_channels: int, kernel_size: int, role: str) -> nn.Module:
    """A conv with no activation after it (lateral, smooth, out): a plain biased conv in the standard UperNet, else
    a method unit, biased except in the bypass variant (as released)."""
    padding = kernel_size // 2
    if method.standard:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
    return method.conv(in_channels, out_channels, kernel_size, padding=padding, bias=not method.bypass, role=role)


class PSPModule(nn.Module):
    """Pyramid pooling: ``bottleneck(cat[x, up(stage_b(x)) for b in bins])``."""

    def __init__(self, method: Method, in_channels: int, bins: Sequence[int] = (1, 2, 4, 6)) -> None:
        super().__init__()
        branch = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                method.conv(in_channels, branch, 1, role="psp"),
                _act(method, branch, "psp"),
            )
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            method.conv(in_channels + branch * len(bins), in_channels, 3, padding=1, role="bottleneck"),
            _act(method, in_channels, "psp"),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return self.bottleneck(torch.cat([x] + [_resize(stage(x), size) for stage in self.stages], dim=1))


class FPNFuse(nn.Module):
    """FPN of the released UperNet: laterals, one shared smooth conv, fusion of all levels at 1/4 resolution."""

    def __init__(self, method: Method, feature_channels: Sequence[int], fpn_out: int) -> None:
        super().__init__()
        if feature_channels[0] != fpn_out:
            raise ValueError(f"FPN: fpn_out ({fpn_out}) must equal the first stage's channels ({feature_channels[0]})")
        levels = len(feature_channels)
        self.laterals = nn.ModuleList(_plain_conv(method, c, fpn_out, 1, "lateral") for c in feature_channels[1:])
        self.smooth = nn.ModuleList([_plain_conv(method, fpn_out, fpn_out, 3, "smooth")] * (levels - 1))
        self.smooth_residual = not (method.bypass or method.standard)
        self.fusion = nn.Sequential(
            method.conv(levels * fpn_out, fpn_out, 3, padding=1, role="fusion"),
            _act(method, fpn_out, "fusion"),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        lat = [features[0]] + [conv(f) for conv, f in zip(self.laterals, features[1:], strict=True)]
        # Coarse to fine (1/16, 1/8, 1/4), as released: the smooth conv is shared, so the call order sets its
        # BatchNorm running statistics.
        merged = [_resize(lat[i], lat[i - 1].shape[-2:]) + lat[i - 1] for i in reversed(range(1, len(lat)))]
        smoothed = [
            x + smooth(x) if self.smooth_residual else smooth(x) for smooth, x in zip(self.smooth, merged, strict=True)
        ]
        levels = smoothed[::-1] + [lat[-1]]
        size = levels[0].shape[-2:]
        return self.fusion(torch.cat([levels[0]] + [_resize(x, size) for x in levels[1:]], dim=1))


class UperNet(nn.Module):
    """UPerNet-ConvNeXt-T: ``head(up(out_conv(fpn(psp-on-last(backbone(x))))))``.

    Args:
        method: the binarization method supplying the layers.
        head: the prediction head, taking ``features // 2`` channels at input resolution.
        features: decoder width; ``out_conv`` has ``features // 2`` channels.
        drop_path_rate: the backbone's stochastic depth.
    """

    classifier_name = "head.classifier"

    def __init__(self, method: Method, head: nn.Module, features: int = 256, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = ConvNeXt(method, drop_path_rate=drop_path_rate)
        dims = self.backbone.dims
        self.psp = PSPModule(method, dims[-1])
        self.fpn = FPNFuse(method, dims, fpn_out=dims[0])
        self.out_conv = _plain_conv(method, dims[0], features // 2, 3, "out")
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        features[-1] = self.psp(features[-1])
        y = self.out_conv(self.fpn(features))
        return self.head(_resize(y, x.shape[-2:]))


# The binarization methods (``binary_type``) UPerNet-ConvNeXt-T is defined for; the ViT baselines (bibert, bit,
# bivit) binarize transformer layers only and have no UperNet-ConvNeXt model in the released code.
SUPPORTED_BINARY_TYPES = ("fp32", "fp32_0", "bnn", "react", "adabin", "bisrnet", "cfb", "bidense")


def build_upernet(
    task: str,
    method: Method,
    num_classes: int | None = None,
    max_depth: float | None = None,
    pretrained: str | Path | bool | None = None,
    features: int = 256,
    drop_path_rate: float = 0.0,
) -> UperNet:
    """UPerNet-ConvNeXt-T for ``task`` with ``method``'s layers.

    ``pretrained`` (`models.pretrained.resolve_pretrained`): None or "" for none, True for the standard ImageNet
    ConvNeXt-T of the standard model (ignored by the models trained from scratch), or a local ConvNeXt-T checkpoint
    (official or timm layout), which only the standard model loads.
    """
    head = build_head(task, method, features // 2, num_classes=num_classes, max_depth=max_depth)
    model = UperNet(method, head, features=features, drop_path_rate=drop_path_rate)
    if pretrained not in (None, False, True, "") and not method.standard:
        raise ValueError(
            f"pretrained={str(pretrained)!r}: only the standard float model (fp32) loads ImageNet weights; "
            f"{method.binary_type!r} is trained from scratch"
        )
    path = resolve_pretrained(pretrained, method, "convnext_tiny")
    if path is not None:
        load_convnext_checkpoint(model.backbone, path)
    return model
