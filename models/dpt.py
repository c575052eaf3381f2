"""DPT (Ranftl et al., "Vision Transformers for Dense Prediction", arXiv 2103.13413) on DINOv2 ViT-S/14, defined
once; a binarization `Method` supplies every layer it changes (the CFB and BiDense units of the paper's method section).

Data flow, for an input of size H x W:

    x  <- resize(x, (H // 28 * 2) * 14, (W // 28 * 2) * 14)          (bilinear, no antialias; grid g = even)
    f_i = LN(block_{8+i}(...)) reshaped to (B, 384, g_h, g_w), i = 1..4   (the LAST four blocks, as released)
    l_i = resize_i( project_i(f_i) ),  project_i: 1x1 384 -> [48, 96, 192, 384][i]
          resize_1 = up x4, resize_2 = up x2, resize_3 = identity, resize_4 = down /2 (3x3, stride 2)
    r_i = layer_rn_i(l_i)                                      3x3 conv to 256 features
    p_4 = fuse_4(r_4),  p_i = fuse_i(p_{i+1}, r_i)             fuse(p, r) = up2( RCU_b( p + RCU_a(r) ) )
    y   = head( up_to(H, W)( output_conv1(p_1) ) )            output_conv1: 3x3 256 -> 128

``up2`` and ``up_to`` are bilinear with ``align_corners=True``.  The input resize has no antialiasing: the released
code resizes with torchvision's ``resize``, whose tensor default in its environment (torch 2.1.2, torchvision 0.16)
is ``antialias=False`` (README, "Deviations from the released code").  The residual conv unit (RCU) is

* ``method.bypass`` (BiDense, CFB):  ``conv_b(act(conv_a(act(x))))`` with act = ``method.act(256, "rcu")`` and
  conv units that carry the full-precision bypass, so no explicit ``+ x`` (as released);
* other binary methods (the ViT baselines' ReActNet decoder, as released): ``y = shift_a(x)``,
  ``y = y + conv_a(act(y))``, ``y = shift_b(y)``, ``y + conv_b(act(y))`` (a shortcut around each binary conv unit
  that carries the shifted input; ``shift = method.rcu_shift``, a LearnableBias, ``act`` ReLU);
* the float methods (`fp32`, `fp32_0`): ``r + conv_b(ReLU(conv_a(r)))`` with ``r = ReLU(x)``, biased convs and
  BatchNorm after each conv for segmentation only.  The released float RCU applies an in-place ReLU to its input
  before adding it, so the shortcut carries ``ReLU(x)``, not ``x``; that is what the released models computed.

With a binary method the projections, resamplings, ``layer_rn``, RCUs and ``output_conv1`` are the method's conv
units (``up``/``down`` carry the resampling bypass for BiDense, the paper's CFB).  The float methods use the plain
convolutions of the released float DPT: biased projections, resamplings and ``output_conv1``, bias-free
``layer_rn``, no BatchNorm outside the RCUs, except that `fp32_0` (the float model trained from scratch) adds one
BatchNorm after ``output_conv1`` (and its depth head one after its 3x3 conv, `models.heads`): 18 BatchNorm layers
for segmentation in the released module tree (two of them in the deepest fusion block's never-called skip unit,
which is not built here, so 16), 2 for depth.  `fp32` loads the DINOv2 backbone (`models.pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from binary import Method
from models.backbones.vit import dinov2_vits14
from models.heads import build_head
from models.pretrained import resolve_pretrained


def _plain_conv(in_channels: int, out_channels: int, bias: bool, norm: bool) -> nn.Module:
    """The standard DPT's 3x3 convolution, optionally followed by BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if norm else conv


class ResidualConvUnit(nn.Module):
    """DPT residual conv unit on ``features`` channels at constant resolution (forms in the module docstring).

    Args:
        method: the binarization method.
        features: channel count.
        norm: float methods only: BatchNorm after each conv (segmentation).
    """

    def __init__(self, method: Method, features: int, norm: bool = False) -> None:
        super().__init__()
        if method.binary:
            self.act1, self.act2 = method.act(features, "rcu"), method.act(features, "rcu")
            self.conv1 = method.conv(features, features, 3, padding=1, bias=True, role="rcu")
            self.conv2 = method.conv(features, features, 3, padding=1, bias=True, role="rcu")
            if not method.bypass:  # after the convs, as released (the state dict keeps the released order)
                self.shift1, self.shift2 = method.rcu_shift(features), method.rcu_shift(features)
            self.shortcut = "none" if method.bypass else "each"
        else:
            self.act1, self.act2 = nn.ReLU(), nn.ReLU()
            self.conv1 = _plain_conv(features, features, bias=True, norm=norm)
            self.conv2 = _plain_conv(features, features, bias=True, norm=norm)
            self.shortcut = "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut == "each":
            x = self.shift1(x)
            x = x + self.conv1(self.act1(x))
            x = self.shift2(x)
            return x + self.conv2(self.act2(x))
        if self.shortcut == "relu":
            x = self.act1(x)
            return x + self.conv2(self.act2(self.conv1(x)))
        return self.conv2(self.act2(self.conv1(self.act1(x))))


