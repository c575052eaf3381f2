"""Prediction heads shared by the dense models, as released.

Both run at full resolution on the decoder's 128-channel output:

* segmentation: ``classifier(act(conv3x3(x)))``, ``conv3x3`` a 128->128 conv unit of the method (role "head"),
  ``act = method.act(128, "head")`` (ReLU), ``classifier`` a full-precision 1x1 conv to ``num_classes``;
* depth: ``max_depth * sigmoid(classifier(act(conv3x3(x))))``, ``conv3x3`` 128->32, ``classifier`` a
  full-precision 1x1 conv 32->1, so the depth lies in (0, max_depth).

With ``method.float_head`` (`fp32`, the ViT baselines, the `cfb` ablation) the depth head's 3x3 conv is the
authors' plain biased conv without a norm; otherwise it is a method unit, biased except in the bypass variant (as
released).
"""

from __future__ import annotations

import torch
from torch import nn

from binary import Method


class SegmentationHead(nn.Module):
    """``classifier(act(conv(x)))``: per-pixel logits of ``num_classes`` classes."""

    def __init__(self, method: Method, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = method.conv(in_channels, in_channels, 3, padding=1, bias=False, role="head")
        self.act = method.act(in_channels, "head")
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.conv(x)))


class DepthHead(nn.Module):
    """``max_depth * sigmoid(classifier(act(conv(x))))``: metric depth in (0, max_depth)."""

    def __init__(self, method: Method, in_channels: int, max_depth: float, hidden_channels: int = 32) -> None:
        super().__init__()
        if method.float_head:
            self.conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        else:
            self.conv = method.conv(in_channels, hidden_channels, 3, padding=1, bias=not method.bypass, role="head")
        self.act = method.act(hidden_channels, "head")
        self.classifier = nn.Conv2d(hidden_channels, 1, 1)
        self.max_depth = float(max_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.act(self.conv(x)))) * self.max_depth


def build_head(task: str, method: Method, in_channels: int, num_classes: int | None = None,
               max_depth: float | None = None) -> nn.Module:
    """The head of ``task`` ("segmentation" needs ``num_classes``, "depth" needs ``max_depth``)."""
    if task == "segmentation":
        if num_classes is None or num_classes < 1:
            raise ValueError(f"segmentation head needs num_classes >= 1, got {num_classes!r}")
        return SegmentationHead(method, in_channels, num_classes)
    if task == "depth":
        if max_depth is None or max_depth <= 0:
            raise ValueError(f"depth head needs max_depth > 0, got {max_depth!r}")
        return DepthHead(method, in_channels, max_depth)
    raise ValueError(f"unknown task {task!r}; available: depth, segmentation")
