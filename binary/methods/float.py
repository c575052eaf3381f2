"""The float methods: `fp32_0` (the float mirror of the binary architecture) and `fp32` (the official
ConvNeXt-T / DINOv2 ViT-S/14 with the standard UperNet / DPT, pretrained; the starred rows of arXiv 2411.10346,
Tables 1 and 3)."""

from __future__ import annotations

from binary.methods.base import Method
from binary.methods.registry import register


@register("fp32_0")
class Float0(Method):
    """Float mirror of the binary architecture, trained from scratch (Table 1, row "ConvNeXt")."""


@register("fp32")
class Float(Method):
    """Official float architectures, loadable from ImageNet / DINOv2 checkpoints (Table 1, row "ConvNeXt*")."""

    standard = True
    float_head = True
