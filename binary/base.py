"""Markers shared by every binary layer of this package.

`BinaryLayer` tags a module whose ``weight`` is stored as 1 bit and whose multiply-accumulates run on
1-bit operands (XNOR/popcount).  `binary.summary` keys on it: such a module's ``weight`` counts as
``numel / 32`` parameters and its MACs as ``MACs / 64`` OPs (PAPER.md section 8.10).
"""

from __future__ import annotations

from math import prod

import torch
from torch import nn


class BinaryLayer:
    """Mixin for a conv / transposed conv / linear module whose weight and input are binary.

    The module must be an ``nn.Conv2d``, ``nn.ConvTranspose2d`` or ``nn.Linear`` subclass (so the
    summary can count its MACs from its shape) or define ``binary_macs(input, output) -> int``.
    """

    weight_bits: int = 1


def shape_macs(module: nn.Module, input: torch.Tensor, output: torch.Tensor) -> int:
    """MACs of one call of a conv / transposed conv / linear ``module`` from its input and output shapes (thop
    convention: bias adds nothing; batch included).

    Convolution ``out_numel * in_channels / groups * prod(kernel_size)``; transposed convolution
    ``in_numel * out_channels / groups * prod(kernel_size)`` (each input element meets every weight of its group);
    linear ``out_numel * in_features``.
    """
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return input.numel() * module.out_channels // module.groups * prod(module.kernel_size)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return output.numel() * module.in_channels // module.groups * prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    raise TypeError(f"shape_macs: {type(module).__name__} is not a conv, transposed conv or linear module")
