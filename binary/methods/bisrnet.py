"""BiSRNet (Cai et al., NeurIPS 2023, "Binarized Spectral Compressive Imaging", arXiv 2305.10299) as the authors'
baseline code builds it.

BiSR-Conv: a learnable per-channel redistribution x' = k_c x + b_c (init k = 1, b = 0) before the sign; the sign's
backward is the scalable tanh, d tanh(beta x')/dx' = beta (1 - tanh^2(beta x')), with a learnable scalar beta
(init 1) that gets d tanh(beta x')/d beta = x' (1 - tanh^2(beta x')); weights sign(W) * mean|W| per output channel
(detached), clipped STE, init N(0, 1e-3^2); no bias.  Activations as ReActNet: BN -> LearnableBias -> PReLU, the
full RPReLU after the FPN fusion.  Stage transitions use BiSRNet's binarized down-sampling module (`BiSRDown`).
"""

from __future__ import annotations

import torch
from torch import nn

from binary.functional import binarize_weight
from binary.layers import BinaryConv2d, RPReLU
from binary.methods.base import ReActConvMethod
from binary.methods.registry import register


class _ScalableTanhSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, beta)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, beta = ctx.saved_tensors
        sech2 = 1 - torch.tanh(beta * x).square()
        gx = grad * beta * sech2 if ctx.needs_input_grad[0] else None
        gbeta = (grad * x * sech2).sum().reshape(beta.shape) if ctx.needs_input_grad[1] else None
        return gx, gbeta


def scalable_tanh_sign(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """sign(x) in the forward pass; the gradients of tanh(beta x) w.r.t. x and the scalar beta in the backward."""
    return _ScalableTanhSign.apply(x, beta)


class BiSRSign(nn.Module):
    """BiSR-Conv input binarizer: sign(k_c x + b_c), scalable-tanh backward; k (init 1), b (init 0) per channel,
    beta (init 1) a scalar."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scalable_tanh_sign(x * self.k + self.b, self.beta)


def bisr_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
    """A bare BiSR-Conv (no BN, no bias): `BiSRSign` input, sign * mean|W| weights initialised N(0, 1e-3^2)."""
    conv = BinaryConv2d(in_channels, out_channels, kernel_size, stride, padding,
                        input_binarizer=BiSRSign(in_channels), weight_binarizer=binarize_weight)
    nn.init.normal_(conv.weight, std=1e-3)
    return conv


class BiSRDown(nn.Module):
    """BiSRNet's binarized down-sampling: C -> 2C channels at 1/``stride`` resolution.

    ``p = AvgPool(stride, stride)(x)``, then two parallel branches ``p + RPReLU_i(BiSRConv3x3_i(p))`` (C -> C, padding
    1, no BN), concatenated along channels.
    """

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride, stride)
        self.convs = nn.ModuleList([bisr_conv(channels, channels, 3, padding=1) for _ in range(2)])
        self.acts = nn.ModuleList([RPReLU(channels) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return torch.cat([x + act(conv(x)) for conv, act in zip(self.convs, self.acts, strict=True)], dim=1)


@register("bisrnet")
class BiSRNet(ReActConvMethod):
    """BiSRNet baseline: BiSR-Conv (redistribution + scalable-tanh sign), RPReLU-style activations, BiSR down."""

    def input_binarizer(self, channels: int) -> nn.Module:
        return BiSRSign(channels)

    def down(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
             role: str = "down") -> nn.Module:
        """The binarized down-sampling module; it needs ``out_channels == 2 * in_channels`` and defines its own
        3x3 convs (``kernel_size`` and ``padding`` of the float transition are not used)."""
        if out_channels != 2 * in_channels:
            raise ValueError(f"bisrnet down-sampling doubles the channels: got {in_channels} -> {out_channels}")
        return BiSRDown(in_channels, stride)