class FusionBlock(nn.Module):
    """DPT feature fusion: ``up2(refine(x + skip(r)))``, or ``up2(refine(x))`` for the deepest block.

    The deepest block has no ``skip`` unit (the released code builds one and never calls it).
    """

    def __init__(self, method: Method, features: int, has_skip: bool, norm: bool = False) -> None:
        super().__init__()
        self.skip = ResidualConvUnit(method, features, norm) if has_skip else None
        self.refine = ResidualConvUnit(method, features, norm)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if (residual is None) != (self.skip is None):
            raise ValueError("a fusion block with a skip unit needs a residual input, and one without takes none")
        if self.skip is not None:
            x = x + self.skip(residual)
        x = self.refine(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPT(nn.Module):
    """DPT decoder on a DINOv2 ViT-S/14 backbone, ending in ``head``.

    Args:
        method: the binarization method (``binary.get_method(name)``).
        head: maps (B, features // 2, H, W) to the prediction at input resolution.
        classifier_name: qualified name, inside ``head``, of its final full-precision 1x1 conv.
        features: fusion width (256).
        out_channels: projection widths of the four taken blocks ([48, 96, 192, 384]).
        rcu_norm: float methods only: BatchNorm in the residual conv units (True for segmentation).
        pretrained: DINOv2 weights for the backbone (`models.pretrained.resolve_pretrained`): None for none, True
            for the official checkpoint (`fp32` only), or a local path.

    Attributes:
        classifier_name: ``"head." + classifier_name``, the final 1x1 prediction conv of the whole model.
    """

    def __init__(
        self,
        method: Method,
        head: nn.Module,
        classifier_name: str,
        features: int = 256,
        out_channels: Sequence[int] = (48, 96, 192, 384),
        rcu_norm: bool = False,
        pretrained: str | Path | bool | None = None,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"DPT takes four backbone blocks, got out_channels={list(out_channels)}")
        self.backbone = dinov2_vits14(method, pretrained=pretrained)
        dim = self.backbone.embed_dim
        c1, c2, c3, c4 = out_channels
        if method.binary:
            # The released binary conv units of the projections and output_conv1 have no bias.
            projects = [method.conv(dim, c, 1, role="project") for c in out_channels]
            resize = [method.up(c1, c1, 4), method.up(c2, c2, 2), nn.Identity(), method.down(c4, c4, 3, 2, 1)]
            layer_rn = [method.conv(c, features, 3, padding=1, role="rn") for c in out_channels]
            output_conv1 = method.conv(features, features // 2, 3, padding=1, role="out")
        else:
            projects = [nn.Conv2d(dim, c, 1) for c in out_channels]
            resize = [nn.ConvTranspose2d(c1, c1, 4, stride=4), nn.ConvTranspose2d(c2, c2, 2, stride=2),
                      nn.Identity(), nn.Conv2d(c4, c4, 3, stride=2, padding=1)]
            layer_rn = [nn.Conv2d(c, features, 3, padding=1, bias=False) for c in out_channels]
            output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            if not method.standard:
                output_conv1 = nn.Sequential(output_conv1, nn.BatchNorm2d(features // 2))
        # Registered in the released order (projections, resamplings, layer_rn, fusions, output_conv1, head), so
        # the state dict lists the tensors in the released order (`models.convert` relies on it).
        self.projects = nn.ModuleList(projects)
        self.resize_layers = nn.ModuleList(resize)
        self.layer_rn = nn.ModuleList(layer_rn)
        self.fusions = nn.ModuleList(
            [FusionBlock(method, features, has_skip=i < 3, norm=rcu_norm) for i in range(4)]
        )
        self.output_conv1 = output_conv1
        self.head = head
        self.classifier_name = f"head.{classifier_name}"

    @staticmethod
    def backbone_size(height: int, width: int) -> tuple[int, int]:
        """The size the input is resized to: ``(height // 28 * 2) * 14`` by ``(width // 28 * 2) * 14``."""
        if height < 28 or width < 28:
            raise ValueError(f"DPT input must be at least 28x28, got {height}x{width}")
        return height // 28 * 28, width // 28 * 28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = self.backbone_size(h, w)
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        grids = self.backbone.get_intermediate_layers(x, 4, reshape=True)
        layers = [
            rn(resize(project(grid)))
            for grid, project, resize, rn in zip(grids, self.projects, self.resize_layers, self.layer_rn, strict=True)
        ]
        path = self.fusions[3](layers[3])
        for i in (2, 1, 0):
            path = self.fusions[i](path, layers[i])
        out = F.interpolate(self.output_conv1(path), size=(h, w), mode="bilinear", align_corners=True)
        return self.head(out)


# The binarization methods (``binary_type``) DPT-ViT-S/14 is defined for.
SUPPORTED_BINARY_TYPES = ("fp32", "fp32_0", "bibert", "bit", "bivit", "cfb", "bidense")


def build_dpt(
    task: str,
    method: Method,
    num_classes: int | None = None,
    max_depth: float | None = None,
    pretrained: str | Path | bool | None = None,
    features: int = 256,
) -> DPT:
    """DPT-ViT-S/14 for ``task`` with ``method``'s layers and the head of `models.heads.build_head`.

    ``pretrained`` (`models.pretrained.resolve_pretrained`: None or "" for none, True for the official DINOv2
    checkpoint of the standard model, or a local ``dinov2_vits14_pretrain.pth``) is loaded into the backbone; a
    local file fits the float methods, and any binary method whose backbone has exactly the official keys.  The
    float DPTs put BatchNorm in their residual conv units for segmentation only, as the released code.
    """
    head = build_head(task, method, features // 2, num_classes=num_classes, max_depth=max_depth)
    return DPT(method, head, "classifier", features=features, rcu_norm=not method.binary and task == "segmentation",
               pretrained=resolve_pretrained(pretrained, method, "dinov2_vits14"))
