"""The interface through which a binarization method supplies layers to the models.

`models/` defines each architecture once and asks a `Method` for every layer that a binarization method
changes.  This base class is the float mirror (`fp32_0`, PAPER.md section 1.7): plain convolutions
followed by BatchNorm, float linear layers and softmax attention.  A method overrides only what it
changes, and is registered with `binary.methods.register`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SoftmaxAttention(nn.Module):
    """Scaled dot-product attention on (B, heads, N, head_dim) tensors: softmax(q k^T / sqrt(d)) v."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v


class Method:
    """Layer factory of one binarization method; this base class is the float mirror `fp32_0`.

    Attributes:
        name: registry name.
        binary: True when the method's conv / linear layers are 1-bit.
        bypass: True when every conv unit carries its own full-precision bypass (the CFB, PAPER 1.3/1.4);
            the models then add no explicit residual connections and no norm outside the units.
        standard: True only for `fp32` (the paper's starred rows): the models use the official
            ConvNeXt-T / DINOv2 / UperNet / DPT definitions, loadable from pretrained checkpoints.
    """

    name: str = "fp32_0"
    binary: bool = False
    bypass: bool = False
    standard: bool = False

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        role: str = "conv",
    ) -> nn.Module:
        """A conv unit: convolution then BatchNorm (bypass methods add their bypass inside).

        ``role`` names the place in the model ("dw", "pw1", "pw2", "psp", "bottleneck", "lateral",
        "smooth", "fusion", "out", "head", "rcu", "project", ...) for methods that treat places differently.
        """
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_channels),
        )

    def down(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
             role: str = "down") -> nn.Module:
        """A strided conv unit that changes resolution by 1/stride (ConvNeXt transitions, DPT layer 4); its conv
        is biased, as the released float mirror's transitions (methods drop the bias through ``conv``)."""
        return self.conv(in_channels, out_channels, kernel_size, stride, padding, bias=True, role=role)

    def up(self, in_channels: int, out_channels: int, scale: int, role: str = "up") -> nn.Module:
        """A transposed-conv unit with kernel = stride = ``scale`` (DPT reassemble of layers 1 and 2)."""
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale),
            nn.BatchNorm2d(out_channels),
        )

    def act(self, channels: int, role: str = "block") -> nn.Module:
        """The nonlinearity after a conv unit at ``role``: "block" (ConvNeXt MLP), "psp", "fusion",
        "rcu" (DPT residual conv unit), "head". The float mirror: GELU in the blocks, ReLU elsewhere."""
        return nn.GELU() if role == "block" else nn.ReLU()

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str = "linear") -> nn.Module:
        """A linear layer on token tensors (B, N, C); ``role`` is "qkv", "proj", "fc1" or "fc2"."""
        return nn.Linear(in_features, out_features, bias=bias)

    def vit_act(self, features: int) -> nn.Module:
        """The nonlinearity between the two linear layers of a ViT MLP."""
        return nn.GELU()

    def attention(self, head_dim: int, num_heads: int) -> nn.Module:
        """The attention core: a module mapping q, k, v of shape (B, heads, N, head_dim) to the same shape."""
        return SoftmaxAttention(head_dim, num_heads)


def conv_out_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Spatial output size of a convolution (used by resampling bypasses to check shapes)."""
    return math.floor((size + 2 * padding - dilation * (kernel_size - 1) - 1) / stride + 1)
