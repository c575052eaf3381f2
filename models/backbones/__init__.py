"""Backbones of the dense models: ConvNeXt-T (`models.backbones.convnext`) and DINOv2 ViT-S/14
(`models.backbones.vit`), each defined once for every binarization method."""

from models.backbones.convnext import ConvNeXt, load_convnext_checkpoint

__all__ = ["ConvNeXt", "load_convnext_checkpoint"]
