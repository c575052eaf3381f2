"""The float methods: `fp32_0` (the float mirror of the binary architecture) and `fp32` (the official
ConvNeXt-T / DINOv2 ViT-S/14 with the standard UperNet / DPT, pretrained; the paper's starred rows)."""

from __future__ import annotations

from binary.methods import register
from binary.methods.base import Method


@register("fp32_0")
class Float0(Method):
    """Float mirror of the binary architecture, trained from scratch (PAPER.md 1.7, row "ConvNeXt")."""


@register("fp32")
class Float(Method):
    """Official float architectures, loadable from ImageNet / DINOv2 checkpoints (PAPER.md 1.7, "ConvNeXt*")."""

    standard = True
